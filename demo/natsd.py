"""DEV ONLY: a real `nats-server` (Debian package) with JetStream on loopback,
TLS with client certificates from the demo CA (`verify: true`: a client
without one cannot connect). Used by `make demo`, the integration tests and
the benchmarks; `nats_config` also writes the file docker-compose mounts.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NATS_CLIENT_PORT = 4222  # the port docker-compose publishes (make demo picks a free one)
EVIDENCE_STREAM = "EVIDENCE"
EVIDENCE_SUBJECTS = "evidence.>"
ARCHIVER_DURABLE = "archiver"


def nats_config(*, listen: str, cert: Path | str, key: Path | str, ca: Path | str,
                store_dir: Path | str, ports_dir: Path | str | None = None) -> str:
    """nats-server configuration: TLS required and verified, JetStream on disk."""
    lines = [
        "# DEV ONLY: demo NATS server for compliance-agent (never production).",
        f'listen: "{listen}"',
        "server_name: compliance-agent-demo",
        "tls {",
        f'  cert_file: "{cert}"',
        f'  key_file: "{key}"',
        f'  ca_file: "{ca}"',
        "  verify: true",
        "  timeout: 2",
        "}",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        "  max_memory_store: 64MB",
        "  max_file_store: 1GB",
        "}",
    ]
    if ports_dir is not None:
        lines.append(f'ports_file_dir: "{ports_dir}"')
    return "\n".join(lines) + "\n"


class NatsServer:
    """`nats-server -c FILE` as a child process; `port` 0 picks a free one on first start,
    and a restart reuses it (so clients can reconnect to the same URL)."""

    def __init__(self, workdir: Path, *, cert: Path, key: Path, ca: Path, port: int = 0,
                 binary: str | None = None) -> None:
        self.workdir = workdir
        self.binary = binary or shutil.which("nats-server") or "nats-server"
        self.cert, self.key, self.ca = cert, key, ca
        self.port = port
        self.store_dir = workdir / "jetstream"
        self.log_path = workdir / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.port}"

    def url_for(self, host: str) -> str:
        return f"tls://{host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.workdir / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir()
        conf = self.workdir / "nats-server.conf"
        conf.write_text(nats_config(listen=f"127.0.0.1:{self.port or -1}", cert=self.cert,
                                    key=self.key, ca=self.ca, store_dir=self.store_dir,
                                    ports_dir=ports_dir))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not listen; see {self.log_path}")
            port = self._port_from(ports_dir)
            if port and _listening(port):
                self.port = port
                return self
            time.sleep(0.02)

    def _port_from(self, ports_dir: Path) -> int | None:
        assert self.proc is not None
        path = ports_dir / f"{Path(self.binary).name}_{self.proc.pid}.ports"
        try:
            client = json.loads(path.read_text())["nats"][0]
        except (OSError, ValueError, KeyError, IndexError):
            return None
        return int(str(client).rsplit(":", 1)[1])

    def stop(self, *, kill: bool = False) -> None:
        """Terminate (or SIGKILL, to simulate a crash) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
