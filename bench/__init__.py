"""Benchmarks that print numbers (DESIGN.md section 8); not part of the tests."""
