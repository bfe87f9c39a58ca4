"""Evidence fan-out through JetStream to the archiver, with crashes.

The control plane publishes every verified envelope to the EVIDENCE stream;
the archiver (a separate process) consumes with acks. The archiver is killed
with SIGKILL mid-stream and restarted, and the NATS server is killed and
restarted too: the archive ends up complete, without duplicates, chain intact.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from demo.control_plane.fanout import FanOut, client_tls
from reconciler.delivery.client import ControlPlaneClient
from specs.config import parse_config
from tests.support.agent import ChainedBundles
from tests.support.control_plane import REPO_ROOT, ControlPlaneThread
from tests.support.nats_stack import HOST, SITE, start_nats, wait_until
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration
TOTAL = 600


def archive_lines(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for p in sorted(root.glob("*/*.jsonl"))
            for line in p.read_text().splitlines() if line.strip()]


def test_archiver_and_server_killed_mid_stream_lose_and_duplicate_nothing(
    tmp_path: Path,
) -> None:
    tls = make_tls(tmp_path / "tls")
    nats = start_nats(tmp_path / "nats", tls)
    archive_dir = tmp_path / "archive"
    metrics = tmp_path / "archiver.prom"
    argv = [sys.executable, "-m", "demo.archiver", "run", "--nats-url", nats.url,
            "--ca", str(tls.ca_cert), "--cert", str(tls.client_cert), "--key",
            str(tls.client_key), "--dir", str(archive_dir), "--metrics", str(metrics)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    log = (tmp_path / "archiver.log").open("ab")
    agent_key = SigningKey.generate()
    bundles = ChainedBundles(agent_key, SITE, HOST)
    archiver = None
    try:
        with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(agent_key.verify_key).hex()]) as cp:
            fanout = FanOut(cp.storage, nats.url, client_tls(tls.ca_cert, tls.server_pem, None))
            fanout.start()
            cfg = parse_config({
                "siteId": SITE, "hostId": HOST, "deploymentMode": "direct",
                "baselinePath": str(tmp_path / "b.json"), "clientCertFile": str(tls.client_cert),
                "clientKeyFile": str(tls.client_key), "signingKeyFile": str(tmp_path / "k"),
                "caCertFile": str(tls.ca_cert), "mcpPublicKeys": ["ab" * 32],
                "mcpUrl": cp.url(), "allowedHosts": ["localhost"],
            })
            client = ControlPlaneClient(cfg)

            def deliver(n: int) -> None:
                items = [bundles.next() for _ in range(n)]
                for i in range(0, n, 50):
                    results = client.post_evidence_batch(items[i:i + 50])
                    assert all(r.ok for r in results), results

            archiver = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
            deliver(200)
            wait_until(lambda: len(archive_lines(archive_dir)) >= 50, 60, "archiving to begin")
            archiver.send_signal(signal.SIGKILL)  # mid-stream: some fetched, not all acked
            archiver.wait(10)
            deliver(200)
            nats.stop(kill=True)  # the server too: unpublished evidence waits in SQLite
            deliver(100)
            nats.start()
            archiver = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
            deliver(TOTAL - 500)
            wait_until(lambda: len(archive_lines(archive_dir)) >= TOTAL, 120,
                       f"all {TOTAL} envelopes archived")
            wait_until(lambda: metrics.exists()
                       and "demo_archiver_lag_messages 0.0" in metrics.read_text(), 30,
                       "the archiver's lag metric to reach 0")
            client.close()
            fanout.stop()
            stored = {e.bundle_id for e in cp.storage.evidence()}
    finally:
        if archiver is not None and archiver.poll() is None:
            archiver.terminate()
            archiver.wait(10)
        log.close()
        nats.stop()

    lines = archive_lines(archive_dir)
    ids = [str(rec["bundle_id"]) for rec in lines]
    assert len(ids) == TOTAL and len(set(ids)) == TOTAL  # complete, no duplicates
    assert set(ids) == stored
    assert [rec["sequence"] for rec in lines] == list(range(1, TOTAL + 1))
    for prev, rec in itertools.pairwise(lines):
        assert rec["prev_digest"] == prev["digest"]
    tally = json.loads(subprocess.run(
        [sys.executable, "-m", "demo.archiver", "tally", "--dir", str(archive_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, check=True, timeout=60).stdout)
    assert tally["archived"] == TOTAL and tally["chain_intact"] is True
