"""DEV ONLY: the demo's NATS part: a real nats-server (JetStream, TLS with
client certificates from the demo CA) and the evidence archiver process.
The control plane publishes to it when started with `--nats-url`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from demo.natsd import NatsServer
from demo.stage import REPO, Pki


class NatsStage:
    def __init__(self, state: Path, pki: Pki) -> None:
        self.nats = NatsServer(state / "nats", cert=pki.server_cert, key=pki.server_key,
                               ca=pki.ca).start()
        self.archive_dir = state / "archive"
        self.metrics = state / "archiver.prom"
        self.log = open(state / "archiver.log", "wb")  # noqa: SIM115 - child keeps it
        self.archiver = subprocess.Popen(
            [sys.executable, "-m", "demo.archiver", "run", "--nats-url", self.nats.url,
             "--ca", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key),
             "--dir", str(self.archive_dir), "--metrics", str(self.metrics)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)

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
