"""Shared pytest setup: make the ``tests`` package (harness, fixtures) importable."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"

# pytest's rootdir-relative imports depend on how it is invoked; pin the repo
# root so `from tests.harness.require import ...` works from any cwd.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
