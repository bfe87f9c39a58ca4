"""Last good signed baseline from the control plane, so a restart keeps using it.

A single row (id = 1). `rejected_etag` remembers the ETag of the last
baseline that was refused, so the same bad document is reported once, not on
every poll.
"""

from sqlalchemy import Connection, text


def upgrade(conn: Connection) -> None:
    conn.execute(
        text(
            """CREATE TABLE remote_baseline (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version INTEGER NOT NULL,
                envelope BLOB NOT NULL,
                etag TEXT,
                fetched_at REAL NOT NULL,
                rejected_etag TEXT,
                last_rejection TEXT
            )"""
        )
    )
