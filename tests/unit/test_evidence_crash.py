"""Crash safety: SIGKILL a real writer process at random points, then restart.

What the writer reported as recorded (record returned) must be in the chain
after the crash; the chain must verify; a restarted writer must continue it.
Real process, real SQLite file (WAL, synchronous=FULL), no root needed.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.evidence.chain import verify_store
from reconciler.evidence.checkpoint import origin_for
from reconciler.evidence.logverify import verify_local
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.store.evidence_index import list_bundles
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, SITE

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from pathlib import Path
from nacl.signing import SigningKey
from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.trust.dsse import Signer

tmp = Path(sys.argv[1])
store = open_store(tmp / "state.db")
w = EvidenceWriter(store, Signer(SigningKey(bytes.fromhex("22" * 32))), tmp / "ev",
                   EvidenceIdentity("clinic-1", "host-1"))
i = 0
while True:
    i += 1
    if i % 3:
        ids = [w.record(check="backup", outcome="success", post_state={"i": i})]
    else:
        ids = w.record_many([EvidenceRequest(check="fw", outcome="failed", post_state=j)
                             for j in range(5)])
    for bid in ids:
        print(bid, flush=True)
"""


def _run_and_kill(tmp: Path, kill_after: int) -> list[str]:
    """Start the writer, SIGKILL it after `kill_after` reported bundles."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    reported: list[str] = []
    buf = b""
    deadline = time.monotonic() + 60
    try:
        while len(reported) < kill_after:
            assert time.monotonic() < deadline, "writer made no progress"
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                assert proc.poll() is None, "writer died on its own"
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, "writer closed stdout"
            buf += chunk
            *lines, buf = buf.split(b"\n")
            reported.extend(line.decode() for line in lines)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    return reported


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_loses_nothing_reported_and_chain_continues(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    reported: list[str] = []
    for _ in range(2):  # kill twice: recovery after a crash must itself be crash-safe
        reported += _run_and_kill(tmp_path, rng.randint(3, 15))
    store = open_store(tmp_path / "state.db")
    w = EvidenceWriter(store, AGENT_SIGNER, tmp_path / "ev", EvidenceIdentity(SITE, HOST))
    stored = {r.bundle_id for r in list_bundles(store)}
    assert set(reported) <= stored, "a bundle reported as recorded was lost"
    seqs = sorted(r.sequence for r in list_bundles(store))
    assert seqs == list(range(1, len(seqs) + 1))
    keys = [AGENT_SIGNER.public_key_hex]
    report = verify_store(store, tmp_path / "ev", keys)
    assert report.ok, report.problems
    assert not report.notes, "orphans should have been removed at start"
    w.record(check="backup", outcome="success")
    assert verify_store(store, tmp_path / "ev", keys).ok
    # The Merkle frontier commits with the index rows: it survived the kills intact.
    full = verify_local(store, tmp_path / "ev", keys, origin_for(SITE, HOST))
    assert full.ok, full.problems
    w.close()
    store.close()
