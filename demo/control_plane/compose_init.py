"""DEV ONLY: prepare the shared volume for demo/docker-compose.yml.

    python -m demo.control_plane.compose_init /shared

Writes (once; an existing directory is left alone): a demo CA with server
(control-plane, localhost) and client certificates, the control plane's
order/baseline signing key, the agent's evidence signing key, a minimal local
baseline and the agent's config.json pointing at https://control-plane:8443.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trustme
from nacl.signing import SigningKey

from demo.control_plane import BANNER
from demo.natsd import NATS_CLIENT_PORT, nats_config


def write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_nats(out: Path, ca: trustme.CA) -> None:
    """The NATS server's certificate and configuration (JetStream, client certificates
    required), and the archiver's client certificate."""
    (out / "nats").mkdir(parents=True, exist_ok=True)
    (out / "archiver").mkdir(parents=True, exist_ok=True)
    nats = ca.issue_cert("nats", "localhost", "127.0.0.1")
    write_secret(out / "nats" / "server.pem", nats.private_key_and_cert_chain_pem.bytes())
    archiver = ca.issue_cert("archiver.demo")
    write_secret(out / "archiver" / "client.pem", archiver.private_key_and_cert_chain_pem.bytes())
    (out / "nats" / "nats-server.conf").write_text(nats_config(
        listen=f"0.0.0.0:{NATS_CLIENT_PORT}", cert=out / "nats" / "server.pem",
        key=out / "nats" / "server.pem", ca=out / "ca.pem", store_dir=out / "nats" / "jetstream"))


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "/shared")
    print(BANNER, file=sys.stderr)
    if (out / "agent" / "config.json").exists():
        print(f"{out} already initialised", file=sys.stderr)
        return 0
    (out / "agent").mkdir(parents=True, exist_ok=True)
    (out / "cp").mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    server = ca.issue_cert("control-plane", "localhost", "127.0.0.1")
    write_secret(out / "cp" / "server.pem", server.private_key_and_cert_chain_pem.bytes())
    write_nats(out, ca)
    client = ca.issue_cert("agent.demo")
    (out / "agent" / "client.crt").write_bytes(client.cert_chain_pems[0].bytes())
    write_secret(out / "agent" / "client.key", client.private_key_pem.bytes())

    cp_key, agent_key = SigningKey.generate(), SigningKey.generate()
    write_secret(out / "cp" / "signing.key", bytes(cp_key).hex().encode() + b"\n")
    (out / "cp" / "agent.pub").write_text(bytes(agent_key.verify_key).hex() + "\n")
    write_secret(out / "agent" / "signing.key", bytes(agent_key).hex().encode() + b"\n")
    (out / "agent" / "baseline.json").write_text(
        json.dumps({"version": 1, "policy_version": "1.0"}, indent=2) + "\n"
    )
    config = {
        "enable": True,
        "siteId": "demo-clinic",
        "hostId": "demo-host",
        "baselinePath": str(out / "agent" / "baseline.json"),
        "clientCertFile": str(out / "agent" / "client.crt"),
        "clientKeyFile": str(out / "agent" / "client.key"),
        "signingKeyFile": str(out / "agent" / "signing.key"),
        "caCertFile": str(out / "ca.pem"),
        "mcpPublicKeys": [bytes(cp_key.verify_key).hex()],
        "mcpUrl": "https://control-plane:8443",
        "allowedHosts": ["control-plane", "nats"],
        "natsUrl": f"tls://nats:{NATS_CLIENT_PORT}",
        "deploymentMode": "direct",
        "stateDirectory": str(out / "agent" / "state"),
        "statusSocket": None,
        "pollInterval": 15,
    }
    (out / "agent" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"initialised {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
