"""SQL of the evidence log's Merkle tree state and checkpoints (migration 0030).

Callers pass a connection inside their own transaction: the writer updates
the frontier in the same transaction as the index rows it appends, so the
tree can never disagree with a committed index.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class CheckpointRow:
    tree_size: int
    root_hash: bytes
    note: str
    created_at: str
    cosigned_note: str | None
    cosigned_at: str | None
    delivery_error: str | None


_CP_COLUMNS = "tree_size, root_hash, note, created_at, cosigned_note, cosigned_at, delivery_error"
_GET_TREE = text("SELECT size, frontier FROM evidence_tree WHERE id = 1")
_PUT_TREE = text(
    "INSERT INTO evidence_tree (id, size, frontier) VALUES (1, :size, :frontier)"
    " ON CONFLICT(id) DO UPDATE SET size = excluded.size, frontier = excluded.frontier"
)


def _cp(r: Any) -> CheckpointRow:
    return CheckpointRow(int(r[0]), bytes(r[1]), r[2], r[3], r[4], r[5], r[6])


def tree_state(conn: Connection) -> tuple[int, bytes] | None:
    """(size, frontier blob), or None when the table has no row (tampered)."""
    r = conn.execute(_GET_TREE).first()
    return None if r is None else (int(r[0]), bytes(r[1]))


def save_tree_state(conn: Connection, size: int, frontier: bytes) -> None:
    conn.execute(_PUT_TREE, {"size": size, "frontier": frontier})


def digests_from(conn: Connection, first_sequence: int) -> Iterator[tuple[int, str]]:
    """(sequence, envelope digest) of every index row from `first_sequence` on, in order."""
    rs = conn.execute(
        text("SELECT sequence, digest FROM evidence_bundles WHERE sequence >= :s"
             " ORDER BY sequence"),
        {"s": first_sequence},
    )
    for r in rs:
        yield int(r[0]), str(r[1])


def insert_checkpoint(conn: Connection, tree_size: int, root_hash: bytes, note: str,
                      created_at: str) -> None:
    conn.execute(
        text("INSERT INTO evidence_checkpoints (tree_size, root_hash, note, created_at)"
             " VALUES (:n, :r, :note, :at)"),
        {"n": tree_size, "r": root_hash, "note": note, "at": created_at},
    )


def latest_checkpoint(conn: Connection) -> CheckpointRow | None:
    r = conn.execute(
        text(f"SELECT {_CP_COLUMNS} FROM evidence_checkpoints"  # noqa: S608
             " ORDER BY tree_size DESC LIMIT 1")
    ).first()
    return None if r is None else _cp(r)


def all_checkpoints(conn: Connection) -> list[CheckpointRow]:
    rs = conn.execute(
        text(f"SELECT {_CP_COLUMNS} FROM evidence_checkpoints ORDER BY tree_size")  # noqa: S608
    )
    return [_cp(r) for r in rs]


def undelivered_checkpoints(conn: Connection) -> list[CheckpointRow]:
    """Checkpoints the control plane has not countersigned yet, oldest first."""
    rs = conn.execute(
        text(f"SELECT {_CP_COLUMNS} FROM evidence_checkpoints"  # noqa: S608
             " WHERE cosigned_note IS NULL ORDER BY tree_size")
    )
    return [_cp(r) for r in rs]


def last_cosigned(conn: Connection) -> CheckpointRow | None:
    r = conn.execute(
        text(f"SELECT {_CP_COLUMNS} FROM evidence_checkpoints"  # noqa: S608
             " WHERE cosigned_note IS NOT NULL ORDER BY tree_size DESC LIMIT 1")
    ).first()
    return None if r is None else _cp(r)


def mark_cosigned(conn: Connection, tree_size: int, cosigned_note: str, at: str) -> None:
    conn.execute(
        text("UPDATE evidence_checkpoints SET cosigned_note = :c, cosigned_at = :at,"
             " delivery_error = NULL WHERE tree_size = :n"),
        {"c": cosigned_note, "at": at, "n": tree_size},
    )


def mark_delivery_error(conn: Connection, tree_size: int, error: str) -> None:
    conn.execute(
        text("UPDATE evidence_checkpoints SET delivery_error = :e WHERE tree_size = :n"),
        {"e": error[:1000], "n": tree_size},
    )
