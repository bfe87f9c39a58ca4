"""Admitted orders folded into desired state (triggers), and the order cursor."""

from sqlalchemy import Connection, text

STATEMENTS = [
    """CREATE TABLE order_triggers (
        order_id TEXT PRIMARY KEY,
        kind TEXT,
        action TEXT NOT NULL,
        params_json TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        admitted_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    )""",
    "CREATE INDEX order_triggers_expiry ON order_triggers (expires_at)",
]


def upgrade(conn: Connection) -> None:
    for stmt in STATEMENTS:
        conn.execute(text(stmt))
