"""Certificates for real mutual-TLS tests, made with trustme (no network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # CA that signed both server and client certificates
    server_pem: Path  # server private key + certificate chain (uvicorn --ssl-certfile)
    client_cert: Path
    client_key: Path  # mode 0600, as the agent demands


def make_tls(
    directory: Path,
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    client_name: str = "agent.test",
) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    files = TlsFiles(
        ca_cert=directory / "ca.pem",
        server_pem=directory / "server.pem",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_cert))
    ca.issue_cert(*server_names).private_key_and_cert_chain_pem.write_to_path(
        str(files.server_pem)
    )
    client = ca.issue_cert(client_name)
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    files.client_key.chmod(0o600)
    files.server_pem.chmod(0o600)
    return files
