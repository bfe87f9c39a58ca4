"""Evidence that cannot be written makes the host Failed and silences the watchdog.

The recorder wraps a real writer whose evidence directory is gone (every
write fails with a real OSError); the daemon is given the recorder as a
health input at construction.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from reconciler.evidence.recorder import EvidenceCollector, EvidenceRecorder
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.runtime.reconcile import ReconcileResult
from reconciler.service import new_agent
from reconciler.store.database import open_store
from specs.status import Outcome
from tests.unit.conftest import make_config, write_baseline
from tests.unit.test_runtime import NoHost, RecordingActuator
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, SITE

T = datetime(2026, 11, 26, 2, 30, tzinfo=UTC)


def _result(kind: str = "backup") -> ReconcileResult:
    return ReconcileResult(kind=kind, generation="g", started=T, finished=T, dry_run=False,
                           outcome=Outcome.success, transitions=["Ready"])


def _metrics(recorder: EvidenceRecorder) -> dict[str, float]:
    return {s.name: s.value for m in EvidenceCollector(recorder).collect() for s in m.samples}


def test_consecutive_write_failures_make_the_recorder_unhealthy_until_a_success(
        tmp_path: Path) -> None:
    store = open_store(tmp_path / "state.db")
    writer = EvidenceWriter(store, AGENT_SIGNER, tmp_path / "ev", EvidenceIdentity(SITE, HOST))
    recorder = EvidenceRecorder(writer, 3600, lambda: None, failure_threshold=3)
    recorder(_result())
    assert recorder.unhealthy_reason() is None and recorder.last_success_at is not None
    shutil.rmtree(tmp_path / "ev")  # the directory is gone: file writes fail for real
    for _ in range(2):
        recorder(_result())
    assert recorder.unhealthy_reason() is None, "below the threshold"
    recorder(_result())
    reason = recorder.unhealthy_reason()
    assert reason is not None and reason.startswith("EvidenceUnwritable")
    assert "FileNotFoundError" in reason
    m = _metrics(recorder)
    assert m["compliance_agent_evidence_write_failures_total"] == 3
    assert m["compliance_agent_evidence_write_failures_consecutive"] == 3
    assert m["compliance_agent_evidence_chain_breaks"] == 0

    (tmp_path / "ev").mkdir()  # space / the directory returns
    writer.close()
    writer = EvidenceWriter(store, AGENT_SIGNER, tmp_path / "ev", EvidenceIdentity(SITE, HOST))
    recorder2 = EvidenceRecorder(writer, 3600, lambda: None)
    recorder2(_result())
    assert recorder2.unhealthy_reason() is None
    writer.close()
    store.close()


class Unwritable:
    def unhealthy_reason(self) -> str | None:
        return "EvidenceUnwritable: the last 3 evidence writes failed (OSError: disk full)"


def test_daemon_reports_failed_and_stops_the_watchdog_while_an_input_is_unhealthy(
        tmp_path: Path) -> None:
    write_baseline(tmp_path, {})
    agent = new_agent(make_config(tmp_path), host=NoHost(), actuator=RecordingActuator({}))
    notifier = Notifier(environ={})
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=1), notifier=notifier,
                    health_inputs=(Unwritable(),))
    healthy = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=1), notifier=notifier)
    try:
        assert healthy.loop_healthy() and "unhealthy" not in healthy.live_status()
        assert not daemon.loop_healthy()
        doc = daemon.live_status()
        assert doc["summary"] == "Failed"
        assert doc["unhealthy"] == [Unwritable().unhealthy_reason()]
    finally:
        agent.close()
