"""Benchmarks that print numbers against the budgets each one states; not part of
the tests. Results are recorded in CHANGELOG.md when they move."""
