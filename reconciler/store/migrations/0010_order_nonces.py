"""Seen order nonces (replay protection, guardrail 1).

A nonce is kept at least until its order can no longer be admitted
(`expires_at`, epoch seconds, already including the allowed clock skew);
admission prunes rows past that time.
"""

from sqlalchemy import Connection, text

STATEMENTS = [
    """CREATE TABLE order_nonces (
        nonce TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        admitted_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    "CREATE INDEX order_nonces_expires ON order_nonces (expires_at)",
]


def upgrade(conn: Connection) -> None:
    for stmt in STATEMENTS:
        conn.execute(text(stmt))
