"""DEV ONLY: the demo's stage: throwaway PKI, the demo control plane process,
a systemd container standing in for a clinic's NixOS host, and the agent
wired to both. Used by demo/run_demo.py; not part of the product."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NEEDED_TOOLS = ("systemd-nspawn", "debootstrap", "nsenter", "nft", "ip", "nats-server")
DEBIAN_PACKAGES = "systemd-container debootstrap nftables iproute2 nats-server"


def preflight() -> list[str]:
    """What is missing to run the demo (empty when ready)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (it boots a systemd container and changes its nftables)")
    missing = [t for t in NEEDED_TOOLS if shutil.which(t) is None]
    if missing:
        problems.append(f"tools {', '.join(missing)} (Debian: apt-get install "
                        f"--no-install-recommends {DEBIAN_PACKAGES})")
    if not Path("/sys/fs/cgroup/systemd").is_dir():
        problems.append("the hybrid cgroup layout (/sys/fs/cgroup/systemd)")
    return problems


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    import trustme

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("agent.clinic-demo.local")
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key",
              directory / "client.pem", directory / "client.key")
    ca.cert_pem.write_to_path(str(pki.ca))
    server.cert_chain_pems[0].write_to_path(str(pki.server_cert))
    server.private_key_pem.write_to_path(str(pki.server_key))
    client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
    client.private_key_pem.write_to_path(str(pki.client_key))
    for key in (pki.server_key, pki.client_key):
        key.chmod(0o600)
    return pki


class ControlPlane:
    """`python -m demo.control_plane serve` as a child process on 127.0.0.1."""

    def __init__(self, state: Path, pki: Pki, agent_public_key: str,
                 nats_url: str | None = None) -> None:
        from nacl.signing import SigningKey

        self.db = state / "control-plane.db"
        self.seed_file = state / "control-plane.seed"
        self.signing_key = SigningKey.generate()
        self.seed_file.write_text(self.signing_key.encode().hex() + "\n")
        self.seed_file.chmod(0o600)
        self.public_key = self.signing_key.verify_key.encode().hex()
        port_file = state / "control-plane.port"
        self.log = open(state / "control-plane.log", "wb")  # noqa: SIM115 - child keeps it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "demo.control_plane", "serve", "--db", str(self.db),
             "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
             "--cert", str(pki.server_cert), "--key", str(pki.server_key), "--ca", str(pki.ca),
             "--agent-key", agent_public_key, "--signing-key", str(self.seed_file),
             "--log-level", "warning", *(["--nats-url", nats_url] if nats_url else [])],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control plane did not start; see {state}/control-plane.log")
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def cli(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "demo.control_plane", *args, "--db",
                              str(self.db)], cwd=REPO, capture_output=True, text=True,
                             timeout=30, check=True)
        return out.stdout

    def storage(self) -> Any:
        from demo.control_plane.storage import Storage

        return Storage(self.db)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def agent_config(state: Path, pki: Pki, cp: ControlPlane, signing_key: Path,
                 window: str, nats_url: str | None = None) -> Path:
    cfg = {
        "enable": True, "siteId": "clinic-demo", "hostId": "exam-room-1",
        "deploymentMode": "reseller", "resellerId": "msp-demo",
        "baselinePath": str(state / "baseline.json"),
        "clientCertFile": str(pki.client_cert), "clientKeyFile": str(pki.client_key),
        "signingKeyFile": str(signing_key), "caCertFile": str(pki.ca),
        "mcpPublicKeys": [cp.public_key],
        "mcpUrl": f"https://localhost:{cp.port}", "allowedHosts": ["localhost"],
        "maintenanceWindow": window, "pollInterval": 300 if nats_url else 5,
        "natsUrl": nats_url,
        "stateDirectory": str(state / "agent"), "statusSocket": None,
        "metricsTextfile": str(state / "agent" / "compliance_agent.prom"),
    }
    path = state / "agent-config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def write_baseline(state: Path, body: dict[str, Any]) -> None:
    path = state / "baseline.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2))
    tmp.replace(path)


class Stage(ExitStack):
    """Everything the demo starts, torn down in reverse on exit."""
