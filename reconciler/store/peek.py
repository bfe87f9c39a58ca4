"""A few read-only queries on the state database with the standard library's
sqlite3 only: what `compliance-agent status` and `describe` add to the
daemon's live answer (evidence queue, order wake-ups, condition history)
without importing SQLAlchemy or pydantic. Safe next to the running daemon
(opened `mode=ro`); every function returns None when the table or row is not
there, so a reader never fails the whole command for one missing part.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

# Shared with OutboxView.stats: one definition of the queue numbers operators see.
OUTBOX_STATS_SQL = (
    "SELECT"
    " COALESCE(SUM(state = 'queued'), 0),"
    " MIN(CASE WHEN state = 'queued' THEN created_at END),"
    " COALESCE(SUM(state = 'dead'), 0),"
    " COALESCE(SUM(state = 'delivered'), 0),"
    " COALESCE(SUM(attempts), 0),"
    " COALESCE(SUM(state = 'queued' AND attempts > 0), 0)"
    " FROM outbox"
)
HISTORY_SQL = (
    "SELECT type, status, reason, message, at, generation FROM condition_history"
    " WHERE kind = ? ORDER BY id DESC LIMIT ?"
)
HISTORY_KEYS = ("type", "status", "reason", "message", "at", "generation")


def open_readonly(path: Path) -> sqlite3.Connection | None:
    """The database read-only, or None when it is absent or this user cannot open it."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    except sqlite3.Error:
        return None
    return conn


def outbox_stats(conn: sqlite3.Connection, now: float) -> dict[str, Any] | None:
    try:
        row = conn.execute(OUTBOX_STATS_SQL).fetchone()
    except sqlite3.Error:  # an agent that never ran delivery has no outbox table
        return None
    oldest = 0.0 if row[1] is None else max(0.0, now - float(row[1]))
    return {"depth": int(row[0]), "oldest_age_seconds": oldest, "dead": int(row[2]),
            "delivered": int(row[3]), "attempts": int(row[4]), "retrying": int(row[5])}


def meta_value(conn: sqlite3.Connection, key: str) -> str | None:
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else str(row[0])


def condition_history(conn: sqlite3.Connection, kind: str,
                      limit: int) -> list[dict[str, Any]] | None:
    try:
        rows = conn.execute(HISTORY_SQL, (kind, limit)).fetchall()
    except sqlite3.Error:
        return None
    return [dict(zip(HISTORY_KEYS, r, strict=True)) for r in rows]
