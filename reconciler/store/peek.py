"""A few read-only queries on the state database with the standard library's
sqlite3 only: what `compliance-agent status` and `describe` add to the
daemon's live answer (evidence queue, order wake-ups, condition history)
without importing SQLAlchemy or pydantic. Safe next to the running daemon
(opened `mode=ro`); every function returns None when the table or row is not
there, so a reader never fails the whole command for one missing part.
"""

from __future__ import annotations

import json
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
LATEST_RUN_QUERY = (
    "SELECT started_at, finished_at, duration_sec, cpu_sec, summary FROM passes"
    " WHERE dry_run = 0 ORDER BY id DESC LIMIT 1"
)


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


def _utc_z(value: str | None) -> str | None:
    """Timestamps as pydantic's JSON mode writes them (UTC as `Z`), like the daemon's /status."""
    return value[:-6] + "Z" if value and value.endswith("+00:00") else value


def resource_statuses(conn: sqlite3.Connection) -> list[dict[str, Any]] | None:
    """Every resource's status as the JSON document `ResourceStatus` dumps to."""
    try:
        rows = conn.execute(
            "SELECT kind, generation, conditions_json, last_pass_at, last_outcome,"
            " observed_json, last_actions_json FROM resource_status ORDER BY kind"
        ).fetchall()
    except sqlite3.Error:
        return None
    return [{"kind": r[0], "generation": r[1] or "", "conditions": json.loads(r[2] or "[]"),
             "last_pass_at": _utc_z(r[3]), "last_outcome": r[4],
             "observed": json.loads(r[5]) if r[5] else None,
             "last_actions": json.loads(r[6] or "[]")} for r in rows]


def last_pass(conn: sqlite3.Connection) -> dict[str, Any] | None:
    try:
        row = conn.execute(LATEST_RUN_QUERY).fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    return {"started_at": row[0], "finished_at": row[1], "duration_sec": row[2],
            "cpu_sec": row[3], "summary": row[4]}
