"""Retention (guardrail 7): keep last N, nothing younger than D days, last success per check."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from reconciler.evidence.chain import verify_chain, verify_store
from reconciler.evidence.retention import Pruner, RetentionPolicy, select_prunable
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import Store, open_store
from reconciler.store.evidence_index import IndexRow, list_bundles, sequence_ranges
from specs.evidence import PRUNE_CHECK
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, SITE, T0

KEYS = [AGENT_SIGNER.public_key_hex]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.db")
    yield s
    s.close()


def make_writer(
    store: Store, tmp_path: Path, keep: int, days: int
) -> tuple[EvidenceWriter, Clock, Pruner]:
    clock = Clock()
    w = EvidenceWriter(
        store,
        AGENT_SIGNER,
        tmp_path / "ev",
        EvidenceIdentity(SITE, HOST),
        clock=clock,
    )
    return w, clock, Pruner(w, RetentionPolicy(keep_last=keep, min_age_days=days))


def row(seq: int, check: str = "backup", outcome: str = "failed", day: int = 0) -> IndexRow:
    return IndexRow(
        f"b{seq}",
        seq,
        check,
        outcome,
        f"2026-01-{day + 1:02d}T00:00:00.000000Z",
        "d",
        None,
        f"f{seq}",
        None,
        None,
        None,
    )


def test_select_keeps_newest_n() -> None:
    rows = [row(i) for i in range(1, 11)]
    got = select_prunable(rows, T0, keep_last=3, min_age_days=1)
    assert [r.sequence for r in got] == [1, 2, 3, 4, 5, 6, 7]


def test_select_never_prunes_young_bundles() -> None:
    rows = [row(i, day=i) for i in range(1, 11)]  # day i = 2026-01-(i+1)
    now = T0.replace(year=2026, month=1, day=11)
    got = select_prunable(rows, now, keep_last=0, min_age_days=5)
    # Cutoff 2026-01-06T12:00 (now - 5 days): strictly older is prunable.
    assert [r.sequence for r in got] == [1, 2, 3, 4, 5]


def test_select_keeps_newest_success_per_check() -> None:
    rows = [
        row(1, "backup", "success"),
        row(2, "backup", "success"),
        row(3, "fw", "success"),
        row(4, "fw", "failed"),
        row(5, "backup", "failed"),
        row(6, "x", "failed"),
    ]
    got = select_prunable(rows, T0, keep_last=1, min_age_days=0)
    assert [r.sequence for r in got] == [1, 4, 5]  # 2 (backup), 3 (fw) kept; 6 newest


def test_select_skips_tombstones() -> None:
    rows = [row(1), row(2)]
    rows[0] = IndexRow(**{**rows[0].to_json(), "pruned_at": "x"})
    assert [r.sequence for r in select_prunable(rows, T0, 0, 0)] == [2]


def test_ranges() -> None:
    assert sequence_ranges([5, 1, 2, 3, 7, 8]) == [[1, 3], [5, 5], [7, 8]]
    assert sequence_ranges([]) == []


def test_prune_end_to_end(store: Store, tmp_path: Path) -> None:
    w, clock, pruner = make_writer(store, tmp_path, keep=3, days=10)
    for i in range(10):
        clock.now = T0 + timedelta(days=i)
        w.record(
            check="backup" if i % 2 else "firewall",
            outcome="success" if i in (0, 3) else "failed",
            post_state={"i": i},
        )
    clock.now = T0 + timedelta(days=15)
    # seq = i + 1, created T0+i days. Cutoff T0+5d: seq 1..5 are old enough.
    # Keep: newest 3 (8, 9, 10); newest success firewall = seq 1, backup = seq 4.
    result = pruner.prune()
    assert sorted(result.pruned) == [2, 3, 5]
    assert result.files_removed == 3 and len(result.prune_bundles) == 1
    rows = {r.sequence: r for r in list_bundles(store)}
    assert all(
        rows[s].pruned_at and rows[s].pruned_by == result.prune_bundles[0] for s in (2, 3, 5)
    )
    assert not rows[1].pruned and not rows[4].pruned
    prune_row = rows[11]
    assert prune_row.check == PRUNE_CHECK and prune_row.bundle_id == result.prune_bundles[0]
    assert not (tmp_path / "ev" / rows[2].file_name).exists()
    # The prune bundle lists what it pruned, with digests.
    env = json.loads((tmp_path / "ev" / prune_row.file_name).read_bytes())
    post = json.loads(base64.b64decode(env["payload"]))["predicate"]["post_state"]
    assert post["pruned_ranges"] == [[2, 3], [5, 5]]
    assert {p["sequence"]: p["digest"] for p in post["pruned"]} == {
        s: rows[s].digest for s in (2, 3, 5)
    }
    # The chain still verifies, and the gaps are explained.
    report = verify_store(store, tmp_path / "ev", KEYS)
    assert report.ok, report.problems
    assert any("seq 2-3 pruned" in n for n in report.notes)
    # Files alone (an auditor's export) also verify: the prune bundle explains the gaps.
    live = [
        (r.file_name, (tmp_path / "ev" / r.file_name).read_bytes())
        for r in rows.values()
        if not r.pruned
    ]
    assert verify_chain(live, KEYS).ok
    # Nothing left to prune: no new bundle.
    again = pruner.prune()
    assert again.pruned == [] and again.prune_bundles == []


def test_prune_is_a_noop_for_young_chains(store: Store, tmp_path: Path) -> None:
    w, clock, pruner = make_writer(store, tmp_path, keep=1, days=90)
    for _ in range(5):
        w.record(check="backup", outcome="failed")
    clock.now = T0 + timedelta(days=89)
    assert pruner.prune().pruned == []
    assert len(list_bundles(store)) == 5


def test_deleting_a_file_without_prune_is_not_explained(store: Store, tmp_path: Path) -> None:
    w, clock, pruner = make_writer(store, tmp_path, keep=1, days=0)
    for _ in range(4):
        w.record(check="backup", outcome="failed")
    clock.now = T0 + timedelta(days=1)
    pruner.prune()
    victim = next(r for r in list_bundles(store) if not r.pruned and r.check == "backup")
    (tmp_path / "ev" / victim.file_name).unlink()
    report = verify_store(store, tmp_path / "ev", KEYS)
    assert [p.reason for p in report.problems] == ["Missing"]


def test_large_backlog_is_split_across_prune_bundles(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import reconciler.evidence.retention as retention

    monkeypatch.setattr(retention, "MAX_PER_BUNDLE", 4)
    w, clock, pruner = make_writer(store, tmp_path, keep=2, days=0)
    for _ in range(12):
        w.record(check="backup", outcome="failed")
    clock.now = T0 + timedelta(days=1)
    result = pruner.prune()
    assert len(result.prune_bundles) >= 3
    assert verify_store(store, tmp_path / "ev", KEYS).ok


def test_crash_after_prune_commit_leaves_files_cleaned_at_start(
    store: Store, tmp_path: Path
) -> None:
    w, clock, pruner = make_writer(store, tmp_path, keep=1, days=0)
    for _ in range(3):
        w.record(check="backup", outcome="failed")
    rows = sorted(list_bundles(store), key=lambda r: r.sequence)
    saved = {r.file_name: (tmp_path / "ev" / r.file_name).read_bytes() for r in rows}
    clock.now = T0 + timedelta(days=1)
    pruner.prune()
    for name, data in saved.items():  # as if the unlinks never happened
        (tmp_path / "ev" / name).write_bytes(data)
    w2, _, _ = make_writer(store, tmp_path, keep=1, days=0)
    assert len(w2.recovery.retention_finished) == 2  # signed prune record committed
    assert not w2.recovery.quarantined
    assert verify_store(store, tmp_path / "ev", KEYS).ok


def test_prune_bundles_are_never_pruned() -> None:
    rows = [row(1, PRUNE_CHECK, "success"), row(2, PRUNE_CHECK, "success"), row(3), row(4)]
    got = select_prunable(rows, T0, keep_last=1, min_age_days=0)
    assert [r.sequence for r in got] == [3]
