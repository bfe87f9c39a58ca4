"""The DEV ONLY demo control plane as a subprocess, driven through its CLI; its
signed orders verify with the agent's own DSSE implementation (interop)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.delivery.client import ControlPlaneClient, TransientError
from reconciler.delivery.deliverer import Deliverer
from reconciler.store.database import open_store
from reconciler.store.outbox import Outbox
from reconciler.trust.dsse import verify_envelope
from tests.support.agent import ChainedBundles, load, write_agent_config
from tests.support.control_plane import REPO_ROOT, ControlPlaneProcess
from tests.support.tls import make_tls

pytestmark = pytest.mark.integration
ORDER_TYPE = "application/vnd.compliance-agent.order+json"


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "demo.control_plane", *args], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_demo_control_plane_subprocess(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    key = SigningKey.generate()
    with ControlPlaneProcess(tls, tmp_path, [bytes(key.verify_key).hex()]) as cp:
        assert "DEV ONLY" in cp.log.read_text()
        cfg = load(write_agent_config(tmp_path / "agent", tls, cp.url(), [cp.public_key])[0])
        cli("order", "--db", str(cp.db), "--signing-key", str(cp.seed), "--site", "clinic-1",
            "--host", "host-a", "--action", "run_backup", "--params", '{"job": "nightly"}')
        with ControlPlaneClient(cfg) as client:
            page = client.fetch_orders()
            assert len(page.orders) == 1 and page.cursor == "1"
            payload = json.loads(verify_envelope(page.orders[0], ORDER_TYPE, [cp.public_key]))
            assert payload["action"] == "run_backup" and payload["params"] == {"job": "nightly"}
            assert len(payload["nonce"]) == 32 and payload["host_id"] == "host-a"
            assert client.fetch_orders(after=page.cursor).orders == []

            store = open_store(cfg.database_path)
            outbox = Outbox(store)
            bundles = ChainedBundles(key)
            with store.begin() as conn:
                for _ in range(3):
                    outbox.enqueue(conn, *bundles.next())
            cli("outage", "--db", str(cp.db), "on")
            with pytest.raises(TransientError):
                client.fetch_orders()
            assert Deliverer(outbox, client).deliver_once().retried == 3
            cli("outage", "--db", str(cp.db), "off")
            # An hour later every backoff has expired.
            def later() -> datetime:
                return datetime.now(UTC) + timedelta(hours=1)

            assert Deliverer(Outbox(store, later), client, later).deliver_once().delivered == 3
        summary = json.loads(cli("summary", "--db", str(cp.db)))
        assert summary["outage"] is False and summary["bundles_stored"] == 3
        assert summary["chain_intact"] and summary["rejected"] == 0


def test_demo_admin_endpoints_over_mtls(tmp_path: Path) -> None:
    import ssl

    import httpx

    from tests.support.control_plane import ControlPlaneThread

    tls = make_tls(tmp_path / "tls")
    cp_key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", ["00" * 32], signing_key=cp_key) as cp:
        ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
        ctx.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with httpx.Client(base_url=cp.url(), verify=ctx, trust_env=False) as http:
            r = http.post("/admin/orders", json={"site_id": "clinic-1", "host_id": "host-a",
                                                 "action": "collect_evidence"})
            assert r.status_code == 200
            env = r.json()["envelope"]
            pub = bytes(cp_key.verify_key).hex()
            assert json.loads(verify_envelope(env, ORDER_TYPE, [pub]))["action"] == (
                "collect_evidence")
            r = http.post("/admin/baseline", json={"site_id": "clinic-1",
                                                   "baseline": {"version": 2,
                                                                "policy_version": "1"}})
            etag = r.json()["etag"]
            got = http.get("/api/v1/sites/clinic-1/hosts/any/baseline")
            assert got.status_code == 200 and got.headers["etag"] == etag
            again = http.get("/api/v1/sites/clinic-1/hosts/any/baseline",
                             headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert http.post("/admin/outage", json={"enabled": True}).json() == {"outage": True}
            assert http.get("/api/v1/sites/clinic-1/hosts/host-a/orders").status_code == 503
            assert http.get("/admin/summary").json()["outage"] is True
            http.post("/admin/outage", json={"enabled": False})
            assert len(http.get("/api/v1/sites/clinic-1/hosts/host-a/orders").json()["orders"]) == 1
