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

from reconciler.delivery import Deliverer
from reconciler.mcp import ControlPlaneClient, TransientError
from reconciler.outbox import Outbox
from reconciler.store import open_store
from reconciler.trust import verify_envelope
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
