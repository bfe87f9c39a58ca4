"""CLI: `compliance-agent report`: compliance over a period, for auditors.

    compliance-agent report --since 2026-11-01 --until 2026-12-01 --format html --out nov.html

Formats: html (one self-contained printable file), md, csv, json, oscal (an
OSCAL 1.1 assessment-results document). Read-only: opens the state database
read-only and reads the evidence files, so it is safe next to the daemon.
Every bundle's signature is checked with the agent's public key (derived from
signingKeyFile, or given with --public-key) before it is used.

Exit codes: 0 report written, evidence intact; 1 report written, but the
evidence has problems (the report lists them); 2 error, nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.common import add_config_option, add_output_option, config_path
from specs.config import ConfigError, load_config

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2
FORMATS = ("html", "md", "csv", "json", "oscal")
DEFAULT_PERIOD = timedelta(days=30)

if TYPE_CHECKING:
    from reconciler.evidence.report_model import ComplianceReport


def _err(msg: str) -> int:
    print(f"compliance-agent report: {msg}", file=sys.stderr)
    return EXIT_ERROR


def parse_when(value: str) -> datetime:
    """ISO 8601 date or date-time; a date means its midnight UTC, no offset means UTC."""
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        dt = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-01 or "
            "2026-11-01T08:00:00Z)") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("compliance-agent")
    except PackageNotFoundError:
        return "unknown"


def write_output(out: str, text: str) -> None:
    """`-` is stdout; a file is replaced atomically (never left half-written)."""
    if out == "-":
        sys.stdout.write(text)
        return
    path = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_report(args: argparse.Namespace) -> int:
    from reconciler.evidence.report import build_report
    from reconciler.store.database import StoreError, open_store
    from reconciler.trust.dsse import TrustedKeys
    from reconciler.trust.keys import KeyFileError, load_signing_key

    try:
        cfg = load_config(config_path(args.config))
    except ConfigError as e:
        return _err(f"invalid config {e.path}: " + "; ".join(e.problems))
    now = datetime.now(UTC)
    until = args.until or now
    since = args.since or until - DEFAULT_PERIOD
    if since >= until:
        return _err(f"--since {since:%Y-%m-%dT%H:%M:%SZ} is not before --until "
                    f"{until:%Y-%m-%dT%H:%M:%SZ}")
    if args.public_key:
        hexkeys = list(args.public_key)
    else:
        try:
            hexkeys = [load_signing_key(cfg.signing_key_file).public_key_hex]
        except KeyFileError as e:
            return _err(f"cannot learn the agent's public key: {e}. Run as the agent's user "
                        "(on NixOS: sudo -u compliance-agent compliance-agent report ...) or "
                        "pass --public-key HEX")
    try:
        keys = TrustedKeys(hexkeys)
    except ValueError as e:
        return _err(f"--public-key: {e}")
    try:
        store = open_store(cfg.database_path, readonly=True)
    except StoreError as e:
        return _err(str(e))
    try:
        report = build_report(
            store, cfg.evidence_directory, keys, site_id=cfg.site_id, host_id=cfg.host_id,
            since=since, until=until, now=now,
            max_silence=timedelta(seconds=cfg.evidence_snapshot_interval + 2 * cfg.poll_interval),
        )
    finally:
        store.close()
    try:
        write_output(args.out, render(report, args.format))
    except OSError as e:
        return _err(f"{args.out}: cannot write: {e.strerror}")
    cov = report.coverage
    ok = cov.chain_ok and not cov.rejected
    # The document goes to --out. The summary: text on stderr (as a progress note);
    # json on stdout for scripts, unless the document itself is there (`--out -`).
    if args.output == "json":
        import json

        print(json.dumps({"out": args.out, "format": args.format,
                          "bundles_in_period": cov.bundles_in_period,
                          "evidence_intact": ok}),
              file=sys.stderr if args.out == "-" else sys.stdout)
    elif args.out != "-":
        print(f"wrote {args.out} ({args.format}, {cov.bundles_in_period} bundles "
              f"in the period)", file=sys.stderr)
    return EXIT_OK if ok else EXIT_PROBLEMS


def render(report: ComplianceReport, fmt: str) -> str:
    """The report in `fmt` (one of FORMATS); renderers load only when used."""
    if fmt == "oscal":
        import json

        from reconciler.evidence.oscal import assessment_results

        return json.dumps(assessment_results(report, _tool_version()), indent=2) + "\n"
    if fmt == "html":
        from reconciler.evidence.report_html import render_html

        return render_html(report)
    from reconciler.evidence.report_render import render_csv, render_json, render_markdown

    return {"md": render_markdown, "csv": render_csv, "json": render_json}[fmt](report)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `report` subcommand."""
    rp = subparsers.add_parser(
        "report", help="compliance over a period from signed evidence (html, md, csv, json, "
                       "oscal)")
    rp.add_argument("--since", type=parse_when, default=None,
                    help="start of the period, ISO 8601 (default: 30 days before --until)")
    rp.add_argument("--until", type=parse_when, default=None,
                    help="end of the period, ISO 8601 (default: now)")
    rp.add_argument("--format", choices=FORMATS, default="html",
                    help="html: one printable file; oscal: OSCAL 1.1 assessment-results JSON")
    rp.add_argument("--out", default="-", help="file to write (default: standard output)")
    rp.add_argument("--public-key", action="append", metavar="HEX",
                    help="agent public key to verify bundles with (default: derived from "
                         "signingKeyFile); repeat for rotated keys")
    add_config_option(rp)
    add_output_option(rp, help="the one-line summary of what was written (the document's "
                               "own format is --format): text, or json for scripts")
    rp.set_defaults(func=cmd_report)
