"""Real mutual TLS between ControlPlaneClient and a uvicorn server on 127.0.0.1."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
from nacl.signing import SigningKey

from reconciler.delivery.client import (
    ClientConfigError,
    ControlPlaneClient,
    PermanentError,
    TransientError,
)
from specs.config import AgentConfig
from tests.support.agent import ChainedBundles, load, write_agent_config
from tests.support.control_plane import ControlPlaneThread
from tests.support.tls import TlsFiles, make_tls

pytestmark = pytest.mark.integration


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


def agent(tmp_path: Path, tls: TlsFiles, url: str, **kw: object) -> tuple[AgentConfig, SigningKey]:
    path, key = write_agent_config(tmp_path / "agent", tls, url, ["00" * 32], **kw)
    return load(path), key


def test_round_trip_receipt_is_idempotent_and_server_date_seen(
    tmp_path: Path, tls: TlsFiles
) -> None:
    key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
        cfg, _ = agent(tmp_path, tls, cp.url())
        bundles = ChainedBundles(key)
        bid, env = bundles.next()
        with ControlPlaneClient(cfg) as client:
            first = client.post_evidence(bid, env)
            again = client.post_evidence(bid, env)
            assert first.created and not again.created
            assert first.receipt_id == again.receipt_id
            batch = client.post_evidence_batch([(bid, env), bundles.next()])
            assert batch[0].status == 200 and batch[0].receipt_id == first.receipt_id
            assert batch[1].status == 201 and batch[1].receipt_id
            assert client.last_server_date is not None


def test_wrong_ca_is_refused(tmp_path: Path, tls: TlsFiles) -> None:
    other = make_tls(tmp_path / "other")
    with ControlPlaneThread(tls, tmp_path / "cp.db", ["00" * 32]) as cp:
        # The agent trusts another CA (and holds a client cert from it).
        cfg, _ = agent(tmp_path, other, cp.url())
        with ControlPlaneClient(cfg) as client, pytest.raises(TransientError) as err:
            client.fetch_orders()
        assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_wrong_host_name_is_refused(tmp_path: Path, tls: TlsFiles) -> None:
    # Same CA, but the server's certificate names another host.
    wrong = make_tls(tmp_path / "wrong", server_names=("mcp.example.org",))
    with ControlPlaneThread(wrong, tmp_path / "cp.db", ["00" * 32]) as cp:
        cfg, _ = agent(tmp_path, wrong, cp.url())
        with ControlPlaneClient(cfg) as client, pytest.raises(TransientError) as err:
            client.fetch_orders()
        assert "match" in str(err.value).lower() or "hostname" in str(err.value).lower()


def test_server_refuses_client_without_certificate(tmp_path: Path, tls: TlsFiles) -> None:
    with ControlPlaneThread(tls, tmp_path / "cp.db", ["00" * 32]) as cp:
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))  # no client cert loaded
        with httpx.Client(verify=ctx, trust_env=False) as plain, pytest.raises(
            httpx.TransportError
        ):
            plain.get(cp.url() + "/api/v1/sites/s/hosts/h/orders")
        # With the certificate, the same request works.
        cfg, _ = agent(tmp_path, tls, cp.url())
        with ControlPlaneClient(cfg) as client:
            assert client.fetch_orders().orders == []


def test_client_refuses_host_outside_allowlist(tmp_path: Path, tls: TlsFiles) -> None:
    cfg, _ = agent(tmp_path, tls, "https://localhost:1")
    bad = cfg.model_copy(update={"allowed_hosts": ["mcp.local"]})
    with pytest.raises(ClientConfigError, match="allowedHosts"):
        ControlPlaneClient(bad)


def test_client_refuses_group_readable_key(tmp_path: Path, tls: TlsFiles) -> None:
    cfg, _ = agent(tmp_path, tls, "https://localhost:1")
    tls.client_key.chmod(0o640)
    with pytest.raises(ClientConfigError, match="chmod"):
        ControlPlaneClient(cfg)


def test_4xx_is_permanent_5xx_transient(tmp_path: Path, tls: TlsFiles) -> None:
    trusted = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(trusted.verify_key).hex()]) as cp:
        cfg, _ = agent(tmp_path, tls, cp.url())
        bid, env = ChainedBundles(SigningKey.generate()).next()  # untrusted signer
        with ControlPlaneClient(cfg) as client:
            with pytest.raises(PermanentError) as perm:
                client.post_evidence(bid, env)
            assert perm.value.status == 422
            cp.set_outage(True)
            with pytest.raises(TransientError) as trans:
                client.post_evidence(bid, env)
            assert trans.value.status == 503
