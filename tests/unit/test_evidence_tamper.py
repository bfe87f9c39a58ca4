"""Tampering with the evidence log as someone with write access to the state
directory but without the signing key: every attack is detected by
`compliance-agent evidence verify`, with a clear message and exit 1.

Real files, a real SQLite store, the real CLI entry points.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.trust import register
from reconciler.evidence.checkpoint import Checkpointer, origin_for
from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.store.evidence_index import list_bundles
from reconciler.trust.keys import write_seed_file
from specs.config import AgentConfig, load_config
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, SITE, write_config

KEY = AGENT_SIGNER.public_key_hex


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compliance-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@dataclass
class Log:
    cfg_path: Path
    cfg: AgentConfig
    clock: list[datetime]

    @property
    def db(self) -> Path:
        return self.cfg.database_path

    @property
    def edir(self) -> Path:
        return self.cfg.evidence_directory

    def passes(self, n: int, per_pass: int = 3, outcome: str = "success") -> None:
        """n reconcile passes writing `per_pass` bundles each, a checkpoint after each."""
        store = open_store(self.db)
        w = EvidenceWriter(store, AGENT_SIGNER, self.edir, EvidenceIdentity(SITE, HOST),
                           clock=lambda: self.clock[0])
        cp = Checkpointer(store, AGENT_SIGNER, self.edir, origin_for(SITE, HOST),
                          clock=lambda: self.clock[0])
        try:
            for _ in range(n):
                self.clock[0] += timedelta(hours=1)
                w.record_many([EvidenceRequest(check=f"c{i}", outcome=outcome,
                                               post_state={"t": str(self.clock[0]), "i": i})
                               for i in range(per_pass)])
                cp.checkpoint()
        finally:
            cp.close()
            w.close()
            store.close()

    def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db) as db:
            return db.execute(statement, params).fetchall()

    def file_of(self, seq: int) -> Path:
        [(name,)] = self.sql("SELECT file_name FROM evidence_bundles WHERE sequence = ?", seq)
        return self.edir / name

    def verify(self, *extra: str) -> int:
        return run(["evidence", "verify", "--all", "--config", str(self.cfg_path), *extra])


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    write_seed_file(cfg.signing_key_file, AGENT_SIGNER._key)
    lg = Log(cfg_path, cfg, [datetime(2026, 1, 1, tzinfo=UTC)])
    lg.passes(4)  # 12 bundles, checkpoints at 3, 6, 9, 12
    yield lg


def out_of(capsys: pytest.CaptureFixture[str]) -> str:
    c = capsys.readouterr()
    return c.out + c.err


def test_intact_log_verifies(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    assert log.verify() == 0
    out = out_of(capsys)
    assert "12 bundle(s) checked, seq 1..12: intact" in out
    assert "matches 4 signed checkpoint(s)" in out
    # Auditor mode: a copy of the evidence directory and the key, no config.
    assert run(["evidence", "verify", "--public-key", KEY, str(log.edir)]) == 0


def test_mid_chain_deletion_with_a_fake_tombstone(log: Log,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    log.file_of(5).unlink()
    log.sql("UPDATE evidence_bundles SET pruned_at = '2026-01-02T00:00:00Z',"
            " pruned_by = 'cleanup' WHERE sequence = 5")
    assert log.verify() == 1
    assert "PROBLEM UnsignedPrune: seq 5" in out_of(capsys)
    assert run(["evidence", "verify", "--public-key", KEY, str(log.edir)]) == 1
    assert "Gap: seq 5" in out_of(capsys)


def test_tail_truncation_rows_and_files(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    for seq in (11, 12):
        log.file_of(seq).unlink()
    log.sql("DELETE FROM evidence_bundles WHERE sequence > 10")
    assert log.verify() == 1
    out = out_of(capsys)
    assert "PROBLEM Truncated: seq 12" in out and "bundles 11..12 were deleted" in out


def test_tail_truncation_with_checkpoints_and_tree_rewritten_is_caught_by_a_kept_checkpoint(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = tmp_path / "kept.note"
    [(note,)] = log.sql("SELECT note FROM evidence_checkpoints WHERE tree_size = 12")
    kept.write_text(note)
    for seq in (10, 11, 12):
        log.file_of(seq).unlink()
    log.sql("DELETE FROM evidence_bundles WHERE sequence > 9")
    log.sql("DELETE FROM evidence_checkpoints WHERE tree_size > 9")
    for p in (log.edir / "checkpoints").glob("*.note"):
        if int(p.name.split(".")[0]) > 9:
            p.unlink()
    # An attacker can recompute the frontier (no key needed): copy it from a 9-leaf tree.
    log.sql("UPDATE evidence_tree SET size = 9, frontier = ?", _frontier_of(log, 9))
    assert log.verify() == 0  # locally indistinguishable from a 9-bundle log
    capsys.readouterr()
    assert log.verify("--checkpoint", str(kept)) == 1
    assert "PROBLEM Truncated: seq 12" in out_of(capsys)


def _frontier_of(log: Log, n: int) -> bytes:
    from reconciler.evidence.merkle import Frontier, evidence_leaf

    f = Frontier()
    for (d,) in log.sql("SELECT digest FROM evidence_bundles WHERE sequence <= ? "
                        "ORDER BY sequence", n):
        f.append(evidence_leaf(d))
    return f.to_bytes()


def test_wiped_index(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    log.sql("DELETE FROM evidence_bundles")
    assert log.verify() == 1
    out = out_of(capsys)
    assert "PROBLEM Empty" in out and "PROBLEM Orphan" in out and "PROBLEM Truncated" in out


def test_replaced_bundle_with_index_rewritten(log: Log, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # A validly signed bundle of the same sequence from another run of the same
    # agent (same key, e.g. an older backup of the state directory) replaces seq 6,
    # and the attacker makes the index agree with it.
    (tmp_path / "other").mkdir()
    other_cfg = write_config(tmp_path / "other")
    other = Log(other_cfg, load_config(other_cfg), [datetime(2026, 1, 1, tzinfo=UTC)])
    other.passes(2, outcome="failed")
    src = other.file_of(6)
    [(bid, digest, prev)] = other.sql(
        "SELECT bundle_id, digest, prev_digest FROM evidence_bundles WHERE sequence = 6")
    log.file_of(6).unlink()
    shutil.copy(src, log.edir / src.name)
    log.sql("UPDATE evidence_bundles SET bundle_id = ?, digest = ?, prev_digest = ?, "
            "file_name = ? WHERE sequence = 6", bid, digest, prev, src.name)
    assert log.verify() == 1
    out = out_of(capsys)
    assert "PROBLEM CheckpointMismatch: seq 6" in out
    assert "PROBLEM TreeMismatch" in out


def test_reordered_bundles(log: Log, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = log.file_of(3), log.file_of(4)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    assert log.verify() == 1
    out = out_of(capsys)
    assert "IndexMismatch: seq 3" in out or "IndexMismatch: seq 4" in out
    assert run(["evidence", "verify", "--public-key", KEY, str(log.edir)]) == 1


def test_checkpoint_for_a_different_tree(log: Log, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "other").mkdir()
    other_cfg = write_config(tmp_path / "other")
    other = Log(other_cfg, load_config(other_cfg), [datetime(2026, 2, 1, tzinfo=UTC)])
    other.passes(6, per_pass=2)
    [(note,)] = other.sql("SELECT note FROM evidence_checkpoints WHERE tree_size = 8")
    foreign = tmp_path / "foreign.note"
    foreign.write_text(note)
    assert log.verify("--checkpoint", str(foreign)) == 1
    assert "PROBLEM CheckpointMismatch: seq 8" in out_of(capsys)
    # Of a size the log has a checkpoint for: two trees of one size.
    [(note12,)] = other.sql("SELECT note FROM evidence_checkpoints WHERE tree_size = 12")
    foreign.write_text(note12)
    assert log.verify("--checkpoint", str(foreign)) == 1
    assert "PROBLEM SplitView: seq 12" in out_of(capsys)
    # A note not signed by the agent's key is refused outright.
    forged = tmp_path / "forged.note"
    forged.write_text(note.replace(note.split("\n\n")[1].split(" ")[2][:8], "AAAAAAAA"))
    assert log.verify("--checkpoint", str(forged)) == 1
    assert "PROBLEM BadCheckpoint" in out_of(capsys)


def test_rolled_back_state_directory_against_a_newer_checkpoint(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    backup = tmp_path / "state-backup"
    shutil.copytree(log.cfg.state_directory, backup)
    log.passes(2)
    [(newer,)] = log.sql("SELECT note FROM evidence_checkpoints WHERE tree_size = 18")
    kept = tmp_path / "newer.note"
    kept.write_text(newer)
    shutil.rmtree(log.cfg.state_directory)
    shutil.copytree(backup, log.cfg.state_directory)
    assert log.verify() == 0  # the older copy is a consistent log on its own
    capsys.readouterr()
    assert log.verify("--checkpoint", str(kept)) == 1
    out = out_of(capsys)
    assert "PROBLEM Truncated: seq 18" in out and "bundles 13..18 were deleted" in out
    # The agent, restarted on the old copy, writes new bundles: the tree forks.
    log.passes(2)
    assert log.verify("--checkpoint", str(kept)) == 1
    assert "SplitView: seq 18" in out_of(capsys)


def test_truncated_index_is_rebuilt_from_the_files_and_matches_the_tree(log: Log) -> None:
    log.sql("DELETE FROM evidence_bundles WHERE sequence > 10")
    store = open_store(log.db)
    w = EvidenceWriter(store, AGENT_SIGNER, log.edir, EvidenceIdentity(SITE, HOST))
    assert w.recovery.adopted == [11, 12] and not w.recovery.broken
    w.record(check="x", outcome="success")
    w.close()
    store.close()


def test_tail_lost_with_its_rows_breaks_the_chain_without_reusing(log: Log) -> None:
    log.sql("DELETE FROM evidence_bundles WHERE sequence > 10")
    for p in sorted(log.edir.glob("00000000001[12]-*.json")):
        p.unlink()  # rows and files gone, the tree still commits to them
    store = open_store(log.db)
    w = EvidenceWriter(store, AGENT_SIGNER, log.edir, EvidenceIdentity(SITE, HOST))
    assert w.recovery.broken and w.recovery.lost == [11, 12]
    bid = w.record(check="x", outcome="success")
    assert next(r.sequence for r in list_bundles(store) if r.bundle_id == bid) == 14
    w.close()
    store.close()


def test_writer_refuses_files_that_do_not_rebuild_the_tree(log: Log) -> None:
    log.sql("DELETE FROM evidence_bundles WHERE sequence > 10")
    log.sql("UPDATE evidence_tree SET frontier = zeroblob(length(frontier))")
    store = open_store(log.db)
    from reconciler.evidence.tree import TreeTampered

    with pytest.raises(TreeTampered, match="do not rebuild the Merkle tree"):
        EvidenceWriter(store, AGENT_SIGNER, log.edir, EvidenceIdentity(SITE, HOST))
    store.close()


def test_empty_state_is_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    write_seed_file(cfg.signing_key_file, AGENT_SIGNER._key)
    open_store(cfg.database_path).close()
    assert run(["evidence", "verify", "--all", "--config", str(cfg_path)]) == 1
    assert "PROBLEM Empty" in out_of(capsys)


def test_legitimate_prune_keeps_the_tree_whole(log: Log, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    from reconciler.evidence.retention import Pruner, RetentionPolicy

    store = open_store(log.db)
    w = EvidenceWriter(store, AGENT_SIGNER, log.edir, EvidenceIdentity(SITE, HOST),
                       clock=lambda: log.clock[0])
    result = Pruner(w, RetentionPolicy(keep_last=3, min_age_days=0)).prune()
    w.close()
    store.close()
    assert result.pruned  # the newest success per check and the newest 3 stay
    log.passes(1)
    assert log.verify() == 0
    out = out_of(capsys)
    assert "explained by prune bundle seq 13" in out and "intact" in out
    # Without the index: the prune record's digests stand in for the missing files.
    assert run(["evidence", "verify", "--public-key", KEY, str(log.edir)]) == 0


def test_a_chain_from_before_the_tree_is_caught_up(log: Log,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # What migration 0030 leaves behind on an existing chain: an empty tree.
    log.sql("DELETE FROM evidence_checkpoints")
    for p in (log.edir / "checkpoints").glob("*.note"):
        p.unlink()
    log.sql("UPDATE evidence_tree SET size = 0, frontier = x''")
    log.passes(1)
    assert log.sql("SELECT size FROM evidence_tree") == [(15,)]
    assert log.verify() == 0
    assert "matches 1 signed checkpoint(s)" in out_of(capsys)
