"""Shared helpers for tests: TLS material, a real mTLS control plane, agent configs."""
