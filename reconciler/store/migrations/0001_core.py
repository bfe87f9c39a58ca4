"""Core runtime tables: resource status, condition history, passes, action backoff."""

from sqlalchemy import Connection, text

STATEMENTS = [
    """CREATE TABLE resource_status (
        kind TEXT PRIMARY KEY,
        generation TEXT NOT NULL DEFAULT '',
        conditions_json TEXT NOT NULL DEFAULT '[]',
        last_pass_at TEXT,
        last_outcome TEXT,
        observed_json TEXT,
        last_actions_json TEXT NOT NULL DEFAULT '[]'
    )""",
    """CREATE TABLE condition_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        at TEXT NOT NULL,
        generation TEXT NOT NULL
    )""",
    "CREATE INDEX condition_history_kind ON condition_history (kind, id)",
    """CREATE TABLE passes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        duration_sec REAL NOT NULL,
        cpu_sec REAL NOT NULL,
        summary TEXT NOT NULL,
        dry_run INTEGER NOT NULL
    )""",
    """CREATE TABLE action_backoff (
        key TEXT PRIMARY KEY,
        attempts INTEGER NOT NULL,
        last_at TEXT NOT NULL,
        next_allowed_at TEXT NOT NULL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


def upgrade(conn: Connection) -> None:
    for stmt in STATEMENTS:
        conn.execute(text(stmt))
