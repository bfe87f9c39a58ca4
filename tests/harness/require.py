"""Preconditions of integration tests: root and external tools.

Locally a missing precondition skips the test with a reason. CI sets
``COMPLIANCE_AGENT_REQUIRE_INTEGRATION=1`` so that a runner lacking root or a
tool fails loudly instead of reporting a green run that tested nothing.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

REQUIRE_ENV = "COMPLIANCE_AGENT_REQUIRE_INTEGRATION"


def integration_required() -> bool:
    """True when skipping an integration test must count as a failure (CI)."""
    return os.environ.get(REQUIRE_ENV, "") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (when integration is required) with `reason`."""
    if integration_required():
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("needs root (run the integration tests as root, e.g. in CI or a VM)")


def require_tool(name: str) -> str:
    """Return the absolute path of `name` on PATH, or skip/fail if it is missing."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"needs the '{name}' tool on PATH (install the Debian package providing it)")
    return path
