"""Deliverer decisions against a scripted control plane (httpx.MockTransport)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from reconciler.delivery.client import ControlPlaneClient
from reconciler.delivery.deliverer import Deliverer
from reconciler.store.database import Store, open_store
from reconciler.store.outbox import Outbox, OutboxState
from specs.backoff import Backoff
from specs.config import parse_config
from tests.support.tls import make_tls

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def clock() -> datetime:
    return NOW


Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def env(tmp_path: Path) -> tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]]:
    tls = make_tls(tmp_path / "tls")
    cfg = parse_config(
        {
            "siteId": "s",
            "hostId": "h",
            "baselinePath": "/b",
            "clientCertFile": str(tls.client_cert),
            "clientKeyFile": str(tls.client_key),
            "signingKeyFile": "/s",
            "caCertFile": str(tls.ca_cert),
            "mcpPublicKeys": ["ab" * 32],
            "deploymentMode": "direct",
            "mcpUrl": "https://mcp.local",
            "stateDirectory": str(tmp_path / "state"),
        }
    )
    store = open_store(cfg.database_path)
    outbox = Outbox(store, clock)
    with store.begin() as conn:
        for i in range(4):
            outbox.enqueue(conn, f"b{i}", json.dumps({"n": i}).encode())

    def client(handler: Handler) -> ControlPlaneClient:
        return ControlPlaneClient(cfg, transport=httpx.MockTransport(handler))

    return store, outbox, client


def ok_all(req: httpx.Request) -> list[dict[str, object]]:
    envs = json.loads(req.content)["envelopes"]
    return [{"bundle_id": f"b{e['n']}", "status": 201, "receipt_id": f"r{e['n']}"} for e in envs]


def test_mixed_batch_results(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]],
) -> None:
    _, outbox, make = env

    def handler(req: httpx.Request) -> httpx.Response:
        res = ok_all(req)
        res[1] = {"bundle_id": "b1", "status": 422, "error": "BadSignature"}
        res[2] = {"bundle_id": "b2", "status": 503, "error": "busy"}
        res[3] = {"bundle_id": "zzz", "status": 201, "receipt_id": "stolen"}  # not ours
        return httpx.Response(200, json={"results": res})

    res = Deliverer(outbox, make(handler), clock, backoff=Backoff(1, 10)).deliver_once()
    assert (res.delivered, res.retried, res.dead) == (1, 2, 1)
    by = {e.bundle_id: e for e in outbox.entries()}
    assert by["b0"].state is OutboxState.delivered and by["b0"].receipt_id == "r0"
    assert by["b1"].state is OutboxState.dead and "BadSignature" in (by["b1"].last_error or "")
    for b in ("b2", "b3"):
        assert by[b].state is OutboxState.queued
        assert NOW.timestamp() <= by[b].next_attempt_at <= NOW.timestamp() + 1  # attempt 1: <= base


@pytest.mark.parametrize("status", [401, 403, 404])
def test_request_level_refusal_dead_letters_nothing(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]], status: int
) -> None:
    _, outbox, make = env
    res = Deliverer(outbox, make(lambda r: httpx.Response(status)), clock).deliver_once()
    assert (res.delivered, res.retried, res.dead) == (0, 4, 0)
    assert outbox.stats().dead == 0


def test_batch_400_falls_back_to_single_posts(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]],
) -> None:
    _, outbox, make = env
    seen: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/batch"):
            return httpx.Response(400, json={"error": "bad body"})
        key = req.headers.get("idempotency-key")
        seen.append(key)
        if key == "b2":
            return httpx.Response(422, json={"error": "Malformed"})
        return httpx.Response(201, json={"bundle_id": key, "receipt_id": f"r-{key}"})

    res = Deliverer(outbox, make(handler), clock).deliver_once()
    assert (res.delivered, res.dead) == (3, 1) and seen == ["b0", "b1", "b2", "b3"]


def test_garbled_answer_and_transport_error_retry(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]],
) -> None:
    _, outbox, make = env
    res = Deliverer(
        outbox, make(lambda r: httpx.Response(200, text="<html>")), clock
    ).deliver_once()
    assert (res.retried, res.dead) == (4, 0)

    def boom(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with make(boom) as client:
        def in_2027() -> datetime:
            return datetime(2027, 1, 1, tzinfo=UTC)

        outbox2 = Outbox(outbox.store, in_2027)
        res = Deliverer(outbox2, client, in_2027).deliver_once()
    assert (res.retried, res.dead) == (4, 0)
    assert all(e.attempts == 2 for e in outbox.entries())


def test_backoff_is_capped_full_jitter() -> None:
    b, rng = Backoff(base=1, cap=30), random.Random(7)
    samples = [b.full_jitter(n, rng) for n in range(1, 40) for _ in range(20)]
    assert all(0 <= s <= 30 for s in samples)
    assert max(b.full_jitter(1, rng) for _ in range(200)) <= 1
    assert max(b.full_jitter(20, rng) for _ in range(200)) > 15  # reaches toward the cap


def test_old_receipts_are_pruned_hourly(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]],
) -> None:
    _, outbox, make = env
    outbox.settle(delivered=[("b0", "r0")])
    t = [NOW]
    mono = [0.0]

    def advance(seconds: float) -> None:
        t[0] = datetime.fromtimestamp(NOW.timestamp() + seconds, UTC)
        mono[0] = seconds

    later = Outbox(outbox.store, lambda: t[0])
    d = Deliverer(
        later, make(lambda r: httpx.Response(503)), lambda: t[0], keep_delivered_seconds=100,
        monotonic=lambda: mono[0],
    )
    d.deliver_once()
    assert later.stats().delivered == 1  # not old enough yet
    advance(200)
    d.deliver_once()
    assert later.stats().delivered == 1  # pruned at most hourly (monotonic)
    advance(4000)
    d.deliver_once()
    assert later.stats().delivered == 0


def test_batches_respect_byte_budget(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]],
) -> None:
    _, outbox, make = env
    sizes: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sizes.append(len(json.loads(req.content)["envelopes"]))
        return httpx.Response(200, json={"results": ok_all(req)})

    d = Deliverer(outbox, make(handler), clock, max_batch_bytes=20)  # each envelope ~8 bytes
    assert d.deliver_once().delivered == 4
    assert sizes == [2, 2]


def test_oversized_answer_is_cut_off_and_retried(
    env: tuple[Store, Outbox, Callable[[Handler], ControlPlaneClient]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import reconciler.delivery.client

    monkeypatch.setattr(reconciler.delivery.client, "MAX_RESPONSE_BYTES", 1000)
    _, outbox, make = env
    big = httpx.Response(200, content=b"x" * 5000)
    res = Deliverer(outbox, make(lambda r: big), clock).deliver_once()
    assert (res.retried, res.dead) == (4, 0)
    assert "larger than 1000 bytes" in (outbox.entries()[0].last_error or "")
