"""CLI: `queue` (outbox depth, oldest age, dead letters) and `queue retry`.

`queue` opens the state database read-only, so it is safe next to the
running daemon. `queue retry` writes (it moves dead letters back to queued);
the daemon's next delivery round picks them up.

Exit codes: 0 ok; 1 some named bundles were not dead letters (nothing done
for those); 2 error (bad config, unreadable state).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.cli.common import add_config_option, add_output_option, config_path, emit

if TYPE_CHECKING:
    from reconciler.store.database import Store

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
DEFAULT_LIMIT = 50


def _err(msg: str) -> int:
    print(f"compliance-agent: {msg}", file=sys.stderr)
    return EXIT_ERROR


def _open_store(args: argparse.Namespace, readonly: bool) -> Store:
    from reconciler.store.database import open_store
    from specs.config import load_config

    cfg = load_config(config_path(args.config))
    return open_store(cfg.database_path, readonly=readonly)


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def cmd_queue(args: argparse.Namespace) -> int:
    from reconciler.store.database import StoreError
    from reconciler.store.outbox import OutboxState, OutboxView

    store = _open_store(args, readonly=True)
    outbox = OutboxView(store)
    try:
        stats = outbox.stats()
        dead = outbox.entries(OutboxState.dead, limit=args.limit)
        retrying = [e for e in outbox.entries(OutboxState.queued, limit=args.limit)
                    if e.attempts > 0]
    except StoreError as exc:
        return _err(f"{exc} (is the agent upgraded and has it run once?)")
    finally:
        store.close()

    def row(e: Any) -> dict[str, Any]:
        return {"bundle_id": e.bundle_id, "state": e.state.value, "attempts": e.attempts,
                "created_at": _iso(e.created_at), "next_attempt_at": _iso(e.next_attempt_at),
                "last_error": e.last_error}

    if args.output == "json":
        print(json.dumps({
            "depth": stats.depth, "oldest_age_seconds": round(stats.oldest_age_seconds, 3),
            "dead": stats.dead, "delivered": stats.delivered, "attempts": stats.attempts,
            "retrying": stats.retrying,
            "dead_letters": [row(e) for e in dead], "retrying_bundles": [row(e) for e in retrying],
        }, indent=2))
        return EXIT_OK
    print(f"queued      {stats.depth}" + (f" (oldest {_age(stats.oldest_age_seconds)})"
                                          if stats.depth else ""))
    print(f"retrying    {stats.retrying}")
    print(f"dead        {stats.dead}")
    print(f"delivered   {stats.delivered}")
    for title, rows, when in (("DEAD LETTERS", dead, "created_at"),
                              ("RETRYING", retrying, "next_attempt_at")):
        if not rows:
            continue
        print(f"\n{title}")
        print(f"{'BUNDLE_ID':<38} {'ATTEMPTS':>8}  {when.upper():<20}  LAST_ERROR")
        for ent in rows:
            r = row(ent)
            print(f"{ent.bundle_id:<38} {ent.attempts:>8}  {r[when] or '-':<20}  "
                  f"{ent.last_error or '-'}")  # last column: never cut
    if dead:
        print("\nre-queue with: compliance-agent queue retry --all (or name bundle ids)")
    return EXIT_OK


def cmd_queue_retry(args: argparse.Namespace) -> int:
    if args.all == bool(args.bundle_ids):
        return _err("give either --all or one or more BUNDLE_IDs")
    from reconciler.store.outbox import Outbox

    store = _open_store(args, readonly=False)
    outbox = Outbox(store)
    try:
        if args.all:
            n = outbox.retry_dead(None)
            emit({"requeued": n}, args.output, f"re-queued {n} dead letter(s)")
            return EXIT_OK
        ids = list(dict.fromkeys(args.bundle_ids))
        n = outbox.retry_dead(ids)
    finally:
        store.close()
    emit({"requeued": n, "requested": len(ids)}, args.output,
         f"re-queued {n} of {len(ids)} bundle(s)")
    if n < len(ids):
        print("compliance-agent: some ids were not dead letters (unknown, queued or delivered);"
              " see 'compliance-agent queue'", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def register(subparsers: Any) -> None:
    q = subparsers.add_parser(
        "queue", help="evidence outbox: depth, oldest age, dead letters; 'queue retry'"
    )
    add_output_option(q)
    add_config_option(q)
    q.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                   help=f"rows listed per section (default: {DEFAULT_LIMIT})")
    q.set_defaults(func=cmd_queue)
    qsub = q.add_subparsers(dest="queue_command", metavar="SUBCOMMAND")
    r = qsub.add_parser("retry", help="re-queue dead letters (--all, or the named bundle ids)")
    r.add_argument("bundle_ids", nargs="*", metavar="BUNDLE_ID",
                   help="dead letters to re-queue (see 'compliance-agent queue')")
    r.add_argument("--all", action="store_true", help="re-queue every dead letter")
    # SUPPRESS: `queue --config X retry` and `queue retry --config X` both work
    r.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help="agent config JSON (default: as for 'queue')")
    r.add_argument("-o", "--output", type=str, choices=("text", "json"),
                   default=argparse.SUPPRESS, help="text or json (default: as for 'queue')")
    r.set_defaults(func=cmd_queue_retry)
