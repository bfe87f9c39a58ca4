"""`compliance-agent egress refresh`: one egress allowlist pass, for the hourly timer.

Loads the config and the local baseline, resolves the allowed names, and
replaces the nftables allowlist sets when they differ from the current DNS
answers (fail closed: a name that does not resolve loses its addresses).
Exit status: 0 the sets match and every name resolved; 1 alert (a name failed
to resolve, or the table is missing) but nothing is broken in the agent;
2 error (bad config/baseline, nft unusable, or the sets could not be updated).

`reconciler.cli.main` mounts this with `register(subparsers)`; it also runs alone as
`python -m reconciler.cli.egress refresh` (config found as for every command).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from controllers.egress import EgressController, EgressObserved, EgressObserveError
from reconciler.actuator.result import ActionResult, Actuator, dry_run_result
from reconciler.cli.common import (
    DeprecatedJsonFlag,
    add_config_option,
    add_output_option,
    config_path,
)
from specs.baseline import BaselineError, load_baseline
from specs.config import AgentConfig, ConfigError, load_config
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.egress import EgressSpec

EXIT_OK, EXIT_ALERT, EXIT_ERROR = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    egress = subparsers.add_parser("egress", help="egress allowlist (nftables sets from DNS)")
    sub = egress.add_subparsers(dest="egress_command", required=True)
    refresh = sub.add_parser(
        "refresh",
        help="resolve allowedHosts now and update the allowlist sets (exit 0 ok, 1 alert, 2 error)",
    )
    add_config_option(refresh)
    refresh.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    add_output_option(refresh)
    refresh.add_argument("--json", action=DeprecatedJsonFlag, help="deprecated: use -o json")
    refresh.set_defaults(func=cmd_refresh)


def cmd_refresh(args: argparse.Namespace) -> int:
    try:
        config = load_config(config_path(args.config))
        baseline = load_baseline(config.baseline_path)
    except (ConfigError, BaselineError) as e:
        print(f"egress refresh: {e}", file=sys.stderr)
        return EXIT_ERROR
    from reconciler.service import actuator_for, host_for

    host = host_for(config)
    actuator = None if args.dry_run else actuator_for(config, host)
    return refresh(config, baseline.egress, host, actuator, json_output=args.output == "json")


def effective_spec(config: AgentConfig, spec: EgressSpec | None) -> EgressSpec:
    """The baseline's egress spec (or the defaults when it has none) completed from config.

    A baseline without an `egress` section still gets a refreshed allowlist:
    the NixOS module installs the drop policy whenever the agent is enabled,
    so leaving the sets unmanaged would only cut the host off.
    """
    return (spec or EgressSpec()).with_config_defaults(config.allowed_hosts, config.egress_table)


def refresh(
    config: AgentConfig,
    spec: EgressSpec | None,
    host: Host,
    actuator: Actuator | None,
    *,
    json_output: bool = False,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """observe -> diff -> plan -> execute -> observe again; `actuator=None` is a dry run."""
    ctl = EgressController()
    spec = effective_spec(config, spec)
    try:
        before = ctl.observe(host, spec)
        drifts = ctl.diff(spec, before)
        actions = ctl.plan(spec, before, drifts)
        results: list[ActionResult] = [
            actuator.execute(a) if actuator is not None else dry_run_result(a) for a in actions
        ]
        after = ctl.observe(host, spec) if actuator is not None and actions else before
    except (EgressObserveError, HostError) as e:
        print(f"egress refresh: cannot observe the allowlist: {e}", file=err)
        return EXIT_ERROR
    remaining = ctl.diff(spec, after) if actuator is not None else drifts
    code = _exit_code(results, remaining, dry_run=actuator is None)
    if json_output:
        print(json.dumps(_summary(spec, after, results, remaining, code), sort_keys=True), file=out)
    else:
        _print_human(spec, after, results, remaining, code, out)
    return code


def _exit_code(results: list[ActionResult], remaining: list[Drift], *, dry_run: bool) -> int:
    if any(not r.ok for r in results):
        return EXIT_ERROR
    if not dry_run and any(d.remedy is Remedy.remediate for d in remaining):
        return EXIT_ERROR  # acted, yet the sets still differ
    return EXIT_ALERT if any(d.remedy is Remedy.alert for d in remaining) else EXIT_OK


def _summary(
    spec: EgressSpec,
    observed: EgressObserved,
    results: list[ActionResult],
    remaining: list[Drift],
    code: int,
) -> dict[str, Any]:
    return {
        "result": {EXIT_OK: "ok", EXIT_ALERT: "alert", EXIT_ERROR: "error"}[code],
        **EgressController().facts(spec, observed),
        "actions": [
            {"action": r.action.describe(), "ok": r.ok, "error": r.error,
             "records": [rec.model_dump(mode="json") for rec in r.records]}
            for r in results
        ],
        "drifts": [d.model_dump(mode="json") for d in remaining],
    }


def _print_human(
    spec: EgressSpec,
    observed: EgressObserved,
    results: list[ActionResult],
    remaining: list[Drift],
    code: int,
    out: TextIO,
) -> None:
    for n in observed.names:
        why = n.failure
        addrs = ", ".join(n.addresses) or "-"
        print(f"resolve {n.name}: {'FAILED: ' + why if why else addrs}", file=out)
    for r in results:
        state = "ok" if r.ok else f"FAILED: {r.error}"
        if r.records and r.records[0].result == "dry_run":
            state = "dry run"
        print(f"update {r.action.describe()}: {state}", file=out)
    for s in observed.sets.values():
        shown = f"{len(s.elements)} elements" if s.present else "missing"
        print(f"set inet {spec.table} {s.name}: {shown}", file=out)
    for d in remaining:
        print(f"drift {d.reason} {d.field} ({d.remedy.value}): {d.message}", file=out)
    print(f"result: {({EXIT_OK: 'ok', EXIT_ALERT: 'alert', EXIT_ERROR: 'error'})[code]}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compliance-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
