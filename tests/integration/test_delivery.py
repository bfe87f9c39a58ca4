"""Outbox + Deliverer against the real mTLS demo control plane."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import text

from reconciler.delivery.client import ControlPlaneClient
from reconciler.delivery.deliverer import Deliverer
from reconciler.store.database import Store, open_store
from reconciler.store.outbox import Outbox, OutboxState
from tests.support.agent import ChainedBundles, load, write_agent_config
from tests.support.control_plane import ControlPlaneThread
from tests.support.tls import TlsFiles, make_tls

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


def setup(tmp_path: Path, tls: TlsFiles, url: str) -> tuple[Store, Outbox, ControlPlaneClient]:
    path, _ = write_agent_config(tmp_path / "agent", tls, url, ["00" * 32])
    cfg = load(path)
    store = open_store(cfg.database_path)
    return store, Outbox(store, CLOCK), ControlPlaneClient(cfg)


CLOCK = Clock()


def enqueue(store: Store, outbox: Outbox, bundles: ChainedBundles, n: int) -> list[str]:
    ids = []
    with store.begin() as conn:
        for _ in range(n):
            bid, env = bundles.next()
            outbox.enqueue(conn, bid, env)
            ids.append(bid)
    return ids


def test_outage_then_recovery_drains_queue(tmp_path: Path, tls: TlsFiles) -> None:
    key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
        store, outbox, client = setup(tmp_path, tls, cp.url())
        bundles = ChainedBundles(key)
        enqueue(store, outbox, bundles, 50)
        # The backoff runs on the monotonic clock: this one moves with CLOCK.
        d = Deliverer(outbox, client, CLOCK, batch_size=20,
                      monotonic=lambda: CLOCK().timestamp())
        cp.set_outage(True)
        res = d.deliver_once()  # stops after the first refused batch
        assert (res.delivered, res.retried, res.dead) == (0, 20, 0)
        enqueue(store, outbox, bundles, 5)  # evidence keeps being produced during the outage
        cp.set_outage(False)
        total = 0
        for _ in range(20):  # bounded: each round moves the clock past the backoff cap
            total += d.deliver_once().delivered
            if outbox.stats().depth == 0:
                break
            CLOCK.advance(400)
        s = outbox.stats()
        assert (s.depth, s.dead, s.delivered, total) == (0, 0, 55, 55)
        summary = cp.storage.counters()
        assert summary.get("duplicates_suppressed", 0) == 0
        from demo.control_plane.app import build_summary

        report = build_summary(cp.storage)
        assert report["bundles_stored"] == 55 and report["chain_intact"], report
        client.close()


def test_redelivery_yields_same_receipt(tmp_path: Path, tls: TlsFiles) -> None:
    key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
        store, outbox, client = setup(tmp_path, tls, cp.url())
        ids = enqueue(store, outbox, ChainedBundles(key), 3)
        d = Deliverer(outbox, client, CLOCK)
        queued = outbox.claim_batch(10)
        assert d.deliver_once().delivered == 3
        first = {e.bundle_id: e.receipt_id for e in outbox.entries()}
        # As if the agent crashed after sending but before recording the receipts.
        with store.begin() as conn:
            for item in queued:
                conn.execute(
                    text("UPDATE outbox SET state = 'queued', receipt_id = NULL, envelope = :e"
                         " WHERE bundle_id = :id"),
                    {"e": item.envelope, "id": item.bundle_id},
                )
        assert d.deliver_once().delivered == 3
        assert {e.bundle_id: e.receipt_id for e in outbox.entries()} == first
        assert set(first) == set(ids)
        assert cp.storage.counters()["duplicates_suppressed"] == 3
        assert len(cp.storage.evidence()) == 3
        client.close()


def test_4xx_goes_to_dead_letter_and_retry_requeues(tmp_path: Path, tls: TlsFiles) -> None:
    key = SigningKey.generate()
    db = tmp_path / "cp.db"
    with ControlPlaneThread(tls, db, ["11" * 32]) as cp:  # does not trust the agent's key yet
        port = cp.port
        store, outbox, client = setup(tmp_path, tls, cp.url())
        enqueue(store, outbox, ChainedBundles(key), 4)
        res = Deliverer(outbox, client, CLOCK).deliver_once()
        assert (res.delivered, res.dead) == (0, 4)
        dead = outbox.entries(OutboxState.dead)
        assert len(dead) == 4 and all("422" in (e.last_error or "") for e in dead)
        assert all("BadSignature" in (e.last_error or "") for e in dead)
        client.close()
    # The operator fixes the server's key list, then re-queues the dead letters.
    with ControlPlaneThread(tls, db, [bytes(key.verify_key).hex()], port=port) as cp:
        client = ControlPlaneClient(load(tmp_path / "agent" / "config.json"))
        assert outbox.retry_dead([dead[0].bundle_id]) == 1
        assert Deliverer(outbox, client, CLOCK).deliver_once().delivered == 1
        assert outbox.retry_dead(None) == 3
        assert Deliverer(outbox, client, CLOCK).deliver_once().delivered == 3
        assert outbox.stats().dead == 0 and len(cp.storage.evidence()) == 4
        client.close()


def test_one_poison_envelope_does_not_sink_its_batch(tmp_path: Path, tls: TlsFiles) -> None:
    key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
        store, outbox, client = setup(tmp_path, tls, cp.url())
        bundles = ChainedBundles(key)
        enqueue(store, outbox, bundles, 2)
        with store.begin() as conn:
            outbox.enqueue(conn, "garbage", b"{not json")
        enqueue(store, outbox, bundles, 2)
        res = Deliverer(outbox, client, CLOCK).deliver_once()
        assert (res.delivered, res.dead) == (4, 1)
        (dead,) = outbox.entries(OutboxState.dead)
        assert dead.bundle_id == "garbage"
        client.close()


def test_ten_thousand_bundles_over_one_kept_alive_connection(
    tmp_path: Path, tls: TlsFiles
) -> None:
    key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [bytes(key.verify_key).hex()]) as cp:
        store, outbox, client = setup(tmp_path, tls, cp.url())
        enqueue(store, outbox, ChainedBundles(key), 10_000)
        res = Deliverer(outbox, client, CLOCK, batch_size=500, max_batches=100).deliver_once()
        assert res.delivered == 10_000
        info = client.connection_info()
        assert len(info) == 1, info
        m = re.search(r"Request Count: (\d+)", info[0])
        assert m and int(m.group(1)) == 20, info  # every batch on the same connection
        assert len(cp.storage.evidence()) == 10_000
        client.close()
