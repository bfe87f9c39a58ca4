"""Guardrail 9 with the real daemon: `compliance-agent run` is SIGKILLed at
random moments at least 50 times while it reconciles, writes evidence and
delivers it over mutual TLS; it is restarted each time. At the end the
control plane must hold every bundle of the agent's evidence index exactly
once, in one unbroken sequence/prev_digest chain.

The baseline manages `encryption` (read-only, alert-only: safe on the test
machine) with a 1 s snapshot interval, so every pass makes a bundle.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from demo.control_plane.app import build_summary
from reconciler.store.database import StoreError, open_store
from reconciler.trust.keys import generate_key_file
from tests.support.control_plane import REPO_ROOT, ControlPlaneThread, wait_for
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("CRASH_TEST_KILLS", "50"))


def _index(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    try:
        store = open_store(db, readonly=True)
    except StoreError:
        return []  # created but not migrated yet: the daemon was killed early
    try:
        with store.begin() as conn:
            rows = conn.execute(text("SELECT sequence, bundle_id FROM evidence_bundles"
                                     " ORDER BY sequence")).all()
        return [(r[0], r[1]) for r in rows]
    except OperationalError:
        return []
    finally:
        store.close()


def _queued(db: Path) -> int:
    store = open_store(db, readonly=True)
    try:
        with store.begin() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM outbox WHERE state != 'delivered'"
                                         )).scalar_one())
    finally:
        store.close()


def test_sigkill_the_real_daemon_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    signer = generate_key_file(tmp_path / "signing.key")
    (tmp_path / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0", "encryption": {"devices": []}}))
    rng = random.Random(int(os.environ.get("CRASH_TEST_SEED", str(time.time_ns()))))
    with ControlPlaneThread(tls, tmp_path / "cp.db", [signer.public_key_hex]) as cp:
        config = tmp_path / "config.json"
        config.write_text(json.dumps({
            "siteId": "clinic-1", "hostId": "host-crash", "deploymentMode": "direct",
            "baselinePath": str(tmp_path / "baseline.json"),
            "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),
            "signingKeyFile": str(tmp_path / "signing.key"), "caCertFile": str(tls.ca_cert),
            "mcpPublicKeys": ["ab" * 32], "mcpUrl": cp.url(), "allowedHosts": ["localhost"],
            "stateDirectory": str(tmp_path / "state"), "statusSocket": None,
            "pollInterval": 1, "evidenceSnapshotInterval": 1,
        }))
        db = tmp_path / "state" / "state.db"
        argv = [sys.executable, "-m", "reconciler.cli", "run", "--config", str(config)]
        log = (tmp_path / "daemon.log").open("ab")
        kills = 0
        for i in range(KILLS):
            before = len(_index(db))
            proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log)
            try:
                if i % 10 == 4:
                    cp.set_outage(True)  # some kills land while nothing can be delivered
                # wait for this run to make at least one bundle, then kill at a random moment
                wait_for(lambda b=before, p=proc: p.poll() is not None or len(_index(db)) > b,
                         30, "a new bundle")
                assert proc.poll() is None, f"daemon exited on its own in run {i}: see daemon.log"
                time.sleep(rng.uniform(0.0, 1.2))  # the random kill point, not a wait
                proc.send_signal(signal.SIGKILL)
                kills += 1
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
                cp.set_outage(False)
        # a last run drains what the kills left queued, then stops cleanly
        before = len(_index(db))
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log)
        try:
            wait_for(lambda: len(_index(db)) > before, 30, "the last run to be up")
            wait_for(lambda: _queued(db) == 0, 120, "the outbox to drain")
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0
        log.close()

        index = _index(db)
        assert kills >= 50 or kills == KILLS
        assert [s for s, _ in index] == list(range(1, len(index) + 1)), "gapless local chain"
        received = {e.bundle_id: e for e in cp.storage.evidence()}
        assert set(received) == {b for _, b in index}, "every bundle delivered, nothing extra"
        assert len(cp.storage.evidence()) == len(index), "each bundle stored exactly once"
        summary = build_summary(cp.storage)
        assert summary["chain_intact"] is True and summary["gaps"] == 0
        print(f"\n{kills} SIGKILLs of the real daemon; {len(index)} bundles, "
              f"{summary['duplicates_suppressed']} re-deliveries deduplicated; chain intact")
