"""The state store: one SQLite file in WAL mode, reached through SQLAlchemy 2.

Durability settings are deliberate: `journal_mode=WAL` lets the CLI read
while the daemon writes; `synchronous=FULL` makes a committed transaction
survive a power cut (the outbox depends on it, guardrail 9).

Schema changes are ordered migrations (reconciler/store/migrations/NNNN_name.py),
each applied once inside its own transaction and recorded in
`schema_migrations`, like Rails/Alembic revision tables. Migrations are
history: never edit a shipped one, add a new one.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text

from reconciler.store import migrations as migrations_pkg
from specs.errors import ComplianceAgentError

# An open transaction of the state database, as repositories receive it when a
# caller makes several writes atomic (e.g. the evidence index row and its outbox
# entry). Outside reconciler.store it is opaque: only handed back to the store.
Transaction = Connection


log = logging.getLogger(__name__)


class StoreError(ComplianceAgentError):
    """The state database cannot be opened, migrated or read."""


_AFTER_COMMIT = "compliance_agent.after_commit"


def after_commit(tx: Transaction, on_commit: Callable[[], None]) -> None:
    """Run `on_commit` once `tx` has committed (`Store.begin` runs it after the
    database's COMMIT returned); never if it rolls back or the commit fails.

    For side effects that must not announce what did not happen (a copy of an
    evidence bundle sent to a reseller's tools, an evidence file published
    under its final name). SQLAlchemy's own "commit" event fires before the
    COMMIT is executed, so it cannot be used for this.
    """
    tx.info.setdefault(_AFTER_COMMIT, []).append(on_commit)


def _run_after_commit(conn: Connection, callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # the commit stands; one failing callback must not hide the others
            log.exception("after-commit callback failed")


@dataclass(frozen=True)
class Migration:
    id: str  # e.g. "0001_core"; applied in lexical order
    upgrade: Callable[[Connection], None]


def discover_migrations() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(migrations_pkg.__path__):
        if not info.name[:4].isdigit():
            continue
        mod = importlib.import_module(f"{migrations_pkg.__name__}.{info.name}")
        found.append(Migration(id=info.name, upgrade=mod.upgrade))
    return sorted(found, key=lambda m: m.id)


def _sqlite_pragmas(readonly: bool) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's implicit transactions fight SQLAlchemy's; let SQLAlchemy own BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=5000")
        cur.execute("PRAGMA foreign_keys=ON")
        if not readonly:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    return on_connect


def _begin_immediate(conn: Any) -> None:
    # Writers take the lock up front so two writers never deadlock on upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """Owns the engine; hands out transactions. Thread-safe (SQLAlchemy pool)."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly:
            if not path.exists():
                raise StoreError(
                    f"{path}: no state database yet (has the agent run? check stateDirectory)"
                )
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            url = f"sqlite:///{path}"
        self.engine: Engine = create_engine(url, pool_pre_ping=False)
        event.listen(self.engine, "connect", _sqlite_pragmas(readonly))
        if not readonly:
            event.listen(self.engine, "begin", _begin_immediate)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction; committed on normal exit, rolled back on exception."""
        with self.engine.connect() as conn:
            if self.readonly:
                yield conn
                return
            try:
                with conn.begin():
                    yield conn
            except BaseException:
                conn.info.pop(_AFTER_COMMIT, None)
                raise
            _run_after_commit(conn, conn.info.pop(_AFTER_COMMIT, []))

    def migrate(self) -> list[str]:
        """Apply pending migrations; returns the ids applied now."""
        if self.readonly:
            raise StoreError("cannot migrate a read-only store")
        applied_now: list[str] = []
        with self.begin() as conn:
            conn.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
                )
            )
        for m in discover_migrations():
            with self.begin() as conn:
                done = conn.execute(
                    text("SELECT 1 FROM schema_migrations WHERE id = :id"), {"id": m.id}
                ).first()
                if done:
                    continue
                m.upgrade(conn)
                conn.execute(
                    text("INSERT INTO schema_migrations (id, applied_at) VALUES (:id, :at)"),
                    {"id": m.id, "at": datetime.now(UTC).isoformat()},
                )
                applied_now.append(m.id)
        return applied_now

    def applied_migrations(self) -> list[str]:
        with self.begin() as conn:
            rows = conn.execute(text("SELECT id FROM schema_migrations ORDER BY id")).all()
        return [r[0] for r in rows]

    def close(self) -> None:
        self.engine.dispose()


def open_store(path: Path, readonly: bool = False) -> Store:
    """Open (and, for writers, migrate) the state database at `path`."""
    try:
        store = Store(path, readonly=readonly)
        if not readonly:
            store.migrate()
        else:
            store.applied_migrations()  # fail early on a foreign or corrupt file
        return store
    except StoreError:
        raise
    except Exception as e:  # sqlite3/SQLAlchemy errors: say where and what
        raise StoreError(f"{path}: cannot open state database: {e}") from e
