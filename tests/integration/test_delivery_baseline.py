"""BaselineResolver against the real mTLS demo control plane (signed baselines, ETag)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from demo.control_plane.app import publish_baseline
from reconciler.delivery.baseline_resolver import BaselineResolver
from reconciler.delivery.client import ControlPlaneClient
from reconciler.store.database import open_store
from specs.config import AgentConfig
from tests.support.agent import load, write_agent_config
from tests.support.control_plane import ControlPlaneThread
from tests.support.tls import TlsFiles, make_tls

pytestmark = pytest.mark.integration


class CountingClient:
    """Wraps the real client to count requests and 304s."""

    def __init__(self, inner: ControlPlaneClient) -> None:
        self.inner = inner
        self.calls: list[str | None] = []

    def fetch_baseline(self, etag: str | None = None):  # type: ignore[no-untyped-def]
        self.calls.append(etag)
        return self.inner.fetch_baseline(etag)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


def config(tmp_path: Path, tls: TlsFiles, url: str, cp_key: SigningKey) -> AgentConfig:
    path, _ = write_agent_config(
        tmp_path / "agent", tls, url, [bytes(cp_key.verify_key).hex()]
    )
    return load(path)


def test_signed_baseline_lifecycle(tmp_path: Path, tls: TlsFiles) -> None:
    cp_key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", ["00" * 32], signing_key=cp_key) as cp:
        cfg = config(tmp_path, tls, cp.url(), cp_key)
        store = open_store(cfg.database_path)
        client = CountingClient(ControlPlaneClient(cfg))
        src = BaselineResolver(cfg, client, store, cfg.mcp_public_keys)

        # Nothing published (404): the local file applies, no rejection.
        base, where = src.current()
        assert base.version == 1 and "local" in where and src.take_rejections() == []

        etag = publish_baseline(cp.storage, cp_key, "clinic-1", "*",
                                {"version": 5, "policy_version": "2.0"})
        base, where = src.current()
        assert (base.version, base.policy_version) == (5, "2.0") and "control plane" in where
        # Unchanged: a conditional request, answered 304, keeps version 5.
        base, _ = src.current()
        assert base.version == 5 and client.calls[-1] == etag

        # Signed by an untrusted key: refused once with a reason, version 5 stays.
        publish_baseline(cp.storage, SigningKey.generate(), "clinic-1", "*",
                         {"version": 9, "policy_version": "evil"})
        assert src.current()[0].version == 5
        assert src.current()[0].version == 5
        rej = src.take_rejections()
        assert [r.reason for r in rej] == ["UnknownKey"]

        # Invalid content, properly signed: refused.
        publish_baseline(cp.storage, cp_key, "clinic-1", "host-a",
                         {"version": 10, "policy_version": "x", "no_such_kind": {}})
        assert src.current()[0].version == 5
        assert [r.reason for r in src.take_rejections()] == ["InvalidBaseline"]

        # Older version: never rolled back.
        publish_baseline(cp.storage, cp_key, "clinic-1", "host-a",
                         {"version": 3, "policy_version": "old"})
        assert src.current()[0].version == 5
        assert [r.reason for r in src.take_rejections()] == ["BaselineRollback"]

        # Newer and valid: applied.
        publish_baseline(cp.storage, cp_key, "clinic-1", "host-a",
                         {"version": 6, "policy_version": "2.1"})
        assert src.current()[0].version == 6
        client.inner.close()

    # Restart with the control plane unreachable: the stored signed baseline is used.
    store.close()
    store = open_store(cfg.database_path)
    offline = BaselineResolver(cfg, ControlPlaneClient(cfg), store, cfg.mcp_public_keys)
    base, where = offline.current()
    assert base.version == 6 and "control plane" in where
    assert offline.last_fetch_error is not None
    # Without a client at all, same answer.
    assert BaselineResolver(cfg, None, store, cfg.mcp_public_keys).current()[0].version == 6
    # A revoked control-plane key makes the stored one unusable: local file again.
    revoked = BaselineResolver(cfg, None, store, ["22" * 32])
    assert revoked.current()[0].version == 1
    # A local baseline with a higher version wins over the remote one.
    cfg.baseline_path.write_text(json.dumps({"version": 7, "policy_version": "local"}))
    assert BaselineResolver(cfg, None, store, cfg.mcp_public_keys).current()[0].version == 7
