"""Log priorities in a REAL journal: a systemd 252 container runs the agent's
log setup as a service, and `journalctl -p warning` must show the warning and
error lines only (journald reads the `<N>` prefix the formatter writes)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.sdbox import Bind, SystemdContainer

REPO = Path(__file__).resolve().parents[2]
UNIT = "logprio-test"
# Only stdlib modules load here: the container has python3 but none of our dependencies.
SCRIPT = (
    "import logging, sys; sys.path.insert(0, '/opt/compliance-agent');"
    "from reconciler.ops.logformat import setup_logging; setup_logging('DEBUG');"
    "log = logging.getLogger('compliance_agent.test');"
    "log.debug('dbg-line'); log.info('info-line');"
    "log.warning('warn-line', extra={'resource': 'firewall', 'reason': 'RulesetDrifted'});"
    "log.error('error-line')"
)


@pytest.fixture
def box(systemd_rootfs: Path, tmp_path: Path) -> Iterator[SystemdContainer]:
    with SystemdContainer(tmp_path / "sdbox", rootfs=systemd_rootfs,
                          binds=[Bind(REPO, "/opt/compliance-agent")]) as b:
        yield b


def _entries(box: SystemdContainer, *extra: str) -> list[dict[str, str]]:
    out = box.check(["journalctl", "-u", f"{UNIT}.service", "-o", "json", "--no-pager",
                     "_TRANSPORT=stdout", *extra])
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_journalctl_priority_filter_sees_the_agents_levels(box: SystemdContainer) -> None:
    box.check(["systemd-run", f"--unit={UNIT}", "--wait", "--quiet",
               "-p", "StandardError=journal", "python3", "-c", SCRIPT], timeout=60)
    deadline = time.monotonic() + 20
    entries: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        entries = _entries(box)
        if len(entries) >= 4:
            break
        time.sleep(0.1)
    by_msg = {e["MESSAGE"].split("msg=")[1]: e for e in entries}
    assert {k: v["PRIORITY"] for k, v in by_msg.items()} == {
        "dbg-line": "7", "info-line": "6", "warn-line": "4", "error-line": "3"}
    # journald stripped the prefix: the stored message is the plain logfmt line
    assert by_msg["warn-line"]["MESSAGE"] == (
        "level=WARNING resource=firewall reason=RulesetDrifted msg=warn-line")
    warnings = [e["MESSAGE"] for e in _entries(box, "-p", "warning")]
    assert warnings == [by_msg["warn-line"]["MESSAGE"], by_msg["error-line"]["MESSAGE"]]
