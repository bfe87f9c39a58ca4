"""Read-only look at the stored signed baseline for the root actuator.

Standard library only (no SQLAlchemy): the actuator reads this on every request
and its import closure stays small. The caller verifies the envelope's
signature again: the unprivileged agent writes this database, so its content is
not trusted as such.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def read_remote_baseline_envelope(database_path: Path, timeout: float = 2.0) -> bytes | None:
    """The stored envelope, or None when there is no database, table or row yet,
    or the file cannot be read (then the local baseline file governs)."""
    if not database_path.exists():
        return None
    try:
        uri = f"file:{database_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=timeout)) as db:
            row = db.execute("SELECT envelope FROM remote_baseline WHERE id = 1").fetchone()
    except sqlite3.Error:
        return None
    if row is None:
        return None
    return row[0] if isinstance(row[0], bytes) else str(row[0]).encode()
