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
from typing import TYPE_CHECKING, Any

from reconciler.cli.common import (
    CliError,
    ConfigNotFound,
    VersionAction,
    add_config_option,
    add_output_option,
    config_path,
    use_colour,
)

if TYPE_CHECKING:
    from specs.config import AgentConfig

# Subcommands contributed by other modules, each exposing register(subparsers).
PLUGIN_MODULES = (
    "reconciler.cli.trust",
    "reconciler.cli.delivery",
    "reconciler.cli.egress",
    "reconciler.cli.report",
    "reconciler.actuator.server",
)


def _load_cfg(path: str | None) -> AgentConfig:
    """The validated config: --config, else $COMPLIANCE_AGENT_CONFIG, else /etc/..."""
    from specs.config import load_config

    return load_config(config_path(path))


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
    from reconciler.store.instance_lock import InstanceLockError, acquire

    try:
        lock = acquire(cfg.state_directory)  # held until this process ends
    except InstanceLockError as e:
        return _fail(f"cannot start: {e}")
    with lock:
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
    from contextlib import nullcontext

    from reconciler.cli.views import render_pass
    from reconciler.runtime.agent import exit_code_for
    from reconciler.service import reconcile_once
    from reconciler.store.instance_lock import InstanceLockError, acquire

    try:
        # A pass that may act must not run beside the daemon (or another pass);
        # a dry run changes nothing and may.
        lock = nullcontext() if args.dry_run else acquire(cfg.state_directory)
    except InstanceLockError as e:
        return _fail(f"cannot reconcile: {e}")
    with lock:
        report = reconcile_once(cfg, dry_run=args.dry_run)
    if args.output == "json":
        print(json.dumps(render_pass(report, as_json=True), indent=2, default=str))
    else:
        print(render_pass(report, as_json=False))
    return exit_code_for(report)


# -- status / describe ---------------------------------------------------------
# Both ask the daemon's status socket first and read the state database with
# the standard library's sqlite3 otherwise (reconciler.cli.live): no pydantic,
# SQLAlchemy or runtime import, since they are typed and scripted, with a 150 ms
# budget while the daemon runs (bench/bench_cli.py).
def _live(args: argparse.Namespace) -> tuple[Any, dict[str, Any] | None]:
    from reconciler.cli.live import RawConfig, ask_daemon

    raw = RawConfig.read(config_path(args.config))
    if raw is None:  # unreadable or not JSON: the validating loader says what is wrong
        _load_cfg(args.config)
        raise ConfigNotFound(f"{config_path(args.config)}: not an agent config")
    return raw, ask_daemon(raw)


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.cli.live import add_store_extras, store_status

    raw, doc = _live(args)
    if doc is not None:
        doc["source"] = "daemon"
        add_store_extras(doc, raw)
    else:
        doc = store_status(raw)
        doc["source"] = "store"
    if args.output == "json":
        print(json.dumps(doc, indent=2, default=str))
        return 0
    from reconciler.cli.status_views import render_status

    print(render_status(doc, datetime.now(UTC), wide=args.output == "wide",
                        colour=use_colour(sys.stdout)))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from reconciler.cli.live import history, store_resources

    raw, doc = _live(args)
    resources = doc["resources"] if doc is not None else store_resources(raw)
    status = next((r for r in resources if r.get("kind") == args.kind), None)
    if status is None:
        known = ", ".join(r["kind"] for r in resources) or "none yet"
        return _fail(f"no status for kind {args.kind!r} (known: {known})")
    hist = history(raw, args.kind, args.history)
    if args.output == "json":
        print(json.dumps({"status": status, "history": hist}, indent=2, default=str))
        return 0
    from reconciler.cli.status_views import render_describe

    print(render_describe(status, hist, datetime.now(UTC), wide=args.output == "wide",
                          colour=use_colour(sys.stdout)))
    return 0


# -- config --------------------------------------------------------------------
def cmd_config_check(args: argparse.Namespace) -> int:
    from reconciler.cli.config_check import cmd_config_check as check

    return check(args)


def cmd_config_options(args: argparse.Namespace) -> int:
    from reconciler.cli.views import option_rows, render_options

    if args.output == "json":
        print(json.dumps(option_rows(), indent=2))
    else:
        print(render_options())
    return 0


# -- parser --------------------------------------------------------------------
CORE_COMMANDS = frozenset({"run", "reconcile", "status", "describe", "config"})


# Typed and scripted: their parse must not import `config check`'s machinery.
FAST_COMMANDS = frozenset({"status", "describe"})


def build_parser(with_plugins: bool = True, *, fast: bool = False) -> argparse.ArgumentParser:
    """The whole command tree; `fast` leaves out the arguments of commands other than
    status/describe that cost imports (only for parsing a status/describe command line)."""
    p = argparse.ArgumentParser(
        prog="compliance-agent",
        description="Keep a NixOS host at its compliance baseline, and prove it.",
        epilog="Every command reads the agent config from --config, else "
               "$COMPLIANCE_AGENT_CONFIG, else /etc/compliance-agent/config.json. "
               "Output: -o text|json (and wide where it helps); colour only on a "
               "terminal and never with NO_COLOR set.",
    )
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (systemd Type=notify)")
    add_config_option(run)
    run.set_defaults(func=cmd_run)

    rec = sub.add_parser("reconcile", help="one full pass; --dry-run shows the plan only")
    rec.add_argument("--once", action="store_true", required=True,
                     help="one pass, then exit (required: the daemon is 'run')")
    rec.add_argument("--dry-run", action="store_true",
                     help="observe and plan; change nothing (like terraform plan)")
    add_config_option(rec)
    add_output_option(rec)
    rec.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG on stderr")
    rec.set_defaults(func=cmd_reconcile)

    st = sub.add_parser("status", help="one row per resource, plus the host summary")
    add_output_option(st, wide=True)
    add_config_option(st)
    st.set_defaults(func=cmd_status)

    de = sub.add_parser("describe", help="conditions with history, last observation, actions")
    de.add_argument("kind", help="resource kind, as listed by 'status' (e.g. services)")
    add_config_option(de)
    de.add_argument("--history", type=int, default=20, metavar="N",
                    help="condition changes to show (default: 20)")
    add_output_option(de, wide=True)
    de.set_defaults(func=cmd_describe)

    cfgp = sub.add_parser("config", help="validate a config file; list the options")
    csub = cfgp.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    chk = csub.add_parser("check", help="what the daemon would refuse at start; exit 0 or 2")
    if not fast:
        from reconciler.cli.config_check import add_arguments as add_check_arguments

        add_check_arguments(chk)
    chk.set_defaults(func=cmd_config_check)
    opts = csub.add_parser("options", help="every option with its type, default and meaning")
    add_output_option(opts)
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
    parser = build_parser(with_plugins=not core, fast=bool(argv) and argv[0] in FAST_COMMANDS)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as e:
        return _fail(str(e))
    except BrokenPipeError:
        return 0
    except Exception as e:  # last resort: a clear one-line error, not a traceback
        from specs.config import ConfigError

        if isinstance(e, ConfigError):
            print(f"compliance-agent: invalid config {e.path}:", file=sys.stderr)
            for problem in e.problems:
                print(f"  {problem}", file=sys.stderr)
            return 2
        from reconciler.service import StartupError
        from reconciler.store.database import StoreError

        if isinstance(e, StartupError):
            return _fail(f"cannot start: {e}")
        if isinstance(e, StoreError | OSError):
            return _fail(str(e))
        raise

if __name__ == "__main__":
    sys.exit(main())
