"""Small named values the agent keeps across restarts (table `meta`, migration
0001), e.g. the control-plane order cursor."""

from __future__ import annotations

from sqlalchemy import text

from reconciler.store.database import Store

ORDERS_CURSOR = "orders_cursor"


class MetaStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> str | None:
        with self.store.begin() as conn:
            row = conn.execute(
                text("SELECT value FROM meta WHERE key = :k"), {"k": key}
            ).first()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        with self.store.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO meta (key, value) VALUES (:k, :v)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value"
                ),
                {"k": key, "v": value},
            )
