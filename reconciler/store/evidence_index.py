"""Evidence files and their SQLite index (table evidence_bundles, migration 0011).

Files live flat in the evidence directory, one envelope per file, named
`<sequence:012d>-<bundle_id>.json` so a directory listing sorts like the
chain. The signed files are the evidence and the index rows a cache of them:
a file without a row (a crash between file write and commit, a lost
database) is reconciled at start by reconciler.evidence.recovery, never
deleted.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, bindparam, text

from reconciler.store.database import Store


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return cast(Callable[[int], int], fn)


_syncfs = _load_syncfs()

FILE_RE = re.compile(r"^\d{12}-[0-9A-Za-z-]{8,64}\.json$")
TMP_RE = re.compile(r"^\.\d{12}-[0-9A-Za-z-]{8,64}\.json\.tmp$")
# A bundle file written in a transaction that has not committed (yet): renamed to
# its final name only after the COMMIT, so a crash never leaves an uncommitted
# bundle under a name that recovery would adopt.
PENDING_SUFFIX = ".pending"
PENDING_RE = re.compile(r"^\d{12}-[0-9A-Za-z-]{8,64}\.json\.pending$")
FILE_MODE = 0o640

COLUMNS = (
    "bundle_id, sequence, check_name, outcome, created_at, digest, prev_digest,"
    " file_name, order_id, pruned_at, pruned_by"
)


@dataclass(frozen=True)
class IndexRow:
    bundle_id: str
    sequence: int
    check: str
    outcome: str
    created_at: str
    digest: str
    prev_digest: str | None
    file_name: str
    order_id: str | None
    pruned_at: str | None
    pruned_by: str | None

    @property
    def pruned(self) -> bool:
        return self.pruned_at is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FIELDS = (
    "bundle_id",
    "sequence",
    "check",
    "outcome",
    "created_at",
    "digest",
    "prev_digest",
    "file_name",
    "order_id",
    "pruned_at",
    "pruned_by",
)


def file_name_for(sequence: int, bundle_id: str) -> str:
    return f"{sequence:012d}-{bundle_id}.json"


def _row(r: Any) -> IndexRow:
    return IndexRow(*r)


def chain_head(conn: Connection) -> tuple[int, str | None]:
    """(last sequence, its digest), or (0, None) for an empty chain."""
    r = conn.execute(_HEAD).first()
    return (0, None) if r is None else (int(r[0]), str(r[1]))


# Built once: constructing text() per call costs more than the INSERT itself.
_INSERT = text(
    f"INSERT INTO evidence_bundles ({COLUMNS}) VALUES (:bundle_id, :sequence, :check,"  # noqa: S608
    " :outcome, :created_at, :digest, :prev_digest, :file_name, :order_id,"
    " :pruned_at, :pruned_by)"
)
_HEAD = text("SELECT sequence, digest FROM evidence_bundles ORDER BY sequence DESC LIMIT 1")


def insert_rows(conn: Connection, rows: list[IndexRow]) -> None:
    # Not dataclasses.astuple: it deep-copies every field.
    conn.execute(_INSERT, [{f: getattr(r, f) for f in _FIELDS} for r in rows])


def mark_pruned(conn: Connection, sequences: list[int], pruned_at: str, pruned_by: str) -> None:
    """Turn live rows into tombstones (the file goes, the row and its digest stay)."""
    conn.execute(
        text(
            "UPDATE evidence_bundles SET pruned_at = :at, pruned_by = :by"
            " WHERE sequence IN :seqs AND pruned_at IS NULL"
        ).bindparams(bindparam("seqs", expanding=True)),
        {"at": pruned_at, "by": pruned_by, "seqs": sequences},
    )


def live_file_names(conn: Connection) -> set[str]:
    """File names of every bundle whose file should exist (not pruned)."""
    rs = conn.execute(text("SELECT file_name FROM evidence_bundles WHERE pruned_at IS NULL"))
    return {str(r[0]) for r in rs}


def all_rows(conn: Connection) -> list[IndexRow]:
    rs = conn.execute(text(f"SELECT {COLUMNS} FROM evidence_bundles ORDER BY sequence"))  # noqa: S608
    return [_row(r) for r in rs]


def list_bundles(
    store: Store, include_pruned: bool = True, limit: int | None = None
) -> list[IndexRow]:
    """Index rows, newest first."""
    where = "" if include_pruned else " WHERE pruned_at IS NULL"
    lim = "" if limit is None else f" LIMIT {int(limit)}"
    with store.begin() as conn:
        rs = conn.execute(
            text(f"SELECT {COLUMNS} FROM evidence_bundles{where} ORDER BY sequence DESC{lim}")  # noqa: S608
        )
        return [_row(r) for r in rs]


RECOVERY_KEY = "evidence_last_recovery"  # meta table: what the last start rebuilt, JSON


def save_recovery(conn: Connection, summary: str) -> None:
    conn.execute(text("INSERT INTO meta (key, value) VALUES (:k, :v)"
                      " ON CONFLICT(key) DO UPDATE SET value = excluded.value"),
                 {"k": RECOVERY_KEY, "v": summary})


def last_recovery(conn: Connection) -> str | None:
    r = conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": RECOVERY_KEY}).first()
    return None if r is None else str(r[0])


def count_check(store: Store, check: str) -> int:
    """How many bundles (tombstones included) have this check."""
    with store.begin() as conn:
        r = conn.execute(text("SELECT count(*) FROM evidence_bundles WHERE check_name = :c"),
                         {"c": check}).first()
    return 0 if r is None else int(r[0])


def get_bundle(store: Store, ident: str) -> IndexRow | None:
    """Look a bundle up by bundle_id, or by sequence number if `ident` is all digits."""
    with store.begin() as conn:
        if ident.isdigit():
            r = conn.execute(
                text(f"SELECT {COLUMNS} FROM evidence_bundles WHERE sequence = :s"),  # noqa: S608
                {"s": int(ident)},
            ).first()
        else:
            r = conn.execute(
                text(f"SELECT {COLUMNS} FROM evidence_bundles WHERE bundle_id = :b"),  # noqa: S608
                {"b": ident},
            ).first()
    return None if r is None else _row(r)


def decode_statement(envelope: bytes) -> dict[str, Any]:
    """The statement inside an envelope, WITHOUT verifying it (display only)."""
    env = json.loads(envelope)
    statement: dict[str, Any] = json.loads(base64.b64decode(env["payload"]))
    return statement


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class EvidenceDir:
    """Durable file writes into one directory (kept open for fsync of entries)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    def write(self, name: str, data: bytes, sync: bool = True) -> None:
        """Write a new file `name` holding `data`.

        sync=True: tmp + fsync + rename + fsync(dir); on return the file is
        durable and was never visible half-written.
        sync=False (batches): created directly under its final name with
        O_EXCL and not flushed; the caller must `sync_filesystem()` before
        committing the index rows. Skipping the temp name saves a directory
        operation per file, and a torn file is harmless: until its row
        commits it is an orphan, never read as part of the chain.
        """
        if not sync:
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                FILE_MODE,
                dir_fd=self._dir_fd,
            )
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            return
        tmp = f".{name}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=self._dir_fd,
        )
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.fsync(self._dir_fd)

    def publish(self, names: list[str]) -> None:
        """After the commit: give pending files their final names, durably."""
        for name in names:
            os.rename(name + PENDING_SUFFIX, name,
                      src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        os.fsync(self._dir_fd)

    def sync_filesystem(self) -> None:
        """Make every write and rename in this directory durable with one syncfs(2).

        On this class of disk one journal commit for N new files costs about
        what one fsync pair costs for a single file, which is what makes
        batched evidence fast. Falls back to sync(2) where syncfs is unavailable.
        """
        if _syncfs is not None and _syncfs(self._dir_fd) == 0:
            return
        os.sync()

    def read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()

    def unlink(self, name: str) -> bool:
        try:
            os.unlink(name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return False
        return True

    def sync(self) -> None:
        os.fsync(self._dir_fd)

    def names(self) -> list[str]:
        return sorted(os.listdir(self.path))


def sequence_ranges(seqs: list[int]) -> list[list[int]]:
    """[1,2,3,7,8] -> [[1,3],[7,8]]: how prune records and recovery notes list sequences."""
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out
