"""Test harness: real components (systemd containers, network namespaces) for integration tests."""
