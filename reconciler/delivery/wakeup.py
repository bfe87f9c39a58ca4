"""Order wake-ups: one outbound NATS subscription that makes the agent poll now.

A wake-up carries no authority. Its content is never read; it only asks the
control-plane loop to poll orders (and the baseline) over HTTPS at once,
where orders are still fetched over mutual TLS and admitted only as signed
envelopes. Polling on `pollInterval` goes on whatever NATS does.

Contract of `WakeupWatcher`:

* one daemon thread; it never raises into anyone and never blocks the
  reconcile loop or the control-plane loop (it only calls `request_poll`,
  which sets a flag);
* wake-ups are rate-limited by a token bucket (at most `capacity` at once and
  `per_minute` per minute); a wake-up that finds the bucket empty is kept as
  one pending poll, made when the next token comes, so a flood costs at most
  the bucket's rate of polls and never hides a real order;
* a server that sends more than `max_messages_per_second` is dropped as
  hostile (parsing a flood would take CPU, and the GIL, from the reconcile loop);
* a failed, refused, silent or hostile server is dropped and dialled again
  after `specs.backoff.Backoff` (full jitter); the state (`WatchState`) and
  counters are readable at any time (`snapshot`) and reported to `on_change`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from specs.backoff import Backoff
from specs.errors import ComplianceAgentError

log = logging.getLogger("compliance_agent.wakeup")

SUBJECT_PREFIX = "orders"
RECONNECT_BACKOFF = Backoff(base=1.0, cap=60.0)
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def subject_token(value: str) -> str:
    """One NATS subject token for a site or host id: characters NATS gives meaning
    to ('.', '*', '>', spaces) and anything outside [A-Za-z0-9_-] become %XX
    (UTF-8 bytes), so every id maps to exactly one token."""
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode())
                   for c in value)


def wakeup_subject(site_id: str, host_id: str) -> str:
    return f"{SUBJECT_PREFIX}.{subject_token(site_id)}.{subject_token(host_id)}"


class FloodError(ComplianceAgentError):
    """The server sent wake-ups faster than any control plane would."""


class WatchState(StrEnum):
    connecting = "connecting"
    connected = "connected"
    backoff = "backoff"  # failed; waiting before dialling again
    stopped = "stopped"


@dataclass(frozen=True)
class WatchSnapshot:
    state: WatchState
    since: datetime
    wakeups: int = 0  # messages received on the subject
    polls_requested: int = 0  # polls asked of the control-plane loop
    throttled: int = 0  # wake-ups absorbed by the rate limit (coalesced into a later poll)
    connects: int = 0
    failures: int = 0  # consecutive, reset by a successful connect
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["state"] = self.state.value
        doc["since"] = self.since.isoformat()
        return doc


class TokenBucket:
    """`capacity` tokens, refilled continuously at `per_minute` per minute."""

    def __init__(self, capacity: int, per_minute: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1 or per_minute <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and per_minute > 0")
        self.capacity = float(capacity)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._tokens = float(capacity)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def seconds_until_token(self) -> float:
        self._refill()
        return max(0.0, (1.0 - self._tokens) / self.rate)


class Subscription(Protocol):
    """What the watcher needs of a connection (nats_client.NatsConnection)."""

    def subscribe(self, subject: str, sid: str = "1") -> None: ...
    def flush(self, timeout: float) -> None: ...
    def ping(self) -> None: ...
    def next_message(self, timeout: float) -> object | None: ...
    def close(self) -> None: ...

    @property
    def pings_outstanding(self) -> int: ...


class WakeupWatcher:
    def __init__(
        self,
        *,
        connect: Callable[[], Subscription],
        subject: str,
        request_poll: Callable[[], None],
        bucket: TokenBucket,
        backoff: Backoff = RECONNECT_BACKOFF,
        ping_interval: float = 20.0,
        min_retry: float = 0.5,
        max_messages_per_second: int = 1000,
        on_change: Callable[[WatchSnapshot], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._connect = connect
        self.subject = subject
        self._request_poll = request_poll
        self._bucket = bucket
        self._backoff = backoff
        self._ping_interval = ping_interval
        self._min_retry = min_retry  # full jitter can draw ~0: never spin on a refusing server
        self._max_rate = max_messages_per_second
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._snap = WatchSnapshot(WatchState.connecting, clock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Subscription | None = None
        self._pending = False

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="order-wakeups", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None:
            conn.close()  # unblocks a read in progress
        if self._thread is not None:
            self._thread.join(timeout)
        self._update(state=WatchState.stopped)

    def pass_done(self) -> None:
        """A daemon companion: nothing to do after a pass (wake-ups are not passes)."""

    def snapshot(self) -> WatchSnapshot:
        with self._lock:
            return self._snap

    # -- the thread --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
            except Exception as e:  # NatsError, OSError, or a bug: never leave the thread
                if self._stop.is_set():
                    break
                failures = self.snapshot().failures + 1
                self._update(state=WatchState.backoff, failures=failures,
                             last_error=f"{type(e).__name__}: {e}"[:300])
                log.warning("order wake-ups unavailable; polling continues", extra={
                    "reason": "WakeupWatchDown", "detail": f"{type(e).__name__}: {e}"[:300]})
                self._stop.wait(max(self._min_retry,
                                    self._backoff.full_jitter(failures, self._rng)))
            finally:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

    def _session(self) -> None:
        self._update(state=WatchState.connecting)
        self._conn = conn = self._connect()
        if self._stop.is_set():
            return
        conn.subscribe(self.subject)
        conn.flush(5.0)  # the subscription is registered before we say "connected"
        self._update(state=WatchState.connected, failures=0, last_error=None,
                     connects=self.snapshot().connects + 1)
        log.info("watching order wake-ups", extra={"reason": "WakeupWatchUp",
                                                   "detail": self.subject})
        next_ping = time.monotonic() + self._ping_interval
        window_start, in_window = time.monotonic(), 0
        while not self._stop.is_set():
            wait = next_ping - time.monotonic()
            if self._pending:
                wait = min(wait, self._bucket.seconds_until_token())
            msg = conn.next_message(max(0.01, wait))
            if msg is not None:
                self._on_wakeup()
                now = time.monotonic()
                if now - window_start >= 1.0:
                    window_start, in_window = now, 0
                in_window += 1
                if in_window > self._max_rate:
                    raise FloodError(f"more than {self._max_rate} wake-ups in a second; "
                                     "dropping the connection")
            if self._pending and self._bucket.take():
                self._pending = False
                self._update(polls_requested=self.snapshot().polls_requested + 1)
                self._request_poll()
            if time.monotonic() >= next_ping:
                if conn.pings_outstanding >= 2:
                    raise TimeoutError("the NATS server stopped answering PINGs")
                conn.ping()
                next_ping = time.monotonic() + self._ping_interval

    def _on_wakeup(self) -> None:
        with self._lock:
            throttled = self._snap.throttled + (1 if self._pending else 0)
            self._snap = replace(self._snap, wakeups=self._snap.wakeups + 1, throttled=throttled)
        self._pending = True  # the payload is never looked at: "poll now" is all it can say

    def _update(self, **changes: Any) -> None:
        with self._lock:
            old = self._snap
            if "state" in changes and changes["state"] != old.state:
                changes["since"] = self._clock()
            self._snap = new = replace(old, **changes)
        if self._on_change is not None and (new.state != old.state
                                            or new.polls_requested != old.polls_requested):
            try:
                self._on_change(new)
            except Exception:
                log.exception("recording the wake-up watch state failed")


WATCH_STATE_KEY = "order_wakeups"
POLLS_PER_MINUTE = 60  # a poll is one kept-alive HTTPS GET; a flood costs at most this
BURST = 5


class WakeupCollector:
    """Prometheus view of a watcher: state as a 0/1 gauge per state, and counters."""

    def __init__(self, watcher: WakeupWatcher) -> None:
        self.watcher = watcher

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.watcher.snapshot()
        ns = "compliance_agent_order_wakeup"
        state = GaugeMetricFamily(f"{ns}_watch_state", "1 for the current state of the NATS "
                                  "order wake-up watch, 0 for the others.", labels=["state"])
        for s in WatchState:
            state.add_metric([s.value], 1.0 if s is snap.state else 0.0)
        yield state
        for name, value, doc in (
            ("messages", snap.wakeups, "Wake-up messages received (content ignored)."),
            ("polls", snap.polls_requested, "Order polls requested by wake-ups."),
            ("throttled", snap.throttled, "Wake-ups absorbed by the rate limit."),
            ("connects", snap.connects, "Successful connections to the NATS server."),
        ):
            yield CounterMetricFamily(f"{ns}_{name}", doc, value=value)


def watch_order_wakeups(
    *,
    url: str,
    context: Any,
    site_id: str,
    host_id: str,
    request_poll: Callable[[], None],
    on_change: Callable[[WatchSnapshot], None] | None = None,
) -> WakeupWatcher:
    """A watcher dialling `url` (tls://host[:port]) with `context` (the pinned-CA,
    client-certificate ssl.SSLContext of the control-plane client)."""
    from reconciler.delivery.nats_client import NatsConnection, parse_url

    host, port = parse_url(url)
    return WakeupWatcher(
        connect=lambda: NatsConnection.open(host, port, context,
                                            name=f"compliance-agent {site_id}/{host_id}"),
        subject=wakeup_subject(site_id, host_id),
        request_poll=request_poll,
        bucket=TokenBucket(BURST, POLLS_PER_MINUTE),
        on_change=on_change,
    )
