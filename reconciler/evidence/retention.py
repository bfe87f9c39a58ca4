"""Evidence retention (guardrail 7): prune old bundles without breaking the proof.

A bundle is pruned only if ALL hold:

* it is not among the newest `keep_last` bundles (by sequence);
* it is older than `min_age_days` (index `created_at`);
* it is not the newest `outcome=success` bundle of its check;
* it is not itself an `evidence_prune` or `evidence_chain_break` bundle:
  those are kept for good so that exported files alone (no index) always
  explain every gap.

Pruning deletes the file but keeps the index row as a tombstone (`pruned_at`,
`pruned_by`; its digest keeps the bundle's Merkle leaf), and appends one
evidence bundle with check `evidence_prune` whose post_state lists every
pruned bundle (sequence, bundle_id, digest, ...) and the pruned sequence
ranges. The tombstones and that bundle are committed
in one transaction; files are deleted after the commit (a crash in between
leaves files of tombstoned rows, which the next start deletes: their signed
prune record is committed; reconciler.evidence.recovery). So the chain
stays verifiable: a gap is explained by a signed prune bundle, and only by
one (a tombstone alone is an `UnsignedPrune` problem). The listed digest is
the pruned bundle's Merkle leaf data, so the tree and its checkpoints still
verify without the file.

At most `MAX_PER_BUNDLE` bundles are listed in one prune bundle; a larger
backlog produces several prune bundles in one call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from reconciler.evidence.writer import EvidenceRequest, EvidenceWriter
from reconciler.store.database import Transaction
from reconciler.store.evidence_index import IndexRow, all_rows, mark_pruned, sequence_ranges
from specs.evidence import CHAIN_BREAK_CHECK, PRUNE_CHECK
from specs.orders import format_rfc3339
from specs.status import Outcome

if TYPE_CHECKING:
    from specs.config import AgentConfig

MAX_PER_BUNDLE = 1000


@dataclass(frozen=True)
class RetentionPolicy:
    """Guardrail 7: keep >= `keep_last` newest, nothing younger than `min_age_days`,
    and the newest success per check."""

    keep_last: int = 200
    min_age_days: int = 90

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> RetentionPolicy:
        return cls(keep_last=cfg.evidence_retention, min_age_days=cfg.prune_retention_days)


@dataclass
class PruneResult:
    pruned: list[int] = field(default_factory=list)  # sequences
    prune_bundles: list[str] = field(default_factory=list)  # bundle_ids written
    files_removed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "pruned_count": len(self.pruned),
            "pruned_ranges": sequence_ranges(self.pruned),
            "prune_bundles": self.prune_bundles,
            "files_removed": self.files_removed,
        }


def select_prunable(
    rows: list[IndexRow], now: datetime, keep_last: int, min_age_days: int
) -> list[IndexRow]:
    """The live rows the policy allows pruning, oldest first (pure; tested directly)."""
    live = sorted((r for r in rows if not r.pruned), key=lambda r: r.sequence)
    newest_success: dict[str, int] = {}
    for r in rows:  # tombstoned successes can't exist past the newest, but be exact
        if r.outcome == Outcome.success.value:
            newest_success[r.check] = max(newest_success.get(r.check, 0), r.sequence)
    protected_tail = {r.sequence for r in live[-keep_last:]} if keep_last > 0 else set()
    cutoff = format_rfc3339(now - timedelta(days=min_age_days))
    return [
        r
        for r in live
        if r.sequence not in protected_tail
        and r.created_at < cutoff  # fixed-width RFC 3339 UTC strings compare like times
        and newest_success.get(r.check) != r.sequence
        and r.check not in (PRUNE_CHECK, CHAIN_BREAK_CHECK)
    ]


@contextmanager
def _forget_on_failure(writer: EvidenceWriter) -> Iterator[None]:
    try:
        yield
    except BaseException:
        writer.forget_uncommitted()
        raise


def prune(writer: EvidenceWriter, policy: RetentionPolicy, now: datetime) -> PruneResult:
    """Apply the retention policy (guardrail 7) to the writer's chain."""
    result = PruneResult()
    # Decided once, from the chain as it is now: the prune bundles this call
    # appends must not push further bundles out of the protected newest N.
    allowed: set[int] | None = None
    while True:
        with writer._lock, _forget_on_failure(writer), writer.store.begin() as conn:
            rows = all_rows(conn)
            victims = select_prunable(rows, now, policy.keep_last, policy.min_age_days)
            if allowed is None:
                allowed = {r.sequence for r in victims}
            victims = [r for r in victims if r.sequence in allowed]
            if not victims:
                break
            batch = victims[:MAX_PER_BUNDLE]
            listing = [
                {
                    "sequence": r.sequence,
                    "bundle_id": r.bundle_id,
                    "digest": r.digest,
                    "check": r.check,
                    "outcome": r.outcome,
                    "created_at": r.created_at,
                }
                for r in batch
            ]
            seqs = [r.sequence for r in batch]
            pruned_at = format_rfc3339(now)

            def mark(
                conn: Transaction, bundle_id: str, seqs: list[int] = seqs, at: str = pruned_at
            ) -> None:
                mark_pruned(conn, seqs, at, bundle_id)

            [bundle_id] = writer.append(
                conn,
                [
                    EvidenceRequest(
                        check=PRUNE_CHECK,
                        outcome=Outcome.success,
                        pre_state={"live_bundles": sum(1 for r in rows if not r.pruned)},
                        post_state={
                            "policy": {
                                "evidence_retention": policy.keep_last,
                                "prune_retention_days": policy.min_age_days,
                            },
                            "pruned_count": len(batch),
                            "pruned_ranges": sequence_ranges(seqs),
                            "pruned": listing,
                        },
                    )
                ],
                extra=mark,
            )
        # Committed: the rows are tombstones now, so deleting files is safe.
        for r in batch:
            if writer.dir.unlink(r.file_name):
                result.files_removed += 1
        writer.dir.sync()
        result.pruned.extend(seqs)
        result.prune_bundles.append(bundle_id)
    return result


class Pruner:
    """Retention for one writer's chain: what the daemon's daily job, the
    `evidence prune` command and the NixOS timer run."""

    def __init__(self, writer: EvidenceWriter, policy: RetentionPolicy) -> None:
        self.writer = writer
        self.policy = policy

    def prune(self, now: datetime | None = None) -> PruneResult:
        return prune(self.writer, self.policy, now or self.writer.clock())
