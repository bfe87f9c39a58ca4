"""Run the DEV ONLY demo control plane with real mutual TLS on 127.0.0.1.

`ControlPlaneThread` runs uvicorn in a thread of the test process on an
ephemeral port; `ControlPlaneProcess` runs `python -m demo.control_plane serve`
as a subprocess. Both wait for readiness by polling with a deadline.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from nacl.signing import SigningKey

from demo.control_plane.app import Settings, create_app
from demo.control_plane.storage import Storage
from tests.support.tls import TlsFiles

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ControlPlaneThread:
    def __init__(
        self,
        tls: TlsFiles,
        db: Path,
        agent_public_keys: list[str],
        signing_key: SigningKey | None = None,
        server_pem: Path | None = None,
        port: int = 0,
    ) -> None:
        self.storage = Storage(db)
        self.signing_key = signing_key or SigningKey.generate()
        settings = Settings(self.storage, agent_public_keys, self.signing_key)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(settings),
            ssl_certfile=str(server_pem or tls.server_pem),
            ssl_ca_certs=str(tls.ca_cert),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}"

    def set_outage(self, on: bool) -> None:
        self.storage.set_flag("outage", "on" if on else "off")

    def __enter__(self) -> ControlPlaneThread:
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "uvicorn to start")
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
        self.storage.close()


class ControlPlaneProcess:
    """`python -m demo.control_plane serve` in a subprocess (port 0 + port file)."""

    def __init__(self, tls: TlsFiles, workdir: Path, agent_public_keys: list[str]) -> None:
        self.workdir = workdir
        self.db = workdir / "cp.db"
        self.seed = workdir / "cp.seed"
        key = SigningKey.generate()
        self.seed.write_text(bytes(key).hex() + "\n")
        self.seed.chmod(0o600)
        self.public_key = bytes(key.verify_key).hex()
        self.port_file = workdir / "cp.port"
        argv = [
            sys.executable, "-m", "demo.control_plane", "serve", "--db", str(self.db),
            "--port", "0", "--port-file", str(self.port_file), "--cert", str(tls.server_pem),
            "--ca", str(tls.ca_cert), "--signing-key", str(self.seed),
        ]
        for k in agent_public_keys:
            argv += ["--agent-key", k]
        self.argv = argv
        self.log = workdir / "cp.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> ControlPlaneProcess:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        wait_for(self._ready, 20, "the control plane subprocess to listen")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"control plane exited: {self.log.read_text()}")
        if not self.port_file.exists():
            return False
        self.port = int(self.port_file.read_text())
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def url(self, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}"

    def summary(self) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "demo.control_plane", "summary", "--db", str(self.db)],
            cwd=REPO_ROOT, capture_output=True, check=True, timeout=60,
        )
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
