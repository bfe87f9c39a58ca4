"""Outbox state machine on a real SQLite file (WAL), with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from reconciler.store.database import Store, open_store
from reconciler.store.outbox import Outbox, OutboxState, Retry


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "state.db")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(store: Store, clock: FakeClock) -> Outbox:
    return Outbox(store, clock)


def test_pragmas_are_durable(store: Store) -> None:
    with store.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_enqueue_is_idempotent_and_in_callers_transaction(outbox: Outbox, store: Store) -> None:
    with store.begin() as conn:
        assert outbox.enqueue(conn, "b1", b"{}") is True
        assert outbox.enqueue(conn, "b1", b"{other}") is False
    # A rolled-back producer transaction leaves nothing queued.
    with pytest.raises(RuntimeError), store.begin() as conn:
        outbox.enqueue(conn, "b2", b"{}")
        raise RuntimeError("evidence write failed")
    items = outbox.claim_batch(10)
    assert [(i.bundle_id, i.envelope) for i in items] == [("b1", b"{}")]


def test_claim_is_the_head_in_order_whatever_the_retry_time(
    outbox: Outbox, store: Store, clock: FakeClock
) -> None:
    with store.begin() as conn:
        for i in range(5):
            outbox.enqueue(conn, f"b{i}", b"x")
    assert [i.bundle_id for i in outbox.claim_batch(3)] == ["b0", "b1", "b2"]
    assert outbox.head_schedule() == (0, clock().timestamp())
    # A retry time (even one written by a clock 3 days ahead) never lets later
    # bundles overtake: when to send is the deliverer's (monotonic) decision.
    outbox.settle(retry=[Retry("b0", "503 Service Unavailable", clock().timestamp() + 3 * 86400)])
    due = outbox.claim_batch(10)
    assert [i.bundle_id for i in due] == ["b0", "b1", "b2", "b3", "b4"]
    assert due[0].attempts == 1
    assert outbox.head_schedule() == (1, clock().timestamp() + 3 * 86400)
    # A delivery makes every queued bundle due now (the control plane is back).
    outbox.settle(delivered=[("b1", "r1")])
    assert outbox.head_schedule() == (1, clock().timestamp())


def test_delivered_dead_retry_and_stats(outbox: Outbox, store: Store, clock: FakeClock) -> None:
    with store.begin() as conn:
        for i in range(4):
            outbox.enqueue(conn, f"b{i}", b"x")
    clock.advance(10)
    outbox.settle(
        delivered=[("b0", "r0")],
        retry=[Retry("b1", "timeout", clock().timestamp() + 5)],
        dead=[("b2", "422 bad signature")],
    )
    s = outbox.stats()
    assert (s.depth, s.dead, s.delivered, s.attempts, s.retrying) == (2, 1, 1, 3, 1)
    assert s.oldest_age_seconds == pytest.approx(10)
    dead = outbox.entries(OutboxState.dead)
    assert [(e.bundle_id, e.last_error) for e in dead] == [("b2", "422 bad signature")]
    # A late outcome never regresses a delivered row.
    outbox.settle(dead=[("b0", "late")])
    assert outbox.entries(OutboxState.delivered)[0].receipt_id == "r0"
    # Dead letters are re-queueable, individually or all, and due at once.
    assert outbox.retry_dead(["b2", "nope", "b0"]) == 1
    assert "b2" in [i.bundle_id for i in outbox.claim_batch(10)]
    outbox.settle(dead=[("b2", "again")])
    outbox.settle(dead=[("b3", "also")])
    assert outbox.retry_dead(None) == 2
    assert outbox.stats().dead == 0


def test_error_text_is_clipped(outbox: Outbox, store: Store) -> None:
    with store.begin() as conn:
        outbox.enqueue(conn, "b", b"x")
    outbox.settle(dead=[("b", "E" * 10_000)])
    (entry,) = outbox.entries()
    assert entry.last_error is not None and len(entry.last_error) <= 500


def test_prune_delivered_keeps_queued_and_dead(
    outbox: Outbox, store: Store, clock: FakeClock
) -> None:
    with store.begin() as conn:
        for i in range(3):
            outbox.enqueue(conn, f"b{i}", b"x")
    outbox.settle(delivered=[("b0", "r")], dead=[("b1", "e")])
    clock.advance(100)
    assert outbox.prune_delivered(50) == 1
    with store.begin() as conn:
        left = conn.execute(text("SELECT bundle_id FROM outbox ORDER BY bundle_id")).scalars()
        assert list(left) == ["b1", "b2"]


def test_on_stored_hook_signature(outbox: Outbox, store: Store) -> None:
    with store.begin() as conn:
        outbox.on_stored(conn, "h1", b"env")
    assert outbox.stats().depth == 1


def test_delivered_row_keeps_receipt_not_envelope(outbox: Outbox, store: Store) -> None:
    with store.begin() as conn:
        outbox.enqueue(conn, "b", b"x" * 5000)
    outbox.settle(delivered=[("b", "r")])
    with store.begin() as conn:
        env, rid = conn.execute(text("SELECT envelope, receipt_id FROM outbox")).one()
    assert (bytes(env), rid) == (b"", "r")
