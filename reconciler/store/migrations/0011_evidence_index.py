"""Index of signed evidence bundles: the authoritative chain head and tombstones.

One row per bundle ever written. `sequence` is gapless from 1; `digest` is
the SHA-256 of the envelope file's exact bytes and `prev_digest` the digest of
the row before. Pruning deletes the file but keeps the row as a tombstone
(`pruned_at`, `pruned_by` = bundle_id of the prune evidence that lists it),
so `evidence verify` can explain every gap.
"""

from sqlalchemy import Connection, text

STATEMENTS = [
    """CREATE TABLE evidence_bundles (
        bundle_id TEXT PRIMARY KEY,
        sequence INTEGER NOT NULL UNIQUE,
        check_name TEXT NOT NULL,
        outcome TEXT NOT NULL,
        created_at TEXT NOT NULL,
        digest TEXT NOT NULL,
        prev_digest TEXT,
        file_name TEXT NOT NULL,
        order_id TEXT,
        pruned_at TEXT,
        pruned_by TEXT
    )""",
    "CREATE INDEX evidence_bundles_check ON evidence_bundles (check_name, outcome, sequence)",
    "CREATE INDEX evidence_bundles_created ON evidence_bundles (created_at)",
]


def upgrade(conn: Connection) -> None:
    for stmt in STATEMENTS:
        conn.execute(text(stmt))
