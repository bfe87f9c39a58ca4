"""Order wake-ups without a server: the token bucket, subject names, the NATS
protocol parser against scripted (and hostile) server bytes, the watcher's
rate limit, backoff and survival, and ControlPlaneLoop.request_poll."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from reconciler.delivery.loop import ControlPlaneLoop
from reconciler.delivery.nats_client import (
    NatsConnection,
    NatsError,
    NatsMessage,
    NatsProtocolError,
)
from reconciler.delivery.wakeup import (
    TokenBucket,
    WakeupWatcher,
    WatchState,
    subject_token,
)
from specs.backoff import Backoff


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# -- token bucket and subjects ---------------------------------------------------------
def test_token_bucket_allows_a_burst_then_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(3, 60, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.seconds_until_token() == pytest.approx(1.0)
    now[0] += 0.5
    assert not bucket.take()
    now[0] += 0.5
    assert bucket.take()
    now[0] += 1000
    assert sum(bucket.take() for _ in range(10)) == 3  # never more than the capacity


def test_subject_tokens_are_injective_for_dots_and_percent() -> None:
    assert subject_token("a.b") != subject_token("a%2Eb")
    assert subject_token("a.b") == "a%2Eb"
    assert subject_token("a%2Eb") == "a%252Eb"


# -- the protocol parser -------------------------------------------------------------------
class ScriptedSocket:
    """Hands out scripted chunks, then times out; records what the client sent."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def settimeout(self, _t: float) -> None:
        pass

    def recv(self, _n: int) -> bytes:
        if not self.chunks:
            raise TimeoutError
        return self.chunks.pop(0)

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        pass


def conn(chunks: list[bytes], max_payload: int = 1024) -> tuple[NatsConnection, ScriptedSocket]:
    sock = ScriptedSocket(chunks)
    return NatsConnection(sock, {}, max_payload), sock  # type: ignore[arg-type]


def test_messages_split_anywhere_are_reassembled_and_pings_answered() -> None:
    c, sock = conn([b"PI", b"NG\r\nMSG orders.a.b 1 5\r\nhel", b"lo\r\n+OK\r\nPONG\r\n",
                    b"MSG orders.a.b 1 _INBOX.x 0\r\n\r\n"])
    c.pings_outstanding = 1
    assert c.next_message(0.01) == NatsMessage("orders.a.b", "1", 5)
    assert sock.sent == b"PONG\r\n"
    assert c.next_message(0.01) == NatsMessage("orders.a.b", "1", 0)
    assert c.pings_outstanding == 0
    assert c.next_message(0.01) is None


@pytest.mark.parametrize(("chunks", "error"), [
    ([b"MSG s 1 2000\r\n"], "exceeds max_payload"),
    ([b"MSG s 1 -1\r\n"], "exceeds max_payload"),
    ([b"MSG s 1 x\r\n"], "malformed MSG size"),
    ([b"MSG s\r\n"], "malformed MSG line"),
    ([b"MSG s 1 3\r\nabcXY"], "not terminated"),
    ([b"-ERR 'Authorization Violation'\r\n"], "Authorization Violation"),
    ([b"HELLO\r\n"], "unexpected protocol line"),
    ([b"INFO [1]\r\n"], "not a JSON object"),
    ([b"X" * 70000], "too long"),
    ([b"SUB " + b"x" * 5000 + b"\r\n"], "too long"),
])
def test_hostile_server_bytes_are_protocol_errors(chunks: list[bytes], error: str) -> None:
    c, _ = conn(chunks)
    with pytest.raises(NatsProtocolError, match=error):
        c.next_message(0.01)


def test_a_closed_connection_is_an_error() -> None:
    c, sock = conn([])
    sock.recv = lambda _n: b""  # type: ignore[method-assign]
    with pytest.raises(NatsError, match="closed"):
        c.next_message(0.01)


# -- the watcher ---------------------------------------------------------------------
class FakeConnection:
    def __init__(self, inbox: list[object], fail_after: bool = False) -> None:
        self.inbox = inbox
        self.fail_after = fail_after
        self.subscribed: list[str] = []
        self.pings_outstanding = 0
        self.closed = False

    def subscribe(self, subject: str, sid: str = "1") -> None:
        self.subscribed.append(subject)

    def flush(self, timeout: float) -> None:
        pass

    def ping(self) -> None:
        pass

    def next_message(self, timeout: float) -> object | None:
        if self.inbox:
            return self.inbox.pop(0)
        if self.fail_after:
            raise NatsProtocolError("hostile")
        time.sleep(min(timeout, 0.005))
        return None

    def close(self) -> None:
        self.closed = True


def test_a_flood_costs_at_most_the_bucket_and_one_coalesced_poll_later() -> None:
    now = [0.0]
    polls: list[float] = []
    fake = FakeConnection([object()] * 1000)
    watcher = WakeupWatcher(connect=lambda: fake, subject="orders.s.h",
                            request_poll=lambda: polls.append(now[0]),
                            bucket=TokenBucket(5, 60, clock=lambda: now[0]))
    watcher.start()
    try:
        wait_until(lambda: watcher.snapshot().wakeups == 1000)
        assert len(polls) == 5
        assert watcher.snapshot().throttled >= 994
        now[0] += 1.0  # one token later the pending wake-up becomes exactly one poll
        wait_until(lambda: len(polls) == 6)
        now[0] += 100.0
        time.sleep(0.05)
        assert len(polls) == 6  # nothing pending any more
        assert fake.subscribed == ["orders.s.h"]
        assert watcher.snapshot().state is WatchState.connected
    finally:
        watcher.stop()
    assert watcher.snapshot().state is WatchState.stopped


def test_failures_back_off_then_reconnect_and_the_thread_survives_bugs() -> None:
    attempts: list[int] = []
    states: list[WatchState] = []

    def connect() -> FakeConnection:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("connection refused")
        if len(attempts) == 2:
            raise RuntimeError("a bug in a collaborator")
        if len(attempts) == 3:
            return FakeConnection([object()], fail_after=True)
        return FakeConnection([])

    polled = threading.Event()
    watcher = WakeupWatcher(connect=connect, subject="s", request_poll=polled.set,
                            bucket=TokenBucket(5, 60), backoff=Backoff(base=0.01, cap=0.02),
                            on_change=lambda snap: states.append(snap.state),
                            rng=random.Random(1), min_retry=0.0)
    watcher.start()
    try:
        wait_until(lambda: len(attempts) >= 4 and watcher.snapshot().state
                   is WatchState.connected, 20)
        snap = watcher.snapshot()
        assert snap.connects == 2 and snap.failures == 0 and snap.last_error is None
        assert polled.is_set()  # the one message before the hostile line still counted
        assert WatchState.backoff in states
    finally:
        watcher.stop()


def test_a_message_storm_drops_the_connection_before_it_eats_the_cpu() -> None:
    conns: list[FakeConnection] = []

    def connect() -> FakeConnection:
        conns.append(FakeConnection([object()] * 5000 if not conns else []))
        return conns[-1]

    watcher = WakeupWatcher(connect=connect, subject="s", request_poll=lambda: None,
                            bucket=TokenBucket(5, 60), backoff=Backoff(base=0.01, cap=0.02),
                            min_retry=0.0, max_messages_per_second=100)
    watcher.start()
    try:
        wait_until(lambda: len(conns) == 2 and watcher.snapshot().state is WatchState.connected)
        assert conns[0].closed and len(conns[0].inbox) >= 5000 - 101  # the rest never parsed
        assert watcher.snapshot().wakeups <= 101
    finally:
        watcher.stop()


# -- the control-plane loop ------------------------------------------------------------
class CountingLoop(ControlPlaneLoop):
    def __init__(self) -> None:
        dummy: Any = object()
        super().__init__(client=dummy, admission=dummy, triggers=dummy, writer=dummy,
                         outbox=dummy, deliverer=dummy, baseline_resolver=dummy, store=dummy,
                         poll_interval=300.0, on_admitted=lambda _k, _a: None)
        self.polled = 0
        self.release = threading.Event()

    def poll_once(self) -> None:
        self.polled += 1
        self.stats.polls += 1
        if self.polled == 2:
            self.release.wait(5)  # requests made during this poll coalesce into one more

    def deliver_once(self) -> None:
        pass

    def stop(self, timeout: float = 0.5) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)


def test_request_poll_polls_now_and_coalesces() -> None:
    loop = CountingLoop()
    loop.start()
    try:
        wait_until(lambda: loop.polled == 1)
        loop.request_poll()
        wait_until(lambda: loop.polled == 2)
        for _ in range(10):
            loop.request_poll()
        loop.release.set()
        wait_until(lambda: loop.polled == 3)
        time.sleep(0.3)
        assert loop.polled == 3
        assert loop.stats.requested_polls == 2
    finally:
        loop.stop()


# -- imported only when natsUrl is set -----------------------------------------------------
def test_the_nats_client_is_not_imported_without_nats_url(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    script = (
        "import sys\n"
        "from reconciler.service import order_wakeups\n"
        "from tests.unit.conftest import make_config\n"
        f"cfg = make_config(__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "assert cfg.nats_url is None\n"
        "assert order_wakeups(cfg, None, None, None) is None\n"
        "print(sorted(m for m in sys.modules if 'nats' in m or 'wakeup' in m))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- the natsUrl option ---------------------------------------------------------------
@pytest.mark.parametrize(("url", "problem"), [
    ("tls://nats.local:4222", None),
    ("tls://nats.local", None),
    ("nats://nats.local:4222", "must look like 'tls://"),
    ("tls://user:secret@nats.local:4222", "must not carry credentials"),
    ("tls://nats.local:99999", "must look like"),
    ("tls://nats.local:4222/sub", "must look like"),
    ("tls://elsewhere.net:4222", "not in allowedHosts"),
])
def test_nats_url_is_tls_without_credentials_and_allowlisted(
    tmp_path: Any, url: str, problem: str | None
) -> None:
    from specs.config import ConfigError
    from tests.unit.conftest import make_config

    if problem is None:
        cfg = make_config(tmp_path, natsUrl=url, allowedHosts=["mcp.local", "nats.local"])
        assert cfg.nats_url == url
        return
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, natsUrl=url, allowedHosts=["mcp.local", "nats.local"])
    assert problem in str(err.value)
    assert "secret" not in str(err.value)
