"""The last good signed baseline from the control plane (table remote_baseline,
migration 0021): one row, kept so a restart keeps using it.

`RemoteBaselineStore` is the agent's side (read, replace, remember a refused
ETag); the envelope is verified again on every use. The root actuator never
reads this table: the agent offers it the document, and it keeps its own
verified copy (reconciler.actuator.baselines).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from reconciler.store.database import Store

# last_rejection is operator-facing text; keep the row small.
MAX_REJECTION_CHARS = 500


@dataclass(frozen=True)
class StoredBaseline:
    version: int
    envelope: bytes
    etag: str | None
    rejected_etag: str | None  # the last refused document's ETag, reported once


class RemoteBaselineStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self) -> StoredBaseline | None:
        with self.store.begin() as conn:
            row = conn.execute(
                text("SELECT version, envelope, etag, rejected_etag FROM remote_baseline")
            ).first()
        if row is None:
            return None
        return StoredBaseline(int(row[0]), bytes(row[1]), row[2], row[3])

    def replace(self, version: int, envelope: bytes, etag: str | None, fetched_at: float) -> None:
        """Store a verified baseline atomically; it clears a remembered refusal."""
        with self.store.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO remote_baseline (id, version, envelope, etag, fetched_at)"
                    " VALUES (1, :v, :env, :etag, :now) ON CONFLICT (id) DO UPDATE SET"
                    " version = :v, envelope = :env, etag = :etag, fetched_at = :now,"
                    " rejected_etag = NULL, last_rejection = NULL"
                ),
                {"v": version, "env": envelope, "etag": etag, "now": fetched_at},
            )

    def note_rejection(self, etag: str | None, why: str) -> None:
        """Remember the refused document's ETag (no-op when nothing is stored yet)."""
        with self.store.begin() as conn:
            conn.execute(
                text(
                    "UPDATE remote_baseline SET rejected_etag = :etag, last_rejection = :why"
                    " WHERE id = 1"
                ),
                {"etag": etag, "why": why[:MAX_REJECTION_CHARS]},
            )
