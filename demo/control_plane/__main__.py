"""DEV ONLY: `python -m demo.control_plane {serve,keygen,make-certs,order,baseline,outage,summary}`.

Every subcommand but `serve` and `keygen`/`make-certs` works on the SQLite file directly.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from demo.control_plane import BANNER


def load_seed(path: Path) -> SigningKey:
    return SigningKey(bytes.fromhex(path.read_text().strip()))


def _storage(args: argparse.Namespace) -> Any:
    from demo.control_plane.storage import Storage

    return Storage(Path(args.db))


def serve_on_socket(sock: socket.socket, args: argparse.Namespace) -> None:
    import uvicorn

    from demo.control_plane.app import Settings, create_app

    settings = Settings(
        storage=_storage(args),
        agent_public_keys=list(args.agent_key),
        signing_key=load_seed(Path(args.signing_key)),
        evidence_payload_type=args.evidence_payload_type,
    )
    config = uvicorn.Config(
        create_app(settings),
        ssl_certfile=args.cert,
        ssl_keyfile=args.key,
        ssl_ca_certs=args.ca,
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=30,
    )
    fanout = _fanout(args)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if fanout is not None:
            fanout.stop()


def _fanout(args: argparse.Namespace) -> Any:
    """Order wake-ups and evidence to JetStream when --nats-url is given."""
    if not args.nats_url:
        return None
    from demo.control_plane.fanout import FanOut, client_tls

    fanout = FanOut(_storage(args), args.nats_url, client_tls(args.ca, args.cert, args.key))
    fanout.start()
    print(f"publishing order wake-ups and evidence to {args.nats_url}", file=sys.stderr,
          flush=True)
    return fanout


def cmd_serve(args: argparse.Namespace) -> int:
    print(BANNER, file=sys.stderr, flush=True)
    args.agent_key = list(args.agent_key) + [
        Path(f).read_text().split()[0] for f in args.agent_key_file
    ]
    if not args.agent_key:
        print("serve: give --agent-key HEX or --agent-key-file FILE (the agent's evidence key)",
              file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"listening on https://{args.host}:{port} (mutual TLS required)", file=sys.stderr,
          flush=True)
    serve_on_socket(sock, args)
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
    public = bytes(key.verify_key).hex()
    if args.public_out:
        Path(args.public_out).write_text(public + "\n")
    print(public)
    return 0


def cmd_make_certs(args: argparse.Namespace) -> int:
    import trustme

    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    server = ca.issue_cert(*args.name)
    server.private_key_and_cert_chain_pem.write_to_path(str(out / "server.pem"))
    client = ca.issue_cert("compliance-agent-client")
    client.cert_chain_pems[0].write_to_path(str(out / "client.crt"))
    key_path = out / "client.key"
    client.private_key_pem.write_to_path(str(key_path))
    key_path.chmod(0o600)
    (out / "server.pem").chmod(0o600)
    print(f"wrote ca.pem, server.pem ({', '.join(args.name)}), client.crt, client.key to {out}")
    return 0


def cmd_order(args: argparse.Namespace) -> int:
    from demo.control_plane.app import make_order

    st = _storage(args)
    env = make_order(load_seed(Path(args.signing_key)), args.site, args.host, args.action,
                     json.loads(args.params), args.ttl)
    print(json.dumps({"id": st.add_order(args.site, args.host, env), "envelope": env}))
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from demo.control_plane.app import publish_baseline

    baseline = json.loads(Path(args.file).read_text())
    etag = publish_baseline(_storage(args), load_seed(Path(args.signing_key)), args.site,
                            args.host, baseline)
    print(json.dumps({"etag": etag, "version": baseline.get("version")}))
    return 0


def cmd_outage(args: argparse.Namespace) -> int:
    _storage(args).set_flag("outage", args.state)
    print(f"outage {args.state}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from demo.control_plane.app import build_summary

    print(json.dumps(build_summary(_storage(args)), indent=2))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m demo.control_plane",
        description="DEV ONLY demo control plane for compliance-agent (mutual TLS, SQLite).",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_db(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--db", required=True, help="SQLite file shared by server and CLI")
        return sp

    s = with_db(sub.add_parser("serve", help="run the HTTPS server (mutual TLS)"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    s.add_argument("--port-file", help="write the bound port here (for tests and scripts)")
    s.add_argument("--cert", required=True, help="server certificate chain + key PEM or cert")
    s.add_argument("--key", help="server private key PEM (if not inside --cert)")
    s.add_argument("--ca", required=True, help="CA that client certificates must chain to")
    s.add_argument("--agent-key", action="append", default=[],
                   help="agent Ed25519 public key (hex) trusted for evidence; repeatable")
    s.add_argument("--agent-key-file", action="append", default=[],
                   help="file holding an agent public key (hex), e.g. what keygen printed")
    s.add_argument("--signing-key", required=True, help="control plane seed file (hex)")
    s.add_argument("--evidence-payload-type", default="application/vnd.in-toto+json")
    s.add_argument("--log-level", default="warning")
    s.add_argument("--nats-url", help="tls://host:port of a NATS server with JetStream: publish "
                   "order wake-ups and every verified envelope (client cert: --cert/--key)")
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keygen", help="write an Ed25519 seed file (0600), print the public key")
    k.add_argument("--out", required=True)
    k.add_argument("--public-out", help="also write the public key (hex) to this file")
    k.set_defaults(func=cmd_keygen)

    c = sub.add_parser("make-certs", help="make a demo CA, server and client certificates")
    c.add_argument("--dir", required=True)
    c.add_argument("--name", action="append", default=None,
                   help="server certificate name (repeatable; default localhost, 127.0.0.1)")
    c.set_defaults(func=cmd_make_certs)

    o = with_db(sub.add_parser("order", help="sign and enqueue an order for a host"))
    o.add_argument("--signing-key", required=True)
    o.add_argument("--site", required=True)
    o.add_argument("--host", required=True)
    o.add_argument("--action", required=True)
    o.add_argument("--params", default="{}", help="JSON object")
    o.add_argument("--ttl", type=int, default=600)
    o.set_defaults(func=cmd_order)

    b = with_db(sub.add_parser("baseline", help="sign and publish a baseline JSON file"))
    b.add_argument("--signing-key", required=True)
    b.add_argument("--site", required=True)
    b.add_argument("--host", default="*", help="host id, or '*' for the whole site")
    b.add_argument("file")
    b.set_defaults(func=cmd_baseline)

    u = with_db(sub.add_parser("outage", help="simulate an outage: every /api call gets 503"))
    u.add_argument("state", choices=["on", "off"])
    u.set_defaults(func=cmd_outage)

    m = with_db(sub.add_parser("summary", help="bundles received, verified, chain, gaps"))
    m.set_defaults(func=cmd_summary)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "make-certs" and not args.name:
        args.name = ["localhost", "127.0.0.1"]
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
