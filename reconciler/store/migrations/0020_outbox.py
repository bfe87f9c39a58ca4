"""Outbox: one row per evidence bundle until the control plane has a receipt.

Times are UNIX epoch seconds (REAL) so "due" is a cheap indexed comparison.
Rows are never deleted on failure: a permanent rejection moves a row to
`dead`, where an operator can see it and re-queue it (guardrail 9).
"""

from sqlalchemy import Connection, text

STATEMENTS = [
    """CREATE TABLE outbox (
        bundle_id TEXT PRIMARY KEY,
        envelope BLOB NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'queued'
            CHECK (state IN ('queued', 'delivered', 'dead')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        receipt_id TEXT,
        delivered_at REAL
    )""",
    # Delivery order follows insertion order (rowid) among due rows.
    "CREATE INDEX outbox_due ON outbox (state, next_attempt_at)",
]


def upgrade(conn: Connection) -> None:
    for stmt in STATEMENTS:
        conn.execute(text(stmt))
