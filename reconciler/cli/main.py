"""`compliance-agent`: the daemon and the operator's view of it.

Exit codes: 0 ok; 1 drift remains / action deferred; 2 error (bad config,
unreadable state, ...); 3 order not admitted (`order verify`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from specs.config import AgentConfig, ConfigError, load_config

# Subcommands contributed by other modules, each exposing register(subparsers).
PLUGIN_MODULES = (
    "reconciler.cli.trust",
    "reconciler.cli.delivery",
    "reconciler.cli.egress",
    "reconciler.cli.report",
    "reconciler.actuator.server",
)


def _load_cfg(path: str) -> AgentConfig:
    return load_config(Path(path))


def _fail(msg: str, code: int = 2) -> int:
    print(f"compliance-agent: {msg}", file=sys.stderr)
    return code


# -- run -----------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    import signal

    from reconciler.ops.logformat import setup_logging

    # Until the daemon owns SIGTERM, a stop request during start-up is a clean exit
    # (SQLite rolls back whatever was in flight), not death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cfg = _load_cfg(args.config)
    setup_logging(cfg.log_level.value)
    from reconciler.service import StartupError, build_daemon

    try:
        daemon = build_daemon(cfg)
    except StartupError as e:
        return _fail(f"cannot start: {e}")
    daemon.install_signal_handlers()
    return daemon.run()


# -- reconcile --once ----------------------------------------------------------
def cmd_reconcile(args: argparse.Namespace) -> int:
    from reconciler.ops.logformat import setup_logging

    if not args.once:
        return _fail("only one-shot mode exists here: use 'reconcile --once' "
                     "(the daemon is 'compliance-agent run')")
    cfg = _load_cfg(args.config)
    setup_logging("WARNING" if not args.verbose else "DEBUG")
    from reconciler.cli.views import render_pass
    from reconciler.runtime.agent import exit_code_for
    from reconciler.service import reconcile_once

    report = reconcile_once(cfg, dry_run=args.dry_run)
    if args.output == "json":
        print(json.dumps(render_pass(report, as_json=True), indent=2, default=str))
    else:
        print(render_pass(report, as_json=False))
    return exit_code_for(report)


# -- status / describe ---------------------------------------------------------
def _readonly_status(cfg: AgentConfig) -> tuple[Any, Any]:
    from reconciler.store.database import open_store
    from reconciler.store.status import StatusView

    store = open_store(cfg.database_path, readonly=True)
    return store, StatusView(store)


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.cli.views import render_status_table
    from reconciler.runtime.agent import status_document

    cfg = _load_cfg(args.config)
    store, ss = _readonly_status(cfg)
    try:
        doc = status_document(ss.load_all(), ss.last_pass(), datetime.now(UTC))
        doc["evidence_queue"] = _queue_summary(store)
        doc["order_wakeups"] = _wakeup_state(store)
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(render_status_table(doc, datetime.now(UTC)))
    return 0


def _queue_summary(store: Any) -> dict[str, Any] | None:
    """Outbox depth and dead letters, so `status` shows undelivered evidence too."""
    import dataclasses

    from reconciler.store.database import StoreError
    from reconciler.store.outbox import OutboxView

    try:
        return dataclasses.asdict(OutboxView(store).stats())
    except StoreError:  # an agent that never ran delivery has no outbox table yet
        return None


def _wakeup_state(store: Any) -> dict[str, Any] | None:
    """The NATS order wake-up watch as the daemon last recorded it (natsUrl set)."""
    from reconciler.store.meta import MetaStore

    try:
        raw = MetaStore(store).get("order_wakeups")
        doc = json.loads(raw) if raw else None
    except Exception:  # unreadable: status shows the rest rather than failing
        return None
    return doc if isinstance(doc, dict) else None


def cmd_describe(args: argparse.Namespace) -> int:
    from reconciler.cli.views import render_describe

    cfg = _load_cfg(args.config)
    store, ss = _readonly_status(cfg)
    try:
        status = next((s for s in ss.load_all() if s.kind == args.kind), None)
        if status is None:
            known = ", ".join(s.kind for s in ss.load_all()) or "none yet"
            return _fail(f"no status for kind {args.kind!r} (known: {known})")
        history = ss.history(args.kind, limit=args.history)
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps({"status": status.model_dump(mode="json"), "history": history},
                         indent=2, default=str))
    else:
        print(render_describe(status, history, datetime.now(UTC)))
    return 0


# -- config --------------------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    from reconciler.cli.config_check import cmd_config_check as check

    return check(args)


def cmd_config_options(args: argparse.Namespace) -> int:
    from reconciler.cli.views import render_options

    print(render_options())
    return 0


# -- parser --------------------------------------------------------------------
CORE_COMMANDS = frozenset({"run", "reconcile", "status", "describe", "config"})


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compliance-agent",
        description="Keep a NixOS host at its compliance baseline, and prove it.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (systemd Type=notify)")
    run.add_argument("--config", required=True, help="agent config JSON (from the NixOS module)")
    run.set_defaults(func=cmd_run)

    rec = sub.add_parser("reconcile", help="one full pass; --dry-run shows the plan only")
    rec.add_argument("--once", action="store_true", required=True)
    rec.add_argument("--dry-run", action="store_true",
                     help="observe and plan; change nothing (like terraform plan)")
    rec.add_argument("--config", required=True)
    rec.add_argument("-o", "--output", choices=("text", "json"), default="text")
    rec.add_argument("-v", "--verbose", action="store_true")
    rec.set_defaults(func=cmd_reconcile)

    st = sub.add_parser("status", help="one row per resource, plus the host summary")
    st.add_argument("-o", "--output", choices=("table", "json"), default="table")
    st.add_argument("--config", required=True)
    st.set_defaults(func=cmd_status)

    de = sub.add_parser("describe", help="conditions with history, last observation, actions")
    de.add_argument("kind")
    de.add_argument("--config", required=True)
    de.add_argument("--history", type=int, default=20, help="condition changes to show")
    de.add_argument("-o", "--output", choices=("text", "json"), default="text")
    de.set_defaults(func=cmd_describe)

    cfgp = sub.add_parser("config", help="validate a config file; list the options")
    csub = cfgp.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    chk = csub.add_parser("check", help="what the daemon would refuse at start; exit 0 or 2")
    from reconciler.cli.config_check import add_arguments as add_check_arguments

    add_check_arguments(chk)
    chk.set_defaults(func=cmd_config_check)
    opts = csub.add_parser("options", help="every option with its type, default and meaning")
    opts.set_defaults(func=cmd_config_options)

    for name in PLUGIN_MODULES if with_plugins else ():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The daemon and the status commands never import the plugins' dependencies
    # (TLS, signing, HTTP server): start-up time and RSS are budgets.
    core = bool(argv) and argv[0] in CORE_COMMANDS
    parser = build_parser(with_plugins=not core)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"compliance-agent: invalid config {e.path}:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except Exception as e:  # last resort: a clear one-line error, not a traceback
        from reconciler.service import StartupError
        from reconciler.store.database import StoreError

        if isinstance(e, StartupError):
            return _fail(f"cannot start: {e}")
        if isinstance(e, StoreError | OSError):
            return _fail(str(e))
        raise


if __name__ == "__main__":
    sys.exit(main())
