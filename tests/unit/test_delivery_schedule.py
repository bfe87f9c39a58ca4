"""Delivery runs on the monotonic clock, in chain order, and resumes at once
(issue 14, findings 3 and 6): a wall-clock step never parks the queue or lets
later bundles overtake earlier ones; one success ends the backoff for every
bundle; a 4xx that is not the control plane's verdict on the bundle (a proxy
answering) is retried, not dead-lettered."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.delivery.client import ControlPlaneClient
from reconciler.delivery.deliverer import Deliverer
from reconciler.ops.clock_step import ClockStepDetector
from reconciler.store.database import open_store
from reconciler.store.outbox import Outbox, OutboxState
from specs.backoff import Backoff
from specs.config import parse_config
from tests.support.tls import make_tls

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CAP = 30.0


class Clocks:
    """A wall clock that can be stepped and a monotonic clock that only advances."""

    def __init__(self) -> None:
        self.wall_now = NOW
        self.mono_now = 1000.0

    def wall(self) -> datetime:
        return self.wall_now

    def mono(self) -> float:
        return self.mono_now

    def advance(self, seconds: float) -> None:
        self.wall_now += timedelta(seconds=seconds)
        self.mono_now += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall_now += timedelta(seconds=seconds)


Handler = Callable[[httpx.Request], httpx.Response]


class Env:
    def __init__(self, tmp_path: Path) -> None:
        tls = make_tls(tmp_path / "tls")
        self.cfg = parse_config({
            "siteId": "s", "hostId": "h", "baselinePath": "/b",
            "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),
            "signingKeyFile": "/s", "caCertFile": str(tls.ca_cert),
            "mcpPublicKeys": ["ab" * 32], "deploymentMode": "direct",
            "mcpUrl": "https://mcp.local", "stateDirectory": str(tmp_path / "state"),
        })
        self.store = open_store(self.cfg.database_path)
        self.clocks = Clocks()
        self.outbox = Outbox(self.store, self.clocks.wall)
        self.sent: list[str] = []  # bundle ids in the order the control plane received them
        self.answer: Handler = self.ok

    def enqueue(self, *ids: str) -> None:
        with self.store.begin() as conn:
            for b in ids:
                self.outbox.enqueue(conn, b, json.dumps({"id": b}).encode())

    def ok(self, req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/batch"):
            ids = [e["id"] for e in json.loads(req.content)["envelopes"]]
            self.sent += ids
            return httpx.Response(200, json={"results": [
                {"bundle_id": b, "status": 201, "receipt_id": f"r-{b}"} for b in ids]})
        key = req.headers["idempotency-key"]
        self.sent.append(key)
        return httpx.Response(201, json={"bundle_id": key, "receipt_id": f"r-{key}"})

    def deliverer(self, batch_size: int = 500) -> Deliverer:
        client = ControlPlaneClient(
            self.cfg, transport=httpx.MockTransport(lambda r: self.answer(r)))
        return Deliverer(self.outbox, client, self.clocks.wall, batch_size=batch_size,
                         backoff=Backoff(base=1.0, cap=CAP), monotonic=self.clocks.mono)

    def states(self) -> dict[str, OutboxState]:
        return {e.bundle_id: e.state for e in self.outbox.entries()}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def unavailable(req: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json={"error": "down"})


def test_a_wall_clock_step_forward_and_back_neither_parks_nor_reorders(env: Env) -> None:
    d = env.deliverer()
    env.clocks.step_wall(3 * 86400)  # +3 days, and the control plane is down
    env.enqueue("b0", "b1", "b2")
    env.answer = unavailable
    d.deliver_once()
    assert all(e.next_attempt_at > NOW.timestamp() + 3 * 86400 - 1 for e in env.outbox.entries())
    env.clocks.step_wall(-3 * 86400)  # corrected; the control plane is back
    env.answer = env.ok
    env.enqueue("b3")
    env.clocks.advance(CAP)  # at most one capped backoff later, on the monotonic clock
    assert d.deliver_once().delivered == 4
    assert env.sent == ["b0", "b1", "b2", "b3"], "delivered in chain order: no gap"


def test_a_restart_clamps_a_retry_time_written_by_a_wrong_clock(env: Env) -> None:
    env.enqueue("b0", "b1")
    env.clocks.step_wall(3 * 86400)
    env.answer = unavailable
    env.deliverer().deliver_once()
    env.clocks.step_wall(-3 * 86400)
    env.answer = env.ok
    fresh = env.deliverer()  # a restarted daemon
    fresh.deliver_once()
    assert env.sent == [] and 0 < fresh.wait_seconds() <= CAP, "resumes the backoff, capped"
    env.clocks.advance(CAP)
    assert fresh.deliver_once().delivered == 2 and env.sent == ["b0", "b1"]


def test_later_bundles_never_overtake_one_waiting_for_a_retry(env: Env) -> None:
    env.enqueue("b0", "b1")
    d = env.deliverer()
    env.answer = unavailable
    d.deliver_once()
    env.answer = env.ok
    env.enqueue("b2")
    d.deliver_once()  # the backoff still runs: nothing is sent, not even the new b2
    assert env.sent == []
    env.clocks.advance(CAP)
    d.deliver_once()
    assert env.sent == ["b0", "b1", "b2"]


def test_one_success_resumes_the_whole_queue_at_once(env: Env) -> None:
    env.enqueue(*[f"b{i}" for i in range(6)])
    d = env.deliverer(batch_size=2)
    env.answer = unavailable
    for _ in range(6):  # a long outage: the backoff grows toward the cap
        env.clocks.advance(CAP)
        d.deliver_once()
    env.answer = env.ok
    env.clocks.advance(CAP)
    res = d.deliver_once()
    assert res.delivered == 6, "every bundle goes as soon as one delivery succeeds"
    assert env.sent == [f"b{i}" for i in range(6)]
    env.enqueue("b6")
    assert d.wait_seconds() == 0 and d.deliver_once().delivered == 1


@pytest.mark.parametrize(("status", "body", "ctype"), [
    (400, b"<html><body>400 Bad Request</body></html>", "text/html"),
    (422, b"Unprocessable", "text/plain"),
    (413, b"<html>Request Entity Too Large</html>", "text/html"),
    (400, b'{"message": "proxy says no"}', "application/json"),
])
def test_a_middlebox_4xx_is_retried_not_dead_lettered(
    env: Env, status: int, body: bytes, ctype: str
) -> None:
    env.enqueue("b0", "b1")
    env.answer = lambda r: httpx.Response(status, content=body, headers={"content-type": ctype})
    d = env.deliverer()
    res = d.deliver_once()
    assert (res.dead, res.retried) == (0, 2)
    assert set(env.states().values()) == {OutboxState.queued}
    assert all(e.attempts == 1 for e in env.outbox.entries())
    env.answer = env.ok
    env.clocks.advance(CAP)
    assert d.deliver_once().delivered == 2


def test_the_control_planes_own_refusal_of_one_bundle_dead_letters_only_it(env: Env) -> None:
    env.enqueue("b0", "b1", "b2")

    def answer(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/batch"):
            return httpx.Response(400, json={"error": "Malformed: one envelope is bad"})
        if req.headers["idempotency-key"] == "b1":
            return httpx.Response(422, json={"error": "BadSignature: does not verify"})
        return env.ok(req)

    env.answer = answer
    res = env.deliverer().deliver_once()
    assert (res.delivered, res.dead) == (2, 1)
    assert env.states()["b1"] is OutboxState.dead


def test_clock_step_detector_reports_each_step_once() -> None:
    wall, mono = [1_000_000.0], [50.0]
    det = ClockStepDetector(threshold=2.0, wall=lambda: wall[0], monotonic=lambda: mono[0])
    wall[0] += 5
    mono[0] += 5
    assert det.check() is None
    wall[0] -= 7200  # -2 h
    step = det.check()
    assert step is not None and step.seconds == pytest.approx(-7200)
    assert det.check() is None
    wall[0] += 3 * 86400 + 1
    mono[0] += 1
    step = det.check()
    assert step is not None and step.seconds == pytest.approx(3 * 86400)
