"""Typed desired state and status: pydantic models only, no I/O beyond parsing files."""
