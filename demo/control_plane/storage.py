"""SQLite storage of the DEV ONLY control plane: receipts, orders, baselines, flags.

The CLI and the server share this file, so an operator can enqueue an order or
flip the outage switch from a shell while the server runs.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    bundle_id TEXT PRIMARY KEY,
    receipt_id TEXT NOT NULL,
    site_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    sequence INTEGER,
    prev_digest TEXT,
    digest TEXT NOT NULL,
    received_at REAL NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS evidence_chain ON evidence (host_id, sequence);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    envelope TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS baselines (
    site_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    envelope BLOB NOT NULL,
    etag TEXT NOT NULL,
    PRIMARY KEY (site_id, host_id)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    site_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    tree_size INTEGER NOT NULL,
    root_hash BLOB NOT NULL,
    cosigned_note TEXT NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (site_id, host_id, tree_size)
);
CREATE TABLE IF NOT EXISTS split_views (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site_id TEXT NOT NULL,
    host_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    known_note TEXT NOT NULL,
    received_note TEXT NOT NULL,
    detected_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS flags (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredEvidence:
    bundle_id: str
    site_id: str
    host_id: str
    sequence: int | None
    prev_digest: str | None
    digest: str
    envelope: bytes


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root_hash: bytes
    cosigned_note: str


class Storage:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=5000")
        self._switch_to_wal()
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def _switch_to_wal(self) -> None:
        # `serve` may open a new file while an `order` command does the same.
        # Switching a fresh database to WAL needs an exclusive lock, and SQLite
        # answers "locked" at once (no busy handler) when two openers collide;
        # the switch is idempotent, so retry it for a bounded time.
        deadline = time.monotonic() + 10
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- evidence -----------------------------------------------------------------

    def store_evidence(self, items: list[StoredEvidence]) -> list[tuple[str, bool, str | None]]:
        """Insert new bundles in one transaction.

        Returns per item (receipt_id, created, conflict_digest): a repeat of a
        known bundle_id returns its original receipt with created=False; a
        repeat with different content returns the stored digest as conflict.
        """
        out: list[tuple[str, bool, str | None]] = []
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for it in items:
                    row = self._db.execute(
                        "SELECT receipt_id, digest FROM evidence WHERE bundle_id = ?",
                        (it.bundle_id,),
                    ).fetchone()
                    if row is not None:
                        conflict = None if row[1] == it.digest else str(row[1])
                        out.append((str(row[0]), False, conflict))
                        self._bump("duplicates_suppressed")
                        continue
                    rid = "rcpt_" + secrets.token_hex(12)
                    self._db.execute(
                        "INSERT INTO evidence VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            it.bundle_id,
                            rid,
                            it.site_id,
                            it.host_id,
                            it.sequence,
                            it.prev_digest,
                            it.digest,
                            now,
                            it.envelope,
                        ),
                    )
                    out.append((rid, True, None))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def _bump(self, name: str, n: int = 1) -> None:
        self._db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, n, n),
        )

    def bump(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._bump(name, n)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {r[0]: int(r[1]) for r in self._db.execute("SELECT name, value FROM counters")}

    def evidence(self) -> list[StoredEvidence]:
        with self._lock:
            rows = self._db.execute(
                "SELECT bundle_id, site_id, host_id, sequence, prev_digest, digest, envelope"
                " FROM evidence ORDER BY host_id, sequence"
            ).fetchall()
        return [StoredEvidence(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows]

    # -- checkpoints ----------------------------------------------------------------

    def checkpoint(
        self, site_id: str, host_id: str, tree_size: int | None = None
    ) -> StoredCheckpoint | None:
        """The host's checkpoint of that size, or its largest one."""
        q = (
            "SELECT tree_size, root_hash, cosigned_note FROM checkpoints WHERE site_id = ?"
            " AND host_id = ?"
        )
        args: tuple[Any, ...] = (site_id, host_id)
        if tree_size is None:
            q += " ORDER BY tree_size DESC LIMIT 1"
        else:
            q += " AND tree_size = ?"
            args += (tree_size,)
        with self._lock:
            row = self._db.execute(q, args).fetchone()
        return None if row is None else StoredCheckpoint(int(row[0]), bytes(row[1]), row[2])

    def add_checkpoint(self, site_id: str, host_id: str, cp: StoredCheckpoint) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO checkpoints VALUES (?, ?, ?, ?, ?, ?)",
                (site_id, host_id, cp.tree_size, cp.root_hash, cp.cosigned_note, time.time()),
            )

    def add_split_view(
        self, site_id: str, host_id: str, reason: str, known: str, received: str
    ) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO split_views (site_id, host_id, reason, known_note, received_note,"
                " detected_at) VALUES (?, ?, ?, ?, ?, ?)",
                (site_id, host_id, reason, known, received, time.time()),
            )
            return int(cur.lastrowid or 0)

    def split_views(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, site_id, host_id, reason, known_note, received_note FROM split_views"
                " ORDER BY id"
            ).fetchall()
        return [
            {"id": r[0], "host": f"{r[1]}/{r[2]}", "reason": r[3], "known": r[4], "received": r[5]}
            for r in rows
        ]

    def checkpoint_heads(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT site_id, host_id, MAX(tree_size) FROM checkpoints GROUP BY site_id, host_id"
            ).fetchall()
        return {f"{r[0]}/{r[1]}": int(r[2]) for r in rows}

    # -- orders and baselines -------------------------------------------------------

    def add_order(self, site_id: str, host_id: str, envelope: dict[str, Any]) -> int:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO orders (site_id, host_id, envelope, created_at) VALUES (?, ?, ?, ?)",
                (site_id, host_id, json.dumps(envelope), time.time()),
            )
            return int(cur.lastrowid or 0)

    def orders_after(self, site_id: str, host_id: str, after: int) -> list[tuple[int, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, envelope FROM orders WHERE site_id = ? AND host_id = ? AND id > ?"
                " ORDER BY id LIMIT 100",
                (site_id, host_id, after),
            ).fetchall()
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    def order_hosts_after(self, after: int) -> tuple[int, list[tuple[str, str]]]:
        """(highest order id, the distinct (site, host) with orders above `after`)."""
        with self._lock:
            top = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM orders").fetchone()[0]
            rows = self._db.execute(
                "SELECT DISTINCT site_id, host_id FROM orders WHERE id > ? AND id <= ?",
                (after, top),
            ).fetchall()
        return int(top), [(str(r[0]), str(r[1])) for r in rows]

    def evidence_after(self, rowid: int, limit: int = 200) -> list[tuple[int, StoredEvidence]]:
        """Stored (verified) evidence in arrival order, for the fan-out to JetStream."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, bundle_id, site_id, host_id, sequence, prev_digest, digest,"
                " envelope FROM evidence WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (rowid, limit),
            ).fetchall()
        return [
            (int(r[0]), StoredEvidence(r[1], r[2], r[3], r[4], r[5], r[6], bytes(r[7])))
            for r in rows
        ]

    def put_baseline(
        self, site_id: str, host_id: str, version: int, envelope: bytes, etag: str
    ) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO baselines VALUES (?, ?, ?, ?, ?) ON CONFLICT(site_id, host_id)"
                " DO UPDATE SET version = excluded.version, envelope = excluded.envelope,"
                " etag = excluded.etag",
                (site_id, host_id, version, envelope, etag),
            )

    def baseline(self, site_id: str, host_id: str) -> tuple[bytes, str] | None:
        """The host's own baseline, else the site-wide one (host '*')."""
        with self._lock:
            for h in (host_id, "*"):
                row = self._db.execute(
                    "SELECT envelope, etag FROM baselines WHERE site_id = ? AND host_id = ?",
                    (site_id, h),
                ).fetchone()
                if row is not None:
                    return bytes(row[0]), str(row[1])
        return None

    # -- flags ----------------------------------------------------------------------

    def set_flag(self, name: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO flags VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = ?",
                (name, value, value),
            )

    def flag(self, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])


def chain_report(items: list[StoredEvidence]) -> dict[str, Any]:
    """Per host: sequence range, gaps (missing sequence numbers), broken links
    (prev_digest not matching the stored predecessor), forks (two bundles with
    one sequence number), and whether the chain is intact."""
    hosts: dict[str, list[StoredEvidence]] = {}
    for it in items:
        hosts.setdefault(f"{it.site_id}/{it.host_id}", []).append(it)
    report: dict[str, Any] = {}
    for key, rows in hosts.items():
        seqd: dict[int, StoredEvidence] = {}
        forks: list[int] = []
        unsequenced = 0
        for r in rows:
            if r.sequence is None:
                unsequenced += 1
            elif r.sequence in seqd:
                forks.append(r.sequence)
            else:
                seqd[r.sequence] = r
        seqs = sorted(seqd)
        gaps: list[int] = []
        breaks: list[int] = []
        if seqs:
            have = set(seqs)
            gaps = [s for s in range(seqs[0], seqs[-1] + 1) if s not in have][:1000]
            for s in seqs:
                prev = seqd.get(s - 1)
                if prev is not None and seqd[s].prev_digest != prev.digest:
                    breaks.append(s)
        report[key] = {
            "count": len(rows),
            "first_sequence": seqs[0] if seqs else None,
            "last_sequence": seqs[-1] if seqs else None,
            "gaps": gaps,
            "breaks": breaks[:1000],
            "forks": forks[:1000],
            "unsequenced": unsequenced,
            "chain_intact": not gaps and not breaks and not forks and not unsequenced,
        }
    return report
