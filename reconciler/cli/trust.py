"""CLI: `keygen`, `order verify`, `evidence list|show|verify|checkpoint|export|prune`.

Exit codes follow reconciler.cli.main: 0 ok; 1 evidence problems found; 2 error
(bad config, unreadable state or file); 3 order not admitted.

`order verify` and `evidence list|show|verify` open the state database
read-only: they never write, so they are safe next to the running daemon.
`evidence prune` appends to the chain (it signs a prune bundle), so it needs
the signing key and write access; the daemon's writer and the CLI serialize
on SQLite's write lock.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.cli.common import (
    CONFIG_HELP,
    add_config_option,
    add_output_option,
    config_path,
    emit,
)
from specs.config import AgentConfig, ConfigError, load_config

if TYPE_CHECKING:
    from reconciler.store.database import Store
    from reconciler.trust.dsse import Signer

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR, EXIT_NOT_ADMITTED = 0, 1, 2, 3


def _err(msg: str, code: int = EXIT_ERROR) -> int:
    print(f"compliance-agent: {msg}", file=sys.stderr)
    return code


def _config(path: str | None) -> AgentConfig:
    return load_config(config_path(path))


def _config_error(e: ConfigError) -> int:
    print(f"compliance-agent: invalid config {e.path}:", file=sys.stderr)
    for p in e.problems:
        print(f"  {p}", file=sys.stderr)
    return EXIT_ERROR


def _signing_context(path: str | None) -> tuple[AgentConfig, Signer, Store] | int:
    """The config, the agent's signing key and the state database (read-write), for
    the commands that sign evidence; or the exit code of an error already printed."""
    from reconciler.store.database import StoreError, open_store
    from reconciler.trust.keys import KeyFileError, load_signing_key

    try:
        cfg = _config(path)
        signer = load_signing_key(cfg.signing_key_file)
        store = open_store(cfg.database_path)
    except ConfigError as e:
        return _config_error(e)
    except (KeyFileError, StoreError) as e:
        return _err(str(e))
    return cfg, signer, store


# -- keygen ------------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    from reconciler.trust.keys import KeyFileError, generate_key_file

    try:
        signer = generate_key_file(Path(args.out), force=args.force)
    except KeyFileError as e:
        return _err(str(e))
    if args.output == "json":
        emit({"public_key": signer.public_key_hex, "keyid": signer.keyid, "file": args.out},
             "json")
    else:
        print(signer.public_key_hex)
    print(f"wrote {args.out} (mode 0600); keyid {signer.keyid}", file=sys.stderr)
    return EXIT_OK


# -- order verify --------------------------------------------------------------------
def cmd_order_verify(args: argparse.Namespace) -> int:
    from reconciler.store.database import StoreError, open_store
    from reconciler.store.nonces import NonceStore
    from reconciler.trust.admission import OrderAdmission
    from specs.orders import parse_rfc3339_utc

    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _config_error(e)
    try:
        now = parse_rfc3339_utc(args.at) if args.at else datetime.now(UTC)
    except ValueError as e:
        return _err(f"--at: {e}")
    try:
        data = Path(args.file).read_bytes()
    except OSError as e:
        return _err(f"{args.file}: cannot read: {e.strerror}")
    store = None
    if cfg.database_path.exists():
        try:
            store = open_store(cfg.database_path, readonly=True)
        except StoreError as e:
            return _err(str(e))
    admission = OrderAdmission.from_config(cfg, NonceStore(store, readonly=True))
    try:
        verdict = admission.admit(data, now=now)
    finally:
        if store is not None:
            store.close()
    if args.output == "json":
        print(json.dumps(verdict.to_json()))
    else:
        emit(verdict.to_json(), "text")
    if verdict.message and not verdict.admitted:
        print(f"{verdict.reason}: {verdict.message}", file=sys.stderr)
    return EXIT_OK if verdict.admitted else EXIT_NOT_ADMITTED


# -- evidence ------------------------------------------------------------------------
def _open_ro(cfg: AgentConfig) -> Any:
    from reconciler.store.database import open_store

    return open_store(cfg.database_path, readonly=True)


def cmd_evidence_list(args: argparse.Namespace) -> int:
    from reconciler.store.database import StoreError
    from reconciler.store.evidence_index import list_bundles

    try:
        cfg = _config(args.config)
        store = _open_ro(cfg)
    except ConfigError as e:
        return _config_error(e)
    except StoreError as e:
        return _err(str(e))
    try:
        rows = list_bundles(store, include_pruned=args.all, limit=args.limit)
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return EXIT_OK
    header = ("SEQ", "BUNDLE", "CHECK", "OUTCOME", "CREATED", "STATE")
    table = [
        (
            str(r.sequence),
            r.bundle_id,
            r.check,
            r.outcome,
            r.created_at,
            "pruned" if r.pruned else "stored",
        )
        for r in rows
    ]
    widths = [max([len(h), *(len(t[i]) for t in table)]) for i, h in enumerate(header)]
    for line in (header, *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_evidence_show(args: argparse.Namespace) -> int:
    from reconciler.evidence.chain import verify_chain
    from reconciler.store.database import StoreError
    from reconciler.store.evidence_index import decode_statement, get_bundle

    try:
        cfg = _config(args.config)
        store = _open_ro(cfg)
    except ConfigError as e:
        return _config_error(e)
    except StoreError as e:
        return _err(str(e))
    try:
        row = get_bundle(store, args.id)
    finally:
        store.close()
    if row is None:
        return _err(f"no evidence bundle {args.id!r} (see 'compliance-agent evidence list')")
    out: dict[str, Any] = {"index": row.to_json()}
    if row.pruned:
        out["statement"] = None
        out["note"] = f"pruned at {row.pruned_at} by prune bundle {row.pruned_by}"
    else:
        path = cfg.evidence_directory / row.file_name
        try:
            data = path.read_bytes()
        except OSError as e:
            return _err(f"{path}: cannot read: {e.strerror} (run 'evidence verify --all')")
        key = _agent_public_key(cfg)
        if key is not None:
            report = verify_chain([(row.file_name, data)], [key])
            out["signature"] = "ok" if report.ok else [str(p) for p in report.problems]
        try:
            out["statement"] = decode_statement(data)
        except (ValueError, KeyError) as e:
            return _err(f"{path}: not a readable envelope: {e}")
    emit(out, args.output)
    return EXIT_OK


def _agent_public_key(cfg: AgentConfig) -> str | None:
    """The evidence signing key's public half, or None if this user can't read the key."""
    from reconciler.trust.keys import KeyFileError, load_signing_key

    try:
        return load_signing_key(cfg.signing_key_file).public_key_hex
    except KeyFileError:
        return None


def _print_report(report: Any, output: str) -> int:
    if output == "json":
        print(json.dumps(report.to_json(), indent=2))
    else:
        for p in report.problems:
            print(f"PROBLEM {p}")
        for n in report.notes:
            print(f"note: {n}")
        status = "intact" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{report.checked} bundle(s) checked, seq {report.first}..{report.last}: {status}")
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _external_checkpoints(files: list[str] | None) -> list[Any]:
    from reconciler.evidence.logverify import NoteSource

    return [NoteSource(f, Path(f).read_text(errors="replace")) for f in files or []]


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    from reconciler.evidence.chain import verify_store
    from reconciler.evidence.checkpoint import origin_for
    from reconciler.evidence.logverify import verify_local
    from reconciler.store.database import StoreError

    try:
        external = _external_checkpoints(args.checkpoint)
    except OSError as e:
        return _err(f"{e.filename}: cannot read: {e.strerror}")
    if args.config is None and args.public_key and not args.all:
        # Auditor mode: a copy of an evidence directory or an export, and a key.
        if not args.public_key or len(args.paths) != 1:
            return _err("without --config give --public-key HEX and one PATH (an evidence "
                        "directory or an export .tar.gz)")
        return _verify_offline(Path(args.paths[0]), list(args.public_key), external,
                               list(args.cosigner_key or []), args.output)
    try:
        cfg = _config(args.config)
    except ConfigError as e:
        return _config_error(e)
    if not args.all and not args.paths:
        return _err("name bundle files to verify, or pass --all for the whole local log")
    if args.public_key:
        keys = list(args.public_key)
    else:
        key = _agent_public_key(cfg)
        if key is None:
            return _err(
                f"cannot read the signing key {cfg.signing_key_file} to learn the agent's "
                "public key; pass --public-key HEX (printed by 'compliance-agent keygen')"
            )
        keys = [key]
    try:
        store = _open_ro(cfg)
    except StoreError as e:
        return _err(str(e))
    try:
        if args.all:
            report = verify_local(store, cfg.evidence_directory, keys,
                                  origin_for(cfg.site_id, cfg.host_id), external,
                                  cosigner_keys=args.cosigner_key or cfg.mcp_public_keys)
        else:
            report = verify_store(store, cfg.evidence_directory, keys,
                                  [Path(p) for p in args.paths])
    except OSError as e:
        return _err(f"{e.filename}: cannot read: {e.strerror}")
    except ValueError as e:
        return _err(str(e))
    finally:
        store.close()
    return _print_report(report, args.output)


def _verify_offline(
    path: Path, keys: list[str], external: list[Any], cosigner_keys: list[str], output: str
) -> int:
    from reconciler.evidence.export import ExportError, verify_export
    from reconciler.evidence.logverify import verify_directory

    try:
        if path.is_dir() and not (path / "manifest.json").exists():
            report = verify_directory(path, keys, external, cosigner_keys)
        else:
            report = verify_export(path, keys, external)
    except ExportError as e:
        return _err(str(e), EXIT_PROBLEMS)
    except OSError as e:
        return _err(f"{path}: cannot read: {e.strerror}")
    except ValueError as e:
        return _err(str(e))
    return _print_report(report, output)


def cmd_evidence_checkpoint(args: argparse.Namespace) -> int:
    from reconciler.evidence.checkpoint import Checkpointer, origin_for
    from reconciler.evidence.tree import TreeTampered

    ctx = _signing_context(args.config)
    if isinstance(ctx, int):
        return ctx
    cfg, signer, store = ctx
    cp = Checkpointer(store, signer, cfg.evidence_directory, origin_for(cfg.site_id, cfg.host_id),
                      clock=lambda: datetime.now(UTC))
    try:
        signed = cp.checkpoint()
    except TreeTampered as e:
        return _err(str(e), EXIT_PROBLEMS)
    finally:
        cp.close()
        store.close()
    if signed is None:
        print("the tree did not grow since the last checkpoint", file=sys.stderr)
    if args.output == "json":
        emit({"signed": signed is not None,
              "note": signed.note.render() if signed is not None else None}, "json")
    elif signed is not None:
        print(signed.note.render(), end="")
    return EXIT_OK


def cmd_evidence_export(args: argparse.Namespace) -> int:
    from reconciler.evidence.export import ExportError, write_export
    from specs.orders import parse_rfc3339_utc

    try:
        since = parse_rfc3339_utc(args.since) if args.since else None
        until = parse_rfc3339_utc(args.until) if args.until else None
    except ValueError as e:
        return _err(f"--since/--until: {e}")
    # Read-write: the export signs a checkpoint first if the tree grew since the last.
    ctx = _signing_context(args.config)
    if isinstance(ctx, int):
        return ctx
    cfg, signer, store = ctx
    try:
        summary = write_export(store, cfg.evidence_directory, signer, Path(args.out),
                               since=since, until=until)
    except ExportError as e:
        return _err(str(e))
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps(summary))
    else:
        emit(summary, "text")
    return EXIT_OK


def cmd_evidence_prune(args: argparse.Namespace) -> int:
    from reconciler.evidence.checkpoint import Checkpointer, origin_for
    from reconciler.evidence.retention import Pruner, RetentionPolicy
    from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter

    ctx = _signing_context(args.config)
    if isinstance(ctx, int):
        return ctx
    cfg, signer, store = ctx
    on_stored = []
    if not args.no_queue:
        # Prune evidence is evidence: it goes to the control plane like any other.
        from reconciler.store.outbox import Outbox

        on_stored.append(Outbox(store).on_stored)
    try:
        writer = EvidenceWriter(
            store,
            signer,
            cfg.evidence_directory,
            EvidenceIdentity.from_config(cfg),
            on_stored=on_stored,
        )
        result = Pruner(writer, RetentionPolicy.from_config(cfg)).prune()
        writer.close()
        if result.prune_bundles:
            # The prune bundles are leaves like any other: sign the grown tree now.
            cp = Checkpointer(store, signer, cfg.evidence_directory,
                              origin_for(cfg.site_id, cfg.host_id), clock=writer.clock)
            cp.checkpoint()
            cp.close()
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps(result.to_json()))
    else:
        emit(result.to_json(), "text")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add keygen, order and evidence subcommands; each sets `func(args) -> int`."""
    kg = subparsers.add_parser(
        "keygen", help="generate an Ed25519 signing key; print its public key"
    )
    kg.add_argument("--out", required=True, help="key file to create (mode 0600)")
    kg.add_argument("--force", action="store_true", help="replace an existing file")
    add_output_option(kg, help="text: the public key hex; json: public key, keyid and file")
    kg.set_defaults(func=cmd_keygen)

    # Commands whose answer is one document default to json, as they always printed it;
    # -o text shows the same fields for people.
    order = subparsers.add_parser("order", help="check signed orders without acting on them")
    osub = order.add_subparsers(dest="order_command", required=True, metavar="SUBCOMMAND")
    ov = osub.add_parser(
        "verify", help="would this order be admitted? prints JSON; exit 0 yes, 3 no"
    )
    ov.add_argument("file", help="DSSE envelope file of the order")
    ov.add_argument("--at", metavar="TIME",
                    help="evaluate at this RFC 3339 UTC time instead of now")
    add_config_option(ov)
    add_output_option(ov, default="json")
    ov.set_defaults(func=cmd_order_verify)

    ev = subparsers.add_parser("evidence", help="list, show, verify and prune evidence bundles")
    esub = ev.add_subparsers(dest="evidence_command", required=True, metavar="SUBCOMMAND")
    ls = esub.add_parser("list", help="bundles, newest first")
    add_output_option(ls)
    ls.add_argument("--all", action="store_true", help="include pruned bundles (tombstones)")
    ls.add_argument("--limit", type=int, default=None, metavar="N",
                    help="list at most N bundles (default: all)")
    add_config_option(ls)
    ls.set_defaults(func=cmd_evidence_list)

    sh = esub.add_parser("show", help="one bundle's statement (by bundle id or sequence)")
    sh.add_argument("id", help="bundle id or sequence number (see 'evidence list')")
    add_config_option(sh)
    add_output_option(sh, default="json")
    sh.set_defaults(func=cmd_evidence_show)

    vf = esub.add_parser(
        "verify",
        help="check signatures, the hash chain, the Merkle tree and its checkpoints; "
        "exit 0 intact, 1 not",
    )
    vf.add_argument("paths", nargs="*", metavar="PATH",
                    help="bundle files; with --public-key and no config: one evidence "
                         "directory or export (auditor mode)")
    vf.add_argument("--all", action="store_true", help="the whole local log (reads the config)")
    vf.add_argument(
        "--public-key",
        action="append",
        metavar="HEX",
        help="agent public key hex (default: derived from signingKeyFile)",
    )
    vf.add_argument(
        "--checkpoint", action="append", metavar="FILE",
        help="a checkpoint kept elsewhere (e.g. cosigned by the control plane): anything it "
        "covers must still be there",
    )
    vf.add_argument(
        "--cosigner-key", action="append", metavar="HEX",
        help="control-plane public key whose countersignatures must verify "
        "(default with a config: mcpPublicKeys)",
    )
    add_output_option(vf)
    add_config_option(vf, help=CONFIG_HELP + "; not read in auditor mode (--public-key and "
                               "one PATH, no --all)")
    vf.set_defaults(func=cmd_evidence_verify)

    ck = esub.add_parser("checkpoint", help="sign a checkpoint of the evidence tree now")
    add_config_option(ck)
    add_output_option(ck, help="text: the signed note; json: {signed, note}")
    ck.set_defaults(func=cmd_evidence_checkpoint)

    ex = esub.add_parser(
        "export", help="write bundles, checkpoints, proofs, key and VERIFY.md for an auditor"
    )
    ex.add_argument("--since", metavar="TIME",
                    help="RFC 3339 UTC: first bundle time (default: the beginning)")
    ex.add_argument("--until", metavar="TIME",
                    help="RFC 3339 UTC: last bundle time (default: now)")
    ex.add_argument("--out", required=True, help="FILE.tar.gz to create")
    add_config_option(ex)
    add_output_option(ex, default="json")
    ex.set_defaults(func=cmd_evidence_export)

    pr = esub.add_parser("prune", help="apply evidence retention now (writes a prune bundle)")
    add_config_option(pr)
    pr.add_argument(
        "--no-queue", action="store_true", help="do not queue the prune bundle for delivery"
    )
    add_output_option(pr, default="json")
    pr.set_defaults(func=cmd_evidence_prune)
