"""Losing the state database never deletes signed evidence nor reuses a sequence.

Real files, a real SQLite store (WAL), a real writer process killed with
SIGKILL: the database is deleted, its WAL deleted or scrambled, or an older
copy restored; the next writer rebuilds the index from the signed files, keeps
every file, and if the chain cannot be continued says so in a signed
chain-break bundle and continues after the highest sequence ever seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nacl.signing import SigningKey

from reconciler.evidence.checkpoint import Checkpointer, origin_for
from reconciler.evidence.logverify import verify_local
from reconciler.evidence.recovery import CHAIN_BREAK_CHECK, QUARANTINE_DIR
from reconciler.evidence.retention import RetentionPolicy, prune
from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.store.evidence_index import FILE_RE, list_bundles
from reconciler.trust.dsse import Signer
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, SITE

REPO = Path(__file__).resolve().parents[2]
KEYS = [AGENT_SIGNER.public_key_hex]
DB_FILES = ("state.db", "state.db-wal", "state.db-shm")


class SimulatedCrash(Exception):
    pass

CHILD = """
import sys, time
from pathlib import Path
from nacl.signing import SigningKey
from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.trust.dsse import Signer

tmp, n = Path(sys.argv[1]), int(sys.argv[2])
store = open_store(tmp / "state.db")
w = EvidenceWriter(store, Signer(SigningKey(bytes.fromhex("22" * 32))), tmp / "ev",
                   EvidenceIdentity("clinic-1", "host-1"))
for i in range(n):
    w.record(check="backup", outcome="success", post_state={"i": i})
print("done", flush=True)
time.sleep(600)
"""


def _writer(tmp: Path, signer: Signer = AGENT_SIGNER) -> EvidenceWriter:
    return EvidenceWriter(open_store(tmp / "state.db"), signer, tmp / "ev",
                          EvidenceIdentity(SITE, HOST))


def _close(w: EvidenceWriter) -> None:
    w.close()
    w.store.close()


def _files(tmp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tmp / "ev").iterdir() if FILE_RE.match(p.name)}


def _write_and_kill(tmp: Path, n: int) -> None:
    """A real writer process records `n` bundles, then dies by SIGKILL (WAL not checkpointed)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp), str(n)], cwd=REPO,
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 60
        line = proc.stdout.readline()
        assert line == b"done\n" and time.monotonic() < deadline
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()


def _seed(tmp: Path, n: int) -> dict[str, bytes]:
    w = _writer(tmp)
    for i in range(n):
        w.record(check="backup", outcome="success", post_state={"i": i})
    _close(w)
    return _files(tmp)


def _assert_recovered(tmp: Path, before: dict[str, bytes], *, broken: bool = False) -> None:
    """Every signed file kept byte for byte, the chain continues without reuse, verify is ok."""
    w = _writer(tmp)
    try:
        after = _files(tmp)
        for name, data in before.items():
            assert after.get(name) == data, f"signed evidence file {name} was lost or changed"
        highest = max(int(n[:12]) for n in before)
        bid = w.record(check="backup", outcome="success", post_state={"after": True})
        rows = {r.bundle_id: r for r in list_bundles(w.store)}
        assert rows[bid].sequence > highest, "a sequence number was reused"
        seqs = sorted(r.sequence for r in rows.values())
        assert seqs == list(range(1, len(seqs) + 1))
        assert w.recovery.broken is broken, w.recovery
        breaks = [r for r in rows.values() if r.check == CHAIN_BREAK_CHECK]
        assert len(breaks) == (1 if broken else 0)
        report = verify_local(w.store, tmp / "ev", KEYS, origin_for(SITE, HOST))
        # `evidence verify` says what the start did, not only that the chain is whole
        assert any("evidence index was reconciled with the files" in n
                   for n in report.notes), report.notes
        if broken:
            assert any("chain break" in n for n in report.notes), report.notes
        else:
            assert report.ok, report.problems
    finally:
        _close(w)


def _delete_db(tmp: Path) -> None:
    for name in DB_FILES:
        (tmp / name).unlink(missing_ok=True)


def test_db_deleted_while_stopped_rebuilds_index_from_signed_files(tmp_path: Path) -> None:
    before = _seed(tmp_path, 6)
    _delete_db(tmp_path)
    _assert_recovered(tmp_path, before)


def test_wal_deleted_after_sigkill(tmp_path: Path) -> None:
    _write_and_kill(tmp_path, 5)
    assert (tmp_path / "state.db-wal").stat().st_size > 0
    before = _files(tmp_path)
    (tmp_path / "state.db-wal").unlink()
    (tmp_path / "state.db-shm").unlink(missing_ok=True)
    _assert_recovered(tmp_path, before)


def test_wal_scrambled_after_sigkill(tmp_path: Path) -> None:
    _seed(tmp_path, 3)  # checkpointed into the main file at close
    _write_and_kill(tmp_path, 6)
    before = _files(tmp_path)
    wal = tmp_path / "state.db-wal"
    data = bytearray(wal.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = os.urandom(64)
    wal.write_bytes(bytes(data))
    _assert_recovered(tmp_path, before)


def test_older_copy_of_state_restored(tmp_path: Path) -> None:
    _seed(tmp_path, 3)
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in DB_FILES:
        if (tmp_path / name).exists():
            shutil.copy2(tmp_path / name, backup / name)
    before = _seed(tmp_path, 4)
    _delete_db(tmp_path)
    for p in backup.iterdir():
        shutil.copy2(p, tmp_path / p.name)
    _assert_recovered(tmp_path, before)


def test_pruned_chain_rebuilds_tombstones_from_prune_records(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for i in range(8):
        w.record(check="fw", outcome="failed", post_state={"i": i})
    result = prune(w, RetentionPolicy(keep_last=3, min_age_days=0),
                   datetime.now(UTC) + timedelta(days=1))
    assert result.pruned
    Checkpointer(w.store, AGENT_SIGNER, tmp_path / "ev", origin_for(SITE, HOST),
                 clock=lambda: datetime.now(UTC)).checkpoint()
    _close(w)
    before = _files(tmp_path)
    _delete_db(tmp_path)
    _assert_recovered(tmp_path, before)
    w = _writer(tmp_path)
    pruned = {r.sequence for r in list_bundles(w.store) if r.pruned}
    _close(w)
    assert pruned == set(result.pruned)


def test_unexplained_gap_breaks_the_chain_loudly_and_keeps_every_file(tmp_path: Path) -> None:
    before = _seed(tmp_path, 6)
    _delete_db(tmp_path)
    gone = sorted(before)[2]  # sequence 3: deleted by someone, no prune record
    (tmp_path / "ev" / gone).unlink()
    del before[gone]
    _assert_recovered(tmp_path, before, broken=True)


def test_checkpoint_larger_than_files_breaks_and_skips_its_sequences(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for i in range(5):
        w.record(check="backup", outcome="success", post_state={"i": i})
    Checkpointer(w.store, AGENT_SIGNER, tmp_path / "ev", origin_for(SITE, HOST),
                 clock=lambda: datetime.now(UTC)).checkpoint()
    _close(w)
    before = _files(tmp_path)
    _delete_db(tmp_path)
    tail = sorted(before)[-2:]  # sequences 4 and 5, covered by the checkpoint of size 5
    for name in tail:
        (tmp_path / "ev" / name).unlink()
        del before[name]
    w = _writer(tmp_path)
    bid = w.record(check="backup", outcome="success")
    seq = next(r.sequence for r in list_bundles(w.store) if r.bundle_id == bid)
    assert w.recovery.broken and "checkpoint" in (w.recovery.reason or "")
    _close(w)
    assert seq > 5, "a sequence the signed checkpoint already covers was reused"


def test_unknown_files_are_quarantined_not_deleted(tmp_path: Path) -> None:
    before = _seed(tmp_path, 2)
    _delete_db(tmp_path)
    forged = "000000000003-0b0b0b0b-0b0b-0b0b-0b0b-0b0b0b0b0b0b.json"
    (tmp_path / "ev" / forged).write_bytes(b'{"payload": "bm90IG91cnM=", "signatures": []}')
    stranger = _writer(tmp_path / "other", Signer(SigningKey(b"\x33" * 32)))
    stranger.record(check="backup", outcome="success")
    _close(stranger)
    foreign = next(iter(_files(tmp_path / "other")))
    shutil.copy2(tmp_path / "other" / "ev" / foreign, tmp_path / "ev" / foreign)
    digest = hashlib.sha256((tmp_path / "ev" / forged).read_bytes()).hexdigest()
    _assert_recovered(tmp_path, before)
    quarantine = tmp_path / "ev" / QUARANTINE_DIR
    kept = {hashlib.sha256(p.read_bytes()).hexdigest() for p in quarantine.iterdir()}
    assert digest in kept
    assert len(list(quarantine.iterdir())) == 2


def test_a_transaction_that_never_committed_leaves_no_bundle_to_adopt(tmp_path: Path) -> None:
    """A crash before the COMMIT: the bundle never happened (an order admitted in that
    transaction was not admitted), so recovery must not adopt it into the chain. Its
    file, still under the pending name, is kept aside in quarantine, never deleted."""
    before = _seed(tmp_path, 3)
    w = _writer(tmp_path)
    with contextlib.suppress(SimulatedCrash), w._lock, w.store.begin() as conn:
        w.append(conn, [EvidenceRequest(check="order", outcome="success",
                                        post_state={"admitted": True})])
        raise SimulatedCrash  # the file is durable, its row never commits
    _close(w)
    assert _files(tmp_path) == before  # not published under a bundle name
    pending = [p.name for p in (tmp_path / "ev").iterdir() if p.name.endswith(".pending")]
    assert len(pending) == 1
    w = _writer(tmp_path)
    rows = list_bundles(w.store)
    _close(w)
    assert sorted(r.sequence for r in rows) == [1, 2, 3] and all(r.check == "backup" for r in rows)
    assert (tmp_path / "ev" / "quarantine" / pending[0]).exists()
    _assert_recovered(tmp_path, before)


def test_a_crash_between_commit_and_rename_publishes_the_committed_bundle(
        tmp_path: Path) -> None:
    """The row committed, the process died before the file got its final name: the
    bundle did happen, so recovery finishes the rename."""
    before = _seed(tmp_path, 3)
    newest = max(before)
    (tmp_path / "ev" / newest).rename(tmp_path / "ev" / (newest + ".pending"))
    w = _writer(tmp_path)
    assert newest in w.recovery.published
    _close(w)
    assert _files(tmp_path) == before
    _assert_recovered(tmp_path, before)


def test_prune_lost_with_the_wal_is_reapplied_from_its_signed_record(tmp_path: Path) -> None:
    """The database goes back to before a prune whose files are already deleted:
    the adopted prune bundle turns the live rows into tombstones again."""
    w = _writer(tmp_path)
    for i in range(8):
        w.record(check="fw", outcome="failed", post_state={"i": i})
    _close(w)
    backup = tmp_path / "before-prune.db"
    shutil.copy2(tmp_path / "state.db", backup)
    w = _writer(tmp_path)
    result = prune(w, RetentionPolicy(keep_last=3, min_age_days=0),
                   datetime.now(UTC) + timedelta(days=1))
    _close(w)
    before = _files(tmp_path)
    _delete_db(tmp_path)
    shutil.copy2(backup, tmp_path / "state.db")
    _assert_recovered(tmp_path, before)
    w = _writer(tmp_path)
    pruned = {r.sequence for r in list_bundles(w.store) if r.pruned}
    _close(w)
    assert pruned == set(result.pruned)
