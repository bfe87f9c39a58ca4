"""Merkle tree state and signed checkpoints of the evidence log.

`evidence_tree` (one row) holds the compact frontier of the tree over every
bundle ever written (the roots of its complete subtrees, 32 bytes each,
largest first) so a checkpoint costs O(log n). Existing chains start with an
empty frontier; the writer catches it up from the index on its next append.
`evidence_checkpoints` keeps every checkpoint the agent signed (C2SP signed
note text) and, once the control plane countersigned it, the cosigned note.
"""

from sqlalchemy import Connection, text

STATEMENTS = [
    """CREATE TABLE evidence_tree (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        size INTEGER NOT NULL,
        frontier BLOB NOT NULL
    )""",
    "INSERT INTO evidence_tree (id, size, frontier) VALUES (1, 0, x'')",
    """CREATE TABLE evidence_checkpoints (
        tree_size INTEGER PRIMARY KEY,
        root_hash BLOB NOT NULL,
        note TEXT NOT NULL,
        created_at TEXT NOT NULL,
        cosigned_note TEXT,
        cosigned_at TEXT,
        delivery_error TEXT
    )""",
]


def upgrade(conn: Connection) -> None:
    for stmt in STATEMENTS:
        conn.execute(text(stmt))
