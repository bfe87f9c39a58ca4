"""Guardrail 9: SIGKILL the agent at random moments; nothing lost, nothing duplicated.

A real process (tests/support/crash_driver.py: EvidenceWriter + Outbox +
Deliverer over mTLS) is killed with SIGKILL at least 50 times at random points
of its record/deliver loop and restarted each time. After a final drain the
receiver (the demo control plane) must hold every bundle in the agent's
evidence index exactly once, with an unbroken sequence/prev_digest chain.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from demo.control_plane.app import build_summary
from reconciler.store.database import open_store
from tests.support.agent import load, write_agent_config
from tests.support.control_plane import REPO_ROOT, ControlPlaneThread, wait_for
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("CRASH_TEST_KILLS", "50"))


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    rng = random.Random(int(os.environ.get("CRASH_TEST_SEED", str(time.time_ns()))))
    cfg_path, key = write_agent_config(tmp_path / "agent", tls, "https://localhost:1", ["00" * 32])
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
        # Point the agent at the ephemeral port.
        import json

        raw = json.loads(cfg_path.read_text())
        raw["mcpUrl"] = cp.url()
        cfg_path.write_text(json.dumps(raw))
        cfg = load(cfg_path)
        ready = tmp_path / "ready"
        argv = [sys.executable, "-m", "tests.support.crash_driver", "--config", str(cfg_path),
                "--ready-file", str(ready)]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        log = (tmp_path / "driver.log").open("ab")
        for i in range(KILLS):
            ready.unlink(missing_ok=True)
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
            try:
                wait_for(lambda p=proc: ready.exists() or p.poll() is not None, 30,
                         "the driver to start")
                assert proc.poll() is None, f"driver died on its own (run {i}); see driver.log"
                if i % 10 == 3:
                    cp.set_outage(True)  # some kills land while the server refuses
                time.sleep(rng.uniform(0.0, 0.4))  # the random kill point, not a wait
                proc.send_signal(signal.SIGKILL)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
            cp.set_outage(False)
            assert proc.returncode == -signal.SIGKILL
        drain = subprocess.run([*argv[:-2], "--drain"], cwd=REPO_ROOT, env=env,
                               capture_output=True, timeout=300)
        assert drain.returncode == 0, drain.stdout + drain.stderr

        store = open_store(cfg.database_path, readonly=True)
        with store.begin() as conn:
            index = conn.execute(text(
                "SELECT bundle_id, sequence, digest, prev_digest FROM evidence_bundles"
                " ORDER BY sequence")).all()
            outbox: dict[str, int] = dict(conn.execute(text(
                "SELECT state, COUNT(*) FROM outbox GROUP BY state")).all())
        store.close()
        received = {e.bundle_id: e for e in cp.storage.evidence()}
        summary = build_summary(cp.storage)

    # Redeliveries the receiver deduplicated = kills between sending and recording.
    print(f"{KILLS} kills, {len(index)} bundles, "
          f"{summary['duplicates_suppressed']} redeliveries deduplicated")
    assert len(index) > KILLS, "the driver made too few bundles to mean anything"
    assert outbox == {"delivered": len(index)}, outbox
    # Every indexed bundle exactly once at the receiver, nothing else.
    assert set(received) == {r[0] for r in index}
    assert summary["bundles_stored"] == len(index)
    # Same chain on both sides: sequences 1..N, each prev_digest the previous digest.
    assert [r[1] for r in index] == list(range(1, len(index) + 1))
    for r in index:
        got = received[r[0]]
        assert (got.sequence, got.digest, got.prev_digest) == (r[1], r[2], r[3])
    (host,) = summary["hosts"].values()
    assert host["chain_intact"], host
    assert (host["first_sequence"], host["last_sequence"]) == (1, len(index))
    assert host["gaps"] == [] and host["breaks"] == [] and host["forks"] == []
