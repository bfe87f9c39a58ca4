"""The store's repositories on a real SQLite file: small typed APIs over the
tables other wings used to write SQL for (meta, remote_baseline), the read-only
views the CLI uses next to a running daemon, and the commit hook."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.store.baselines import RemoteBaselineStore, StoredBaseline
from reconciler.store.database import Store, StoreError, after_commit, open_store
from reconciler.store.meta import ORDERS_CURSOR, MetaStore
from reconciler.store.outbox import Outbox, OutboxState, OutboxView
from reconciler.store.status import StatusStore, StatusView
from specs.status import ResourceStatus


@pytest.fixture
def db(tmp_path: Path) -> Path:
    open_store(tmp_path / "state.db").close()
    return tmp_path / "state.db"


def test_meta_values_survive_a_reopen(db: Path) -> None:
    store = open_store(db)
    meta = MetaStore(store)
    assert meta.get(ORDERS_CURSOR) is None
    meta.put(ORDERS_CURSOR, "c-1")
    meta.put(ORDERS_CURSOR, "c-2")  # replaces, never a second row
    store.close()
    ro = open_store(db, readonly=True)
    try:
        assert MetaStore(ro).get(ORDERS_CURSOR) == "c-2"
    finally:
        ro.close()


def test_remote_baseline_row_replace_and_rejection(db: Path) -> None:
    store = open_store(db)
    baselines = RemoteBaselineStore(store)
    assert baselines.load() is None
    baselines.note_rejection("e-bad", "no row yet: nothing to remember")
    assert baselines.load() is None

    baselines.replace(3, b'{"v":3}', "e3", fetched_at=100.0)
    baselines.note_rejection("e-bad", "BadSignature: " + "x" * 1000)
    assert baselines.load() == StoredBaseline(3, b'{"v":3}', "e3", "e-bad")
    with store.begin() as conn:  # operator text is bounded
        why = conn.exec_driver_sql("SELECT last_rejection FROM remote_baseline").scalar_one()
    assert len(why) == 500

    baselines.replace(4, b'{"v":4}', None, fetched_at=200.0)  # a good one clears the refusal
    assert baselines.load() == StoredBaseline(4, b'{"v":4}', None, None)
    store.close()


def test_after_commit_runs_only_for_committed_transactions(db: Path) -> None:
    store = open_store(db)
    seen: list[str] = []
    with store.begin() as tx:
        after_commit(tx, lambda: seen.append("kept"))
        assert seen == []  # not before the commit
    with pytest.raises(RuntimeError), store.begin() as tx:
        after_commit(tx, lambda: seen.append("lost"))
        raise RuntimeError("roll back")
    with store.begin() as tx:
        pass  # a later commit on a pooled connection must not fire the old hook
    assert seen == ["kept"]
    store.close()


def test_after_commit_runs_after_the_commit_not_before_it(db: Path) -> None:
    """The hook sees the committed data from another connection, and a COMMIT that
    fails (a deferred constraint) never runs it. SQLAlchemy's own "commit" event
    fires before the COMMIT executes, which is what this hook must not do."""
    store = open_store(db)
    with store.begin() as tx:
        tx.exec_driver_sql("CREATE TABLE t (v INTEGER)")
    visible: list[int] = []

    def count_from_another_connection() -> None:
        with sqlite3.connect(db) as other:
            visible.append(other.execute("SELECT count(*) FROM t").fetchone()[0])

    with store.begin() as tx:
        tx.exec_driver_sql("INSERT INTO t VALUES (1)")
        after_commit(tx, count_from_another_connection)
    assert visible == [1]
    ran: list[str] = []
    with pytest.raises(Exception, match="FOREIGN KEY"), store.begin() as tx:
        tx.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS p (id INTEGER PRIMARY KEY)")
        tx.exec_driver_sql("CREATE TEMP TABLE IF NOT EXISTS c (pid INTEGER REFERENCES p(id)"
                           " DEFERRABLE INITIALLY DEFERRED)")
        tx.exec_driver_sql("INSERT INTO c VALUES (42)")
        after_commit(tx, lambda: ran.append("announced"))
    assert ran == []
    store.close()


def test_cli_views_read_a_read_only_store(db: Path) -> None:
    store = open_store(db)
    outbox = Outbox(store)
    with store.begin() as tx:
        outbox.enqueue(tx, "b-1", b"{}")
    StatusStore(store).save(ResourceStatus(kind="time", last_pass_at=datetime.now(UTC)), [])
    store.close()

    ro = open_store(db, readonly=True)
    try:
        view = OutboxView(ro)
        assert view.stats().depth == 1
        assert [e.bundle_id for e in view.entries(OutboxState.queued)] == ["b-1"]
        assert [s.kind for s in StatusView(ro).load_all()] == ["time"]
        with pytest.raises(StoreError, match="writable"):
            Outbox(ro)
    finally:
        ro.close()


def test_outbox_view_on_a_database_without_the_table_is_a_store_error(tmp_path: Path) -> None:
    bare = tmp_path / "bare.db"
    with sqlite3.connect(bare) as conn:
        conn.execute("CREATE TABLE schema_migrations (id TEXT PRIMARY KEY, applied_at TEXT)")
    ro = Store(bare, readonly=True)
    try:
        with pytest.raises(StoreError, match="cannot read the outbox"):
            OutboxView(ro).stats()
    finally:
        ro.close()
