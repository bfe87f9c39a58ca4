"""The demo control plane's store opens safely while another process opens it.

`serve` listens before uvicorn starts, so a test or script can run `order`
against the same database while the server is still opening it. Switching to
WAL takes an exclusive lock, and SQLite answers the loser of that race
"database is locked" at once (the busy timeout does not cover it): the server
died on start (seen as a refused connection in CI). The store now retries the
switch for a bounded time.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from demo.control_plane.storage import Storage


def _open(path: str, results: multiprocessing.Queue[str], start: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    try:
        Storage(Path(path)).close()
        results.put("ok")
    except Exception as e:  # the failure is the finding
        results.put(repr(e))


def test_concurrent_opens_of_a_new_database_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    failures: list[str] = []
    for round_no in range(40):
        db = tmp_path / f"cp-{round_no}.db"
        results: multiprocessing.Queue[str] = ctx.Queue()
        start = ctx.Event()
        procs = [ctx.Process(target=_open, args=(str(db), results, start)) for _ in range(4)]
        for p in procs:
            p.start()
        start.set()
        for p in procs:
            p.join(timeout=60)
        outcomes = [results.get(timeout=10) for _ in procs]
        failures += [o for o in outcomes if o != "ok"]
    assert failures == []
