"""DEV ONLY: the demo's NATS part: a real nats-server (JetStream, TLS with
client certificates from the demo CA) and the evidence archiver process.
The control plane publishes to it when started with `--nats-url`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from demo.natsd import NATS_CLIENT_PORT, NatsServer
from demo.stage import REPO, Pki

# What `make demo` runs beside the systemd container, by docker-compose service
# name, with the port each listens on by default (make demo picks free ports on
# 127.0.0.1; docker-compose.yml publishes these; a test checks the two agree).
CONTROL_PLANE_PORT = 8443
STACK: dict[str, list[int]] = {
    "nats": [NATS_CLIENT_PORT], "control-plane": [CONTROL_PLANE_PORT],
    "archiver": [], "agent": [],
}


def archiver_argv(*, nats_url: str, ca: str, cert: str, key: str | None, directory: str,
                  metrics: str) -> list[str]:
    return ["python", "-m", "demo.archiver", "run", "--nats-url", nats_url, "--ca", ca,
            "--cert", cert, *(["--key", key] if key else []), "--dir", directory,
            "--metrics", metrics]


class NatsStage:
    def __init__(self, state: Path, pki: Pki) -> None:
        self.nats = NatsServer(state / "nats", cert=pki.server_cert, key=pki.server_key,
                               ca=pki.ca).start()
        self.archive_dir = state / "archive"
        self.metrics = state / "archiver.prom"
        self.log = open(state / "archiver.log", "wb")  # noqa: SIM115 - child keeps it
        argv = archiver_argv(nats_url=self.nats.url, ca=str(pki.ca), cert=str(pki.client_cert),
                             key=str(pki.client_key), directory=str(self.archive_dir),
                             metrics=str(self.metrics))
        self.archiver = subprocess.Popen([sys.executable, *argv[1:]], cwd=REPO,
                                         stdout=self.log, stderr=subprocess.STDOUT)

    def tally(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "demo.archiver", "tally", "--dir",
                              str(self.archive_dir)], cwd=REPO, capture_output=True, text=True,
                             timeout=60, check=True)
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def lag(self) -> str:
        try:
            for line in self.metrics.read_text().splitlines():
                if line.startswith("demo_archiver_lag_messages "):
                    return line.split()[1]
        except OSError:
            pass
        return "?"

    def stop(self) -> None:
        self.archiver.terminate()
        try:
            self.archiver.wait(10)
        except subprocess.TimeoutExpired:
            self.archiver.kill()
        self.log.close()
        self.nats.stop()
