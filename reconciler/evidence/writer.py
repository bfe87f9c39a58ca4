"""Signed, hash-chained evidence bundles (the writer side).

`EvidenceWriter.record(...)` turns one reconcile outcome into an in-toto
Statement (specs.evidence), signs it as a DSSE envelope and makes it durable
before returning its bundle_id:

1. under a process lock and a SQLite write transaction (BEGIN IMMEDIATE, so
   another process appending, e.g. `evidence prune` from the CLI, waits), read
   the chain head (last sequence and digest) from the index;
2. build the statement with sequence = head + 1 and prev_digest = head digest,
   sign it, write the envelope file (tmp + fsync + rename + fsync dir);
3. in the same transaction insert the index row, add the bundle's leaf to the
   Merkle tree's frontier (reconciler.evidence.tree), and call every
   `on_stored` hook with the connection (the outbox enqueues there), then commit.

The signed files are the evidence and the index a cache of them: at start,
`EvidenceWriter()` reconciles the index with the files
(reconciler.evidence.recovery): a file the index lost (a crash after 2 and
before the commit, a deleted or torn WAL, an older database restored) is
verified and adopted back into the chain; files that are not our bundles go
to `quarantine/`; if the chain cannot be continued, a signed chain-break
bundle says where it ended and why, and no sequence is ever reused. No file
is deleted except by retention, after its signed prune record.

If `append` itself fails (a hook raises, the disk is full) its transaction
is still open and will roll back: its files provably never joined the chain
and are removed. If the COMMIT fails, that is not certain: the files are
moved to quarantine (`forget_uncommitted`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from reconciler.evidence.checkpoint import origin_for
from reconciler.evidence.merkle import Frontier, evidence_leaf
from reconciler.evidence.recovery import Recovery, reconcile_files, set_aside_uncommitted
from reconciler.evidence.tree import TreeTampered, check_appendable, extend_tree, load_frontier
from reconciler.store.database import Store, Transaction, after_commit
from reconciler.store.evidence_index import (
    PENDING_SUFFIX,
    EvidenceDir,
    IndexRow,
    file_name_for,
    insert_rows,
    mark_pruned,
    save_recovery,
)
from reconciler.store.evidence_tree import digests_from, save_tree_state
from reconciler.trust.dsse import Signer, TrustedKeys, envelope_bytes
from specs.evidence import (
    CHAIN_BREAK_CHECK,
    EVIDENCE_PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    hipaa_controls_for,
)
from specs.orders import format_rfc3339
from specs.resource import canonical_json
from specs.status import ActionRecord, Outcome

if TYPE_CHECKING:
    from specs.config import AgentConfig

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
OnStored = Callable[[Transaction, str, bytes], None]

# facts keys that have their own predicate field; anything else goes to `facts`.
FACT_FIELDS = ("ruleset_hash", "nixos_revision", "derivation_digest", "ntp_offset_ms")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class EvidenceIdentity:
    """Who the evidence is about; stamped into every predicate."""

    site_id: str
    host_id: str
    deployment_mode: str | None = None
    reseller_id: str | None = None
    policy_version: str | None = None

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> EvidenceIdentity:
        return cls(
            site_id=cfg.site_id,
            host_id=cfg.host_id,
            deployment_mode=cfg.deployment_mode.value,
            reseller_id=cfg.reseller_id,
            policy_version=cfg.policy_version,
        )


@dataclass(frozen=True)
class EvidenceRequest:
    """One outcome to record; fields as `EvidenceWriter.record` takes them."""

    check: str
    outcome: Outcome | str
    pre_state: Any = None
    post_state: Any = None
    actions: Sequence[ActionRecord | Mapping[str, Any]] = ()
    order_id: str | None = None
    error: str | None = None
    facts: Mapping[str, Any] | None = None
    guard_verdicts: Sequence[Any] = ()
    timestamp_start: datetime | str | None = None
    timestamp_end: datetime | str | None = None


def _json(value: Any) -> Any:
    return to_jsonable_python(value)


def _ts(value: datetime | str | None, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    return format_rfc3339(value)


class EvidenceWriter:
    """Appends bundles to this host's evidence chain. Thread-safe."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        evidence_dir: Path,
        identity: EvidenceIdentity,
        clock: Clock = utc_now,
        on_stored: Sequence[OnStored] = (),
    ) -> None:
        self.store = store
        self.signer = signer
        self.dir = EvidenceDir(Path(evidence_dir))
        self.identity = identity
        self.clock = clock
        self.on_stored = list(on_stored)
        self._lock = threading.Lock()
        self.recovery = self.recover()

    def recover(self) -> Recovery:
        """Reconcile the index with the signed files (module doc); loud if the chain broke."""
        pub = self.signer.public_key_hex
        origin = origin_for(self.identity.site_id, self.identity.host_id)
        now = format_rfc3339(self.clock())
        with self._lock, self.store.begin() as conn:
            rec, rows = reconcile_files(conn, self.dir, TrustedKeys([pub]), origin,
                                        bytes.fromhex(pub), now)
            if rows:
                insert_rows(conn, rows)
                _rebuild_tree(conn, rows, rec)
                for bundle_id, data in rec.adopted_envelopes:
                    for hook in self.on_stored:  # e.g. the outbox lost with the database
                        hook(conn, bundle_id, data)
            if rec.broken:
                lost = list(rec.lost)
                self.append(conn, [EvidenceRequest(
                    check=CHAIN_BREAK_CHECK, outcome=Outcome.alert, error=rec.reason,
                    post_state=rec.break_record())],
                    extra=lambda c, bundle_id: mark_pruned(c, lost, now, bundle_id))
            if rec.changed:
                save_recovery(conn, rec.summary(now))
        if rec.adopted or rec.tombstones:
            log.warning("evidence index rebuilt from the signed files: %d bundle(s) adopted, "
                        "%d tombstone(s) from prune records", len(rec.adopted),
                        len(rec.tombstones), extra={"reason": "EvidenceIndexRebuilt"})
        if rec.quarantined:
            log.warning("moved %d file(s) that are not valid bundles of this chain to %s",
                        len(rec.quarantined), self.dir.path / "quarantine",
                        extra={"reason": "EvidenceQuarantined"})
        if rec.broken:
            log.error("evidence chain broken: %s; verified chain ends at sequence %d; "
                      "continuing after it in a signed chain-break bundle, every file kept",
                      rec.reason, rec.last_sequence, extra={"reason": "EvidenceChainBroken"})
        return rec

    def close(self) -> None:
        self.dir.close()

    def record(
        self,
        *,
        check: str,
        outcome: Outcome | str,
        pre_state: Any = None,
        post_state: Any = None,
        actions: Sequence[ActionRecord | Mapping[str, Any]] = (),
        order_id: str | None = None,
        error: str | None = None,
        facts: Mapping[str, Any] | None = None,
        guard_verdicts: Sequence[Any] = (),
        timestamp_start: datetime | str | None = None,
        timestamp_end: datetime | str | None = None,
    ) -> str:
        """Sign, store and enqueue one bundle; returns its bundle_id once durable."""
        req = EvidenceRequest(
            check=check,
            outcome=outcome,
            pre_state=pre_state,
            post_state=post_state,
            actions=actions,
            order_id=order_id,
            error=error,
            facts=facts,
            guard_verdicts=guard_verdicts,
            timestamp_start=timestamp_start,
            timestamp_end=timestamp_end,
        )
        return self.record_many([req])[0]

    def record_many(self, requests: Sequence[EvidenceRequest]) -> list[str]:
        """Like `record` for several bundles, in order, with one commit and one
        filesystem sync: the way to reach the throughput budget when a pass
        produces many outcomes at once. All or none become durable."""
        if not requests:
            return []
        with self._lock:
            try:
                with self.store.begin() as conn:
                    return self.append(conn, requests)
            except BaseException:
                self.forget_uncommitted()
                raise

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction in which the caller may `append` bundles beside
        its own writes (e.g. an order's nonce and trigger): all commit together
        or none does, and the files of a rolled-back transaction are removed.

        Holds the writer's lock for the whole transaction, taken before the
        database lock as `record_many` does, so the two never wait on each other.
        """
        with self._lock:
            try:
                with self.store.begin() as conn:
                    yield conn
            except BaseException:
                self.forget_uncommitted()
                raise

    def forget_uncommitted(self) -> None:
        """After a failed commit: move files whose rows did not commit to quarantine.

        `append` already removes its files when it fails itself; this covers a
        failure of the COMMIT after it returned. Best effort: if the database
        is unusable, the files stay until the next start reconciles them.
        """
        try:
            with self.store.begin() as conn:
                moved = set_aside_uncommitted(conn, self.dir)
            if moved:
                log.warning("moved %d uncommitted evidence file(s) to quarantine", len(moved))
        except Exception as e:
            log.warning("could not set aside uncommitted evidence files: %s",
                        type(e).__name__)

    def append(
        self,
        conn: Transaction,
        requests: Sequence[EvidenceRequest],
        extra: Callable[[Transaction, str], None] | None = None,
    ) -> list[str]:
        """`record_many` inside the caller's write transaction (caller holds `_lock`).

        `extra(conn, bundle_id)` runs for each bundle after its index insert,
        before the hooks (retention marks its tombstones there, atomically
        with its bundle).
        """
        now = format_rfc3339(self.clock())
        seq, prev = check_appendable(conn)
        built: list[tuple[IndexRow, bytes]] = []
        for req in requests:
            seq += 1
            row, data = self._build(req, seq, prev, now)
            prev = row.digest
            built.append((row, data))
        batch = len(built) > 1
        written: list[str] = []
        try:
            for row, data in built:
                # Under a pending name until the transaction commits (then published
                # under the final name): a crash before the COMMIT leaves no file that
                # recovery could take for a committed bundle. One fsync pair per
                # file for a single bundle; one syncfs for a batch.
                self.dir.write(row.file_name + PENDING_SUFFIX, data, sync=not batch)
                written.append(row.file_name + PENDING_SUFFIX)
            if batch:
                self.dir.sync_filesystem()
            after_commit(conn, functools.partial(
                self.dir.publish, [row.file_name for row, _ in built]))
            insert_rows(conn, [row for row, _ in built])
            extend_tree(conn, built[0][0].sequence, [row.digest for row, _ in built])
            for row, data in built:
                if extra is not None:
                    extra(conn, row.bundle_id)
                for hook in self.on_stored:
                    hook(conn, row.bundle_id, data)
        except BaseException:
            # The transaction will roll back: these bundles never happened, so
            # neither may their files (the sequences will be reused).
            for name in written:
                self.dir.unlink(name)
            raise
        return [row.bundle_id for row, _ in built]

    def _build(
        self, req: EvidenceRequest, seq: int, prev: str | None, now: str
    ) -> tuple[IndexRow, bytes]:
        bundle_id = str(uuid.uuid4())
        facts = dict(req.facts or {})
        rollback_generation = facts.pop("rollback_generation", None)
        rollback_available = bool(facts.pop("rollback_available", rollback_generation is not None))
        post_json = _json(req.post_state)
        ident = self.identity
        outcome = Outcome(req.outcome).value
        predicate = {
            "bundle_id": bundle_id,
            "site_id": ident.site_id,
            "host_id": ident.host_id,
            "deployment_mode": ident.deployment_mode,
            "reseller_id": ident.reseller_id,
            "policy_version": ident.policy_version,
            "timestamp_start": _ts(req.timestamp_start, now),
            "timestamp_end": _ts(req.timestamp_end, now),
            "check": req.check,
            "hipaa_controls": hipaa_controls_for(req.check),
            "pre_state": _json(req.pre_state),
            "post_state": post_json,
            "action_taken": [
                (a if isinstance(a, ActionRecord) else ActionRecord.model_validate(a)).model_dump(
                    mode="json"
                )
                for a in req.actions
            ],
            "rollback_available": rollback_available,
            "rollback_generation": _json(rollback_generation),
            "outcome": outcome,
            "error": req.error,
            "order_id": req.order_id,
            **{k: _json(facts.pop(k, None)) for k in FACT_FIELDS},
            "guard_verdicts": [
                g.model_dump(mode="json") if isinstance(g, BaseModel) else _json(g)
                for g in req.guard_verdicts
            ],
            "facts": _json(facts),
            "sequence": seq,
            "prev_digest": prev,
        }
        statement = {
            "_type": STATEMENT_TYPE,
            "subject": [
                {
                    "name": f"{ident.site_id}/{ident.host_id}/{req.check}",
                    "digest": {"sha256": hashlib.sha256(canonical_json(post_json)).hexdigest()},
                }
            ],
            "predicateType": PREDICATE_TYPE,
            "predicate": predicate,
        }
        data = envelope_bytes(
            self.signer.sign_envelope(canonical_json(statement), EVIDENCE_PAYLOAD_TYPE)
        )
        row = IndexRow(
            bundle_id=bundle_id,
            sequence=seq,
            check=req.check,
            outcome=outcome,
            created_at=now,
            digest=hashlib.sha256(data).hexdigest(),
            prev_digest=prev,
            file_name=file_name_for(seq, bundle_id),
            order_id=req.order_id,
            pruned_at=None,
            pruned_by=None,
        )
        return row, data


def _rebuild_tree(conn: Transaction, rows: Sequence[IndexRow], rec: Recovery) -> None:
    """Bring the stored Merkle frontier up to the rows just rebuilt.

    The frontier commits with the index rows, so it is ahead of the index only
    if rows were deleted from an intact database: the rebuilt rows must then
    reproduce it exactly. If they do not because bundles are lost (a chain
    break), the tree is recomputed over the index with the lost leaves (the
    break bundle says so); otherwise the files are not what the tree committed
    to and nothing is written until someone looks.
    """
    stored = load_frontier(conn)
    if stored.size >= rows[0].sequence:
        check = Frontier()
        for seq, digest in digests_from(conn, 1):
            if seq > stored.size:
                break
            check.append(evidence_leaf(digest))
        if (check.size != stored.size or check.root() != stored.root()) and rec.broken:
            rec.reasons.append(f"the Merkle tree of {stored.size} leaves covers lost bundles")
            whole = Frontier()
            whole.extend(evidence_leaf(d) for _, d in digests_from(conn, 1))
            save_tree_state(conn, whole.size, whole.to_bytes())
            return
        if check.size != stored.size or check.root() != stored.root():
            raise TreeTampered(
                f"the evidence index lost rows and the files on disk do not rebuild the "
                f"Merkle tree of {stored.size} leaves: no evidence is written until this is "
                "investigated ('compliance-agent evidence verify --all')")
    fresh = [r for r in rows if r.sequence > stored.size]
    if fresh:
        extend_tree(conn, fresh[0].sequence, [r.digest for r in fresh])
