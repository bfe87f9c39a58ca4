"""Durable outbox of evidence bundles awaiting a control-plane receipt (guardrail 9).

Contract:

* `enqueue` runs inside the caller's transaction: the bundle is stored in the
  evidence index and queued for delivery atomically, or neither happens. A
  crash at any point therefore loses nothing (SQLite WAL + synchronous=FULL).
* Delivery is at-least-once from the agent's side; the receiver dedupes by
  `bundle_id` (sent as `Idempotency-Key`), which makes it exactly-once at
  the receiver. There is no "in flight" state on purpose: a bundle whose
  delivery was interrupted is simply still `queued` and is sent again.
* A row is never dropped because delivery failed: a permanent rejection moves
  it to `dead`, visible in `compliance-agent queue` and re-queueable.
* Queued bundles leave in enqueue order, which is chain order (the writer
  enqueues in the transaction that appends the bundle), so the control plane
  never holds a bundle whose predecessor is still queued here.

All times are UNIX epoch seconds taken from the injected (wall) clock, and are
records, not a schedule: the deliverer schedules on the monotonic clock.
`next_attempt_at` is what operators see and the hint a restarted deliverer
resumes from (clamped, so a wall-clock step cannot park the queue).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from reconciler.store.database import Store, StoreError, Transaction
from reconciler.store.peek import OUTBOX_STATS_SQL

Clock = Callable[[], datetime]

# last_error is operator-facing text; keep rows small even if a server sends a novel.
MAX_ERROR_CHARS = 500


_ENQUEUE_SQL = (
    "INSERT INTO outbox (bundle_id, envelope, created_at, state, next_attempt_at)"
    " VALUES (?, ?, ?, 'queued', ?) ON CONFLICT (bundle_id) DO NOTHING"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class OutboxState(StrEnum):
    queued = "queued"
    delivered = "delivered"
    dead = "dead"


@dataclass(frozen=True)
class OutboxItem:
    """A queued bundle handed to the deliverer."""

    bundle_id: str
    envelope: bytes
    attempts: int
    created_at: float


@dataclass(frozen=True)
class OutboxEntry:
    """A row as operators see it (no envelope bytes)."""

    bundle_id: str
    state: OutboxState
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None
    receipt_id: str | None
    delivered_at: float | None


@dataclass(frozen=True)
class OutboxStats:
    depth: int  # queued, not yet delivered
    oldest_age_seconds: float  # age of the oldest queued bundle; 0 when empty
    dead: int
    delivered: int
    attempts: int  # delivery attempts summed over all rows
    retrying: int  # queued rows that have failed at least once


@dataclass(frozen=True)
class Retry:
    bundle_id: str
    error: str
    next_at: float


def _clip(error: str) -> str:
    return error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"


class OutboxView:
    """Read-only access to the `outbox` table (migration 0020): what operators
    see (`compliance-agent queue`, `status`). Works on a read-only store, so it is
    safe next to the running daemon."""

    def __init__(self, store: Store, clock: Clock = utc_now) -> None:
        self.store = store
        self.clock = clock

    def _now(self) -> float:
        return self.clock().timestamp()

    def entries(self, state: OutboxState | None = None, limit: int = 100) -> list[OutboxEntry]:
        """Rows for display, oldest first, without envelopes."""
        sql = (
            "SELECT bundle_id, state, created_at, attempts, next_attempt_at, last_error,"
            " receipt_id, delivered_at FROM outbox"
        )
        params: dict[str, object] = {"limit": limit}
        if state is not None:
            sql += " WHERE state = :state"
            params["state"] = state.value
        sql += " ORDER BY rowid LIMIT :limit"
        try:
            with self.store.begin() as conn:
                rows = conn.execute(text(sql), params).all()
        except SQLAlchemyError as e:
            raise self._unreadable(e) from e
        return [
            OutboxEntry(
                bundle_id=r[0],
                state=OutboxState(r[1]),
                created_at=float(r[2]),
                attempts=int(r[3]),
                next_attempt_at=float(r[4]),
                last_error=r[5],
                receipt_id=r[6],
                delivered_at=None if r[7] is None else float(r[7]),
            )
            for r in rows
        ]

    def stats(self) -> OutboxStats:
        try:
            with self.store.begin() as conn:
                row = conn.execute(text(OUTBOX_STATS_SQL)).one()
        except SQLAlchemyError as e:
            raise self._unreadable(e) from e
        oldest = 0.0 if row[1] is None else max(0.0, self._now() - float(row[1]))
        return OutboxStats(
            depth=int(row[0]),
            oldest_age_seconds=oldest,
            dead=int(row[2]),
            delivered=int(row[3]),
            attempts=int(row[4]),
            retrying=int(row[5]),
        )

    def _unreadable(self, e: SQLAlchemyError) -> StoreError:
        # e.g. a database of an agent that never ran delivery has no outbox table yet
        return StoreError(f"{self.store.path}: cannot read the outbox: {type(e).__name__}")


class Outbox(OutboxView):
    """The `outbox` table behind a small typed API: the producer (evidence
    writer hook), the deliverer and the operator's re-queue."""

    def __init__(self, store: Store, clock: Clock = utc_now) -> None:
        if store.readonly:
            raise StoreError(f"{store.path}: the outbox needs a writable store (use OutboxView)")
        super().__init__(store, clock)

    # -- producer side -------------------------------------------------------

    def enqueue(self, conn: Transaction, bundle_id: str, envelope: bytes) -> bool:
        """Queue `envelope` in the caller's transaction. Idempotent on `bundle_id`.

        Returns False when the bundle was already known (queued, delivered or
        dead); the existing row is left untouched.
        """
        now = self._now()
        # Driver-level SQL: this runs once per evidence bundle inside the writer's
        # transaction, and skipping SQLAlchemy's statement layer halves its cost.
        result = conn.exec_driver_sql(_ENQUEUE_SQL, (bundle_id, bytes(envelope), now, now))
        return bool(result.rowcount)

    def on_stored(self, conn: Transaction, bundle_id: str, envelope: bytes) -> None:
        """Hook for `EvidenceWriter(on_stored=[outbox.on_stored])`."""
        self.enqueue(conn, bundle_id, envelope)

    # -- deliverer side ------------------------------------------------------

    def claim_batch(self, limit: int) -> list[OutboxItem]:
        """The head of the queue: up to `limit` queued bundles in enqueue order.

        Whether it is time to send is the deliverer's decision (monotonic
        clock), never a wall-clock comparison here. Nothing is locked or
        marked: a single deliverer owns the queue, and a crash before the
        outcome is recorded just means the bundle is sent again.
        """
        with self.store.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT bundle_id, envelope, attempts, created_at FROM outbox"
                    " WHERE state = 'queued' ORDER BY rowid LIMIT :limit"
                ),
                {"limit": limit},
            ).all()
        return [OutboxItem(r[0], bytes(r[1]), int(r[2]), float(r[3])) for r in rows]

    def head_schedule(self) -> tuple[int, float] | None:
        """(attempts, next_attempt_at) of the first queued bundle, or None when empty:
        where a restarted deliverer resumes its backoff."""
        with self.store.begin() as conn:
            row = conn.execute(
                text(
                    "SELECT attempts, next_attempt_at FROM outbox WHERE state = 'queued'"
                    " ORDER BY rowid LIMIT 1"
                )
            ).first()
        return None if row is None else (int(row[0]), float(row[1]))

    def settle(
        self,
        delivered: Iterable[tuple[str, str]] = (),
        retry: Iterable[Retry] = (),
        dead: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Record the outcomes of one delivery round in a single transaction.

        Only `queued` rows change: a bundle an operator re-queued or that is
        already delivered is never regressed by a late outcome. A delivery
        makes every queued bundle due now: the control plane is reachable again.
        """
        now = self._now()
        d = [{"id": b, "rid": r, "now": now} for b, r in delivered]
        t = [{"id": r.bundle_id, "err": _clip(r.error), "next": r.next_at} for r in retry]
        x = [{"id": b, "err": _clip(e)} for b, e in dead]
        with self.store.begin() as conn:
            if d:
                conn.execute(
                    text(
                        "UPDATE outbox SET state = 'delivered', receipt_id = :rid,"
                        " delivered_at = :now, attempts = attempts + 1, last_error = NULL,"
                        # The evidence store keeps the bundle; the outbox keeps the receipt.
                        " envelope = x'' WHERE bundle_id = :id AND state = 'queued'"
                    ),
                    d,
                )
                conn.execute(
                    text(
                        "UPDATE outbox SET next_attempt_at = :now"
                        " WHERE state = 'queued' AND next_attempt_at > :now"
                    ),
                    {"now": now},
                )
            if t:
                conn.execute(
                    text(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = :err,"
                        " next_attempt_at = :next WHERE bundle_id = :id AND state = 'queued'"
                    ),
                    t,
                )
            if x:
                conn.execute(
                    text(
                        "UPDATE outbox SET state = 'dead', attempts = attempts + 1,"
                        " last_error = :err WHERE bundle_id = :id AND state = 'queued'"
                    ),
                    x,
                )

    # -- operator side -------------------------------------------------------

    def retry_dead(self, bundle_ids: Sequence[str] | None = None) -> int:
        """Re-queue dead letters (all of them when `bundle_ids` is None); due now.

        Returns how many rows moved back to `queued`. Unknown or non-dead ids
        are ignored (the CLI reports the difference).
        """
        now = self._now()
        with self.store.begin() as conn:
            if bundle_ids is None:
                res = conn.execute(
                    text(
                        "UPDATE outbox SET state = 'queued', next_attempt_at = :now"
                        " WHERE state = 'dead'"
                    ),
                    {"now": now},
                )
                return int(res.rowcount)
            count = 0
            for bid in dict.fromkeys(bundle_ids):
                res = conn.execute(
                    text(
                        "UPDATE outbox SET state = 'queued', next_attempt_at = :now"
                        " WHERE state = 'dead' AND bundle_id = :id"
                    ),
                    {"now": now, "id": bid},
                )
                count += int(res.rowcount)
            return count

    def prune_delivered(self, older_than_seconds: float) -> int:
        """Drop delivered rows (receipts) older than the given age. The evidence
        store keeps the bundles themselves; this only bounds the outbox. A
        delivered row's envelope is already emptied when it is marked."""
        cutoff = self._now() - older_than_seconds
        with self.store.begin() as conn:
            res = conn.execute(
                text("DELETE FROM outbox WHERE state = 'delivered' AND delivered_at < :cutoff"),
                {"cutoff": cutoff},
            )
        return int(res.rowcount)
