"""Client side of the status socket: one HTTP/1.0 GET over a unix socket.

Standard library `socket` only, so `compliance-agent status` can ask the
daemon without importing the server's machinery (http.server, logging, ...).
"""

from __future__ import annotations

import socket
from pathlib import Path


def unix_get(path: Path, route: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Tiny HTTP/1.0 GET over a unix socket (used by the CLI and tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(f"GET {route} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    code = int(head.split(b" ", 2)[1])
    return code, body
