"""Start-up reconciliation of the evidence index with the signed files.

The files are the evidence; the SQLite index is only a cache of them that can
be lost (state.db deleted, its WAL deleted or torn, an older copy restored).
So at start, under the writer's lock and in one write transaction:

1. every file in the evidence directory that the index does not know is
   named like a bundle is verified with the agent's own key. A valid bundle is
   a *candidate*; a file that is not one (forged, another key's, torn, a temp
   file) is moved to `quarantine/`, never deleted. A file whose index row is a tombstone is the
   tail of an interrupted prune: its signed prune record is committed, so
   retention finishes and deletes it (the only deletion there is).
2. from the index head on, each sequence is rebuilt from a candidate that
   links to the one before (index row, Merkle leaf, outbox entry: receivers
   dedupe by bundle_id), or from a signed prune record listing it (a
   tombstone with the listed digest), or from an earlier chain break that
   declared it lost.
3. the newest checkpoint this agent signed (database or `checkpoints/`)
   must be a prefix of the rebuilt tree.

If a sequence cannot be rebuilt (a gap no file or record explains, a file that
does not link, a checkpoint covering more than exists or another root), the
chain is *broken*: every file stays, the unknown sequences become tombstones
with the digest `LOST_DIGEST` (so the index and the tree stay gapless and no
number is ever reused), and the writer appends a signed `evidence_chain_break`
bundle naming where the verified chain ended (sequence, digest), what was
lost and why. It is logged at ERROR and counted by the metric
`compliance_agent_evidence_chain_breaks`; `evidence verify` explains the
lost sequences by that bundle. Checkpoints signed before the break that cover
a lost sequence no longer match (CheckpointMismatch): that is the truth.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from reconciler.evidence.checkpoint import CHECKPOINT_DIR
from reconciler.evidence.merkle import Frontier, evidence_leaf
from reconciler.evidence.note import Checkpoint, NoteError, SignedNote, verify_note
from reconciler.evidence.tree import load_frontier
from reconciler.store.database import Transaction
from reconciler.store.evidence_index import (
    FILE_RE,
    PENDING_RE,
    PENDING_SUFFIX,
    TMP_RE,
    EvidenceDir,
    IndexRow,
    all_rows,
    chain_head,
    file_name_for,
    live_file_names,
    mark_pruned,
    sequence_ranges,
)
from reconciler.store.evidence_tree import digests_from, latest_checkpoint
from reconciler.trust.dsse import TrustedKeys, TrustError, loads_strict, verify_envelope
from specs.evidence import (
    CHAIN_BREAK_CHECK,
    EVIDENCE_PAYLOAD_TYPE,
    PRUNE_CHECK,
    EvidenceStatement,
)

log = logging.getLogger(__name__)

__all__ = ["CHAIN_BREAK_CHECK", "LOST_DIGEST", "QUARANTINE_DIR", "Recovery", "reconcile_files"]

QUARANTINE_DIR = "quarantine"
# Leaf data of a sequence whose bundle is gone and unexplained: not the SHA-256
# of any envelope, so it can never be mistaken for a real bundle.
LOST_DIGEST = "0" * 64
LOST_CHECK = "evidence_lost"


@dataclass(frozen=True)
class _Candidate:
    name: str
    data: bytes
    digest: str
    statement: EvidenceStatement


@dataclass
class Recovery:
    """What start-up reconciliation found and did."""

    adopted: list[int] = field(default_factory=list)  # sequences rebuilt from files
    tombstones: list[int] = field(default_factory=list)  # rebuilt from signed prune records
    lost: list[int] = field(default_factory=list)  # declared lost by this start's break
    quarantined: list[str] = field(default_factory=list)
    retention_finished: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why the chain could not continue
    last_sequence: int = 0  # last sequence of the verified chain before the break
    last_digest: str | None = None
    checkpoint: dict[str, Any] | None = None
    adopted_envelopes: list[tuple[str, bytes]] = field(default_factory=list)
    published: list[str] = field(default_factory=list)  # committed, renamed after a crash

    @property
    def changed(self) -> bool:
        return bool(self.adopted or self.tombstones or self.lost or self.quarantined
                    or self.retention_finished or self.published)

    def summary(self, at: str) -> str:
        """One line for `evidence verify` (kept in the meta table until the next one)."""
        parts = [f"{len(self.adopted)} bundle(s) adopted from their signed files",
                 f"{len(self.tombstones)} tombstone(s) rebuilt from signed records",
                 f"{len(self.quarantined)} file(s) moved to {QUARANTINE_DIR}/"]
        if self.retention_finished:
            parts.append(f"{len(self.retention_finished)} pruned file(s) deleted")
        if self.broken:
            parts.append(f"chain broken after seq {self.last_sequence} ({self.reason}), "
                         f"{len(self.lost)} sequence(s) declared lost")
        return f"at start {at} the evidence index was reconciled with the files: " + \
            ", ".join(parts)

    @property
    def broken(self) -> bool:
        return bool(self.reasons)

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) if self.reasons else None

    def break_record(self) -> dict[str, Any]:
        """post_state of the signed chain-break bundle."""
        return {
            "reason": self.reason,
            "last_verified_sequence": self.last_sequence,
            "last_verified_digest": self.last_digest,
            "lost_ranges": sequence_ranges(self.lost),
            "lost": [{"sequence": s, "digest": LOST_DIGEST} for s in self.lost],
            "checkpoint": self.checkpoint,
            "adopted_count": len(self.adopted),
            "quarantined": self.quarantined[:100],
        }


def _quarantine(edir: EvidenceDir, name: str, recovery: Recovery) -> None:
    qdir = edir.path / QUARANTINE_DIR
    qdir.mkdir(mode=0o700, exist_ok=True)
    target = qdir / name
    n = 1
    while target.exists():  # never overwrite an earlier quarantined file
        target = qdir / f"{name}.{n}"
        n += 1
    os.rename(edir.path / name, target)
    recovery.quarantined.append(name)


def _parse(data: bytes, keys: TrustedKeys) -> EvidenceStatement | None:
    try:
        payload = verify_envelope(data, EVIDENCE_PAYLOAD_TYPE, keys)
        return EvidenceStatement.model_validate(loads_strict(payload, "statement"))
    except (TrustError, ValidationError, ValueError):
        return None


def _listed(candidates: Iterable[_Candidate]) -> dict[int, tuple[str, IndexRow]]:
    """Sequences listed by signed prune and chain-break bundles -> (kind, tombstone row).

    The tombstone is pruned by the listing bundle (`pruned_by`), as retention
    or the chain break wrote it; its digest is the listed one (LOST_DIGEST for
    a sequence an earlier break declared lost)."""
    out: dict[int, tuple[str, IndexRow]] = {}
    for c in candidates:
        p = c.statement.predicate
        post = p.post_state if isinstance(p.post_state, dict) else {}
        key = {PRUNE_CHECK: "pruned", CHAIN_BREAK_CHECK: "lost"}.get(p.check)
        if key is None:
            continue
        for item in post.get(key, []):
            if not (isinstance(item, dict) and isinstance(item.get("sequence"), int)):
                continue
            seq = item["sequence"]
            bundle_id = str(item.get("bundle_id") or f"lost-{seq}")
            out[seq] = (key, IndexRow(
                bundle_id=bundle_id, sequence=seq,
                check=str(item.get("check") or LOST_CHECK),
                outcome=str(item.get("outcome") or "lost"),
                created_at=str(item.get("created_at") or p.timestamp_end),
                digest=str(item.get("digest")), prev_digest=None,
                file_name=file_name_for(seq, bundle_id), order_id=None,
                pruned_at=p.timestamp_end, pruned_by=p.bundle_id))
    return out


def _newest_checkpoint(conn: Transaction, edir: EvidenceDir, origin: str,
                       public_key: bytes) -> Checkpoint | None:
    """The largest checkpoint this agent signed, from the database or its files."""
    def valid(text: str) -> Checkpoint | None:
        try:
            note = SignedNote.parse(text)
            verify_note(note, origin, public_key)
            return Checkpoint.parse(note.text)
        except NoteError:
            return None

    row = latest_checkpoint(conn)
    best = None if row is None else valid(row.note)
    cdir = edir.path / CHECKPOINT_DIR
    # Files are named by tree size (zero-padded): the newest valid one is the first
    # found from the end; one is written per pass, so not all are verified.
    names = sorted(p.name for p in cdir.glob("*.note")) if cdir.is_dir() else []
    for name in reversed(names):
        cp = valid((cdir / name).read_text(errors="replace"))
        if cp is not None:
            return cp if best is None or cp.size > best.size else best
    return best


def reconcile_files(conn: Transaction, edir: EvidenceDir, keys: TrustedKeys, origin: str,
                    public_key: bytes, now: str) -> tuple[Recovery, list[IndexRow]]:
    """Steps 1-3 of the module doc; returns what was found and the rows to append
    after the index head (adopted bundles, tombstones, lost sequences), in order.
    The caller inserts them, extends the tree and, if broken, writes the break."""
    rec = Recovery()
    live = live_file_names(conn)
    head, prev = chain_head(conn)
    _settle_pending(edir, live, rec)
    # The common start: every bundle file is indexed. Only the others are read.
    unknown = [n for n in edir.names() if n not in live
               and (FILE_RE.fullmatch(n) or TMP_RE.fullmatch(n)) and (edir.path / n).is_file()]
    rows = all_rows(conn) if unknown else []
    by_name = {r.file_name: r for r in rows}
    candidates: dict[int, _Candidate] = {}
    for name in unknown:
        data = (edir.path / name).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        row = by_name.get(name)
        if row is not None and row.pruned and row.digest == digest:
            edir.unlink(name)  # a prune interrupted after its signed record committed
            rec.retention_finished.append(name)
            continue
        st = _parse(data, keys) if FILE_RE.fullmatch(name) else None
        seq = st.predicate.sequence if st is not None else 0
        if (st is None or name != file_name_for(seq, st.predicate.bundle_id)
                or seq <= head or seq in candidates):
            # Not ours, torn, renamed, or a sequence the chain already has: keep aside.
            _quarantine(edir, name, rec)
            continue
        candidates[seq] = _Candidate(name, data, digest, st)
    listed = _listed(candidates.values())
    cp = _newest_checkpoint(conn, edir, origin, public_key)
    top = max([head, *candidates, *listed, cp.size if cp else 0])
    new: list[IndexRow] = []
    for seq in range(head + 1, top + 1):
        c = candidates.get(seq)
        # After a lost sequence the link cannot be checked: its digest is unknown.
        if c is not None and (c.statement.predicate.prev_digest == prev or prev == LOST_DIGEST):
            p = c.statement.predicate
            new.append(IndexRow(
                bundle_id=p.bundle_id, sequence=seq, check=p.check, outcome=p.outcome.value,
                created_at=p.timestamp_end, digest=c.digest, prev_digest=p.prev_digest,
                file_name=c.name, order_id=p.order_id, pruned_at=None, pruned_by=None))
            rec.adopted.append(seq)
            rec.adopted_envelopes.append((p.bundle_id, c.data))
        elif seq in listed:
            _kind, row = listed[seq]
            new.append(row)
            rec.tombstones.append(seq)
            if c is not None and c.digest == row.digest:
                edir.unlink(c.name)  # its signed prune record is in the chain: retention's
                rec.retention_finished.append(c.name)
            elif c is not None:
                _quarantine(edir, c.name, rec)
        else:
            if c is not None:
                _quarantine(edir, c.name, rec)
                why = f"sequence {seq} does not link to the sequence before"
            else:
                why = f"sequence {seq} has no bundle file and no signed record"
            if not rec.lost:
                rec.reasons.append(why)
                rec.last_sequence, rec.last_digest = seq - 1, prev
            rec.lost.append(seq)
            new.append(IndexRow(
                bundle_id=f"lost-{seq}", sequence=seq, check=LOST_CHECK, outcome="lost",
                created_at=now, digest=LOST_DIGEST, prev_digest=prev,
                file_name=file_name_for(seq, "lost"), order_id=None,
                pruned_at=None, pruned_by=None))
        prev = new[-1].digest
    _apply_adopted_prunes(conn, edir, rows, listed, rec)
    if cp is not None:
        rec.checkpoint = {"tree_size": cp.size, "root": cp.root.hex()}
        _check_checkpoint(conn, head, new, cp, rec)
    if len(rec.lost) > 1:
        rec.reasons.insert(1, f"{len(rec.lost)} sequence(s) lost in all")
    return rec, new


def _apply_adopted_prunes(conn: Transaction, edir: EvidenceDir, rows: list[IndexRow],
                          listed: dict[int, tuple[str, IndexRow]], rec: Recovery) -> None:
    """An adopted prune bundle may list bundles the index still has as live rows
    (the database lost the prune's commit, not the bundles before it): make those
    tombstones, as the prune did, and finish deleting their files."""
    for r in rows:
        entry = listed.get(r.sequence)
        if r.pruned or entry is None or entry[0] != "pruned" or entry[1].digest != r.digest:
            continue
        tomb = entry[1]
        mark_pruned(conn, [r.sequence], tomb.pruned_at or "", tomb.pruned_by or "")
        rec.tombstones.append(r.sequence)
        if edir.unlink(r.file_name):
            rec.retention_finished.append(r.file_name)


def _check_checkpoint(conn: Transaction, head: int, new: list[IndexRow],
                      cp: Checkpoint, rec: Recovery) -> None:
    """The newest signed checkpoint must be a prefix of the index plus `new`."""
    if cp.size > head + len(new):  # cannot happen: `top` covers the size; kept as a guard
        rec.reasons.append(f"the signed checkpoint covers {cp.size} bundles, "
                           f"only {head + len(new)} can be rebuilt")
        return
    stored = load_frontier(conn)
    if stored.size == cp.size and cp.size == head:
        root = stored.root()  # the common start: signed after the last pass, O(1)
    else:
        frontier = Frontier()
        for seq, digest in digests_from(conn, 1):
            if seq > cp.size:
                break
            frontier.append(evidence_leaf(digest))
        frontier.extend(evidence_leaf(r.digest) for r in new[:cp.size - frontier.size])
        root = frontier.root()
    if root != cp.root:
        if rec.lost and rec.lost[0] <= cp.size:
            rec.reasons.append(f"the signed checkpoint of tree size {cp.size} covers "
                               f"lost sequence(s) from {rec.lost[0]}")
        else:
            rec.reasons.append(f"the signed checkpoint of tree size {cp.size} has another "
                               "root than the bundles on disk")


def _settle_pending(edir: EvidenceDir, live: set[str], rec: Recovery) -> None:
    """Files still under their pending name: a committed row means the crash came
    between the COMMIT and the rename (finish it); no row means the transaction
    never committed, so the bundle never happened: kept aside, never adopted (an
    order admitted in it, say, was not admitted)."""
    for name in edir.names():
        if not PENDING_RE.fullmatch(name):
            continue
        final = name[: -len(PENDING_SUFFIX)]
        if final in live and not (edir.path / final).exists():
            edir.publish([final])
            rec.published.append(final)
        else:
            _quarantine(edir, name, rec)


def set_aside_uncommitted(conn: Transaction, edir: EvidenceDir) -> list[str]:
    """After a COMMIT that failed: move bundle files without a live index row to
    quarantine (call under the writer's lock, in a transaction). Whether a failed
    commit reached the disk is not certain, so the files are kept, not deleted;
    their sequences will be reused, so they cannot stay in the chain's directory."""
    live = live_file_names(conn)
    rec = Recovery()
    for name in edir.names():
        if ((FILE_RE.fullmatch(name) and name not in live) or PENDING_RE.fullmatch(name)) \
                and (edir.path / name).is_file():
            _quarantine(edir, name, rec)
    return rec.quarantined
