"""Seen order nonces (table order_nonces, migration 0010): replay protection
for order admission (reconciler.trust.admission)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import text

from reconciler.store.database import Store

# Expired nonces are deleted at most this often: a DELETE per admission is wasted work.
NONCE_PRUNE_INTERVAL = timedelta(seconds=60)


# Built once: constructing text() per call costs more than the query.
_SEEN_NONCE_SQL = "SELECT 1 FROM order_nonces WHERE nonce = ?"
_INSERT_NONCE = text(
    "INSERT INTO order_nonces (nonce, order_id, admitted_at, expires_at)"
    " VALUES (:n, :o, :a, :e) ON CONFLICT (nonce) DO NOTHING"
)
_PRUNE_NONCES = text("DELETE FROM order_nonces WHERE expires_at < :now")


class NonceStore:
    """Seen nonces in the state DB (table order_nonces, migration 0010).

    `readonly=True` (the CLI's `order verify`) checks but never writes; with a
    None store it behaves as an empty store, so verifying works before the
    agent has ever run.
    """

    def __init__(self, store: Store | None, readonly: bool = False) -> None:
        self.store = store
        self.readonly = readonly or store is None or store.readonly
        self._last_prune: datetime | None = None
        self._local = threading.local()

    def _reader(self) -> sqlite3.Connection:
        # A per-thread read-only autocommit connection: a SQLAlchemy
        # transaction would take the write lock (BEGIN IMMEDIATE) and cost a
        # commit per order, and a pool checkout costs more than the SELECT.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            assert self.store is not None
            conn = sqlite3.connect(
                f"file:{self.store.path}?mode=ro", uri=True, isolation_level=None
            )
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
        return conn

    def seen(self, nonce: str) -> bool:
        if self.store is None:
            return False
        try:
            return self._reader().execute(_SEEN_NONCE_SQL, (nonce,)).fetchone() is not None
        except sqlite3.OperationalError as e:
            # A read-only look at a database the daemon has not migrated yet:
            # no nonce was ever recorded there.
            if self.readonly and "no such table" in str(e):
                return False
            raise

    def close(self) -> None:
        """Close this thread's read connection (others close when their thread's
        NonceStore is garbage collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def record(self, nonce: str, order_id: str, now: datetime, keep_until: datetime) -> bool:
        """Atomically record `nonce`; False if it was already there (a replay).

        In read-only mode nothing is written and the answer is `not seen()`.
        """
        return self.record_many([(nonce, order_id, keep_until)], now)[0]

    def record_many(
        self, entries: Sequence[tuple[str, str, datetime]], now: datetime
    ) -> list[bool]:
        """`record` for (nonce, order_id, keep_until) entries in ONE transaction.

        A nonce repeated within `entries` counts as a replay from its second use.
        """
        if self.readonly or self.store is None:
            fresh: set[str] = set()
            out = []
            for nonce, _, _ in entries:
                out.append(nonce not in fresh and not self.seen(nonce))
                fresh.add(nonce)
            return out
        with self.store.begin() as conn:
            out = [
                bool(
                    conn.execute(
                        _INSERT_NONCE,
                        {"n": n, "o": o, "a": now.timestamp(), "e": keep.timestamp()},
                    ).rowcount
                )
                for n, o, keep in entries
            ]
            if self._last_prune is None or now - self._last_prune >= NONCE_PRUNE_INTERVAL:
                conn.execute(_PRUNE_NONCES, {"now": now.timestamp()})
                self._last_prune = now
        return out
