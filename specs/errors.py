"""The one root of every exception compliance-agent raises on purpose.

Each subclass names what went wrong (`ConfigError`, `BaselineError`,
`HostError`, `TrustError`, `StoreError`, `ControlPlaneError`, ...) and its
message says where and what to do; `except ComplianceAgentError` catches all of
them and nothing else (a bug stays a bug).
"""

from __future__ import annotations


class ComplianceAgentError(Exception):
    """Root of compliance-agent's exceptions."""
