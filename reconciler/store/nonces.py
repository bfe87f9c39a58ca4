"""Seen order nonces (table order_nonces, migrations 0010 and 0015): replay
protection for order admission (reconciler.trust.admission).

Each row keeps the nonce, the order it admitted and the SHA-256 of that order's
signed payload, so a second sight of a nonce is classified:

    same_order  the very order admitted before (a page read again after a
                crash): nothing to do, and nothing to report
    replay      another payload reusing the nonce: a replay attack
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import text

from reconciler.store.database import Store, StoreError, Transaction

# Expired nonces are deleted at most this often (monotonic seconds): a DELETE
# per admission is wasted work.
NONCE_PRUNE_INTERVAL = 60.0


class NonceUse(StrEnum):
    fresh = "fresh"
    same_order = "same_order"
    replay = "replay"


@dataclass(frozen=True)
class NonceClaim:
    """One admissible order's nonce, to be recorded."""

    nonce: str
    order_id: str
    payload_sha256: str
    keep_until: datetime


# Built once: constructing text() per call costs more than the query.
_LOOKUP_SQL = "SELECT order_id, payload_sha256 FROM order_nonces WHERE nonce = ?"
_LOOKUP = text("SELECT order_id, payload_sha256 FROM order_nonces WHERE nonce = :n")
_INSERT_NONCE = text(
    "INSERT INTO order_nonces (nonce, order_id, admitted_at, expires_at, payload_sha256)"
    " VALUES (:n, :o, :a, :e, :d) ON CONFLICT (nonce) DO NOTHING"
)
_PRUNE_NONCES = text("DELETE FROM order_nonces WHERE expires_at < :now")


def _classify(row: Sequence[object], claim_order_id: str, claim_digest: str) -> NonceUse:
    order_id, digest = row[0], row[1]
    if digest is None:  # recorded before payload digests were kept
        return NonceUse.same_order if order_id == claim_order_id else NonceUse.replay
    return NonceUse.same_order if digest == claim_digest else NonceUse.replay


class NonceStore:
    """Seen nonces in the state DB.

    `readonly=True` (the CLI's `order verify`) checks but never writes; with a
    None store it behaves as an empty store, so verifying works before the
    agent has ever run.
    """

    def __init__(
        self,
        store: Store | None,
        readonly: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.readonly = readonly or store is None or store.readonly
        self._monotonic = monotonic
        self._last_prune: float | None = None
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

    def lookup(self, nonce: str, order_id: str, payload_sha256: str) -> NonceUse:
        """How this nonce was used before, as seen by a fresh read (no lock taken)."""
        if self.store is None:
            return NonceUse.fresh
        try:
            row = self._reader().execute(_LOOKUP_SQL, (nonce,)).fetchone()
        except sqlite3.OperationalError as e:
            # A read-only look at a database the daemon has not migrated yet:
            # no nonce was ever recorded there, or none with a payload digest.
            if not self.readonly:
                raise
            if "no such table" in str(e):
                return NonceUse.fresh
            if "no such column" not in str(e):
                raise
            row = self._reader().execute(
                "SELECT order_id, NULL FROM order_nonces WHERE nonce = ?", (nonce,)
            ).fetchone()
        return NonceUse.fresh if row is None else _classify(row, order_id, payload_sha256)

    def close(self) -> None:
        """Close this thread's read connection (others close when their thread's
        NonceStore is garbage collected)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def claim(self, tx: Transaction, claim: NonceClaim, now: datetime) -> NonceUse:
        """Record `claim` inside the caller's write transaction.

        `fresh`: recorded now, and it commits or rolls back with whatever else
        the caller writes (the order's trigger and evidence). Otherwise nothing
        is written and the answer says whether this was the same order again.
        """
        if self.readonly:
            raise StoreError("claiming an order nonce needs a writable state database")
        inserted = tx.execute(
            _INSERT_NONCE,
            {"n": claim.nonce, "o": claim.order_id, "a": now.timestamp(),
             "e": claim.keep_until.timestamp(), "d": claim.payload_sha256},
        ).rowcount
        self._maybe_prune(tx, now)
        if inserted:
            return NonceUse.fresh
        row = tx.execute(_LOOKUP, {"n": claim.nonce}).one()
        return _classify(tuple(row), claim.order_id, claim.payload_sha256)

    def record_many(self, claims: Sequence[NonceClaim], now: datetime) -> list[NonceUse]:
        """`claim` for several orders in ONE transaction of its own.

        A nonce repeated within `claims` is judged against its first use. In
        read-only mode nothing is written and each answer is what `claim`
        would say.
        """
        if self.readonly or self.store is None:
            first: dict[str, tuple[str, str]] = {}
            out = []
            for c in claims:
                if c.nonce in first:
                    out.append(_classify(first[c.nonce], c.order_id, c.payload_sha256))
                    continue
                use = self.lookup(c.nonce, c.order_id, c.payload_sha256)
                if use is NonceUse.fresh:
                    first[c.nonce] = (c.order_id, c.payload_sha256)
                out.append(use)
            return out
        with self.store.begin() as tx:
            return [self.claim(tx, c, now) for c in claims]

    def _maybe_prune(self, tx: Transaction, now: datetime) -> None:
        # Scheduled on the monotonic clock; the rows' expiry is wall-clock time
        # because it compares with the order's own signed issued_at.
        mono = self._monotonic()
        if self._last_prune is not None and mono - self._last_prune < NONCE_PRUNE_INTERVAL:
            return
        tx.execute(_PRUNE_NONCES, {"now": now.timestamp()})
        self._last_prune = mono
