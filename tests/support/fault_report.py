"""Summary lines of the fault-injection suite, shown in the pytest terminal summary.

Tests call `report(request.config, line)`; tests/integration/conftest.py's
`pytest_terminal_summary` prints every line in a "fault campaign" section at
the end of the run. The terminal summary is written whatever the capture mode
or `-q`, and whether the test passed or failed, so the numbers always reach
the CI log (a plain `print` in a passing test is swallowed by capture).
"""

from __future__ import annotations

import pytest

_LINES = pytest.StashKey[list[str]]()


def report(config: pytest.Config, line: str) -> None:
    config.stash.setdefault(_LINES, []).append(line)


def write_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_LINES, [])
    if not lines:
        return
    terminalreporter.section("fault campaign")
    for line in lines:
        terminalreporter.write_line(line)
