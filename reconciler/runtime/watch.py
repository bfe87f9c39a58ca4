"""Watches: event sources that hint the level-triggered loop.

A watch turns a change on the host (a unit stopped, a file replaced) into the
keys of the resource kinds whose observation depends on it, and hands the keys
to `emit`. It never carries state: the worker reads everything again. The
periodic pass stays the safety net, so a watch is an optimisation that may
fail: a watch that cannot connect, loses its source or falls behind reports
itself down (`health()`, the metric `compliance_agent_watch_up{watch}`, the
`watches` part of `status`), queues every key it covers once (it may have
missed a change), and retries with `specs.backoff.Backoff`. It never stops the
loop or makes it spin.

`SupervisedWatch` is that retry loop around one blocking `session()`; a
concrete watch (inotify, the systemd manager on the bus) only says how to
connect, what a change means and how to interrupt itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from reconciler.runtime.debounce import Debouncer
from specs.backoff import Backoff
from specs.errors import ComplianceAgentError
from specs.watch import WatchTargets

log = logging.getLogger("compliance_agent.watch")

WATCH_BACKOFF = Backoff(1.0, 60.0)  # between failed sessions of one watch
# A session must have stayed live this long for the backoff to start over: a source
# that connects and drops at once (no permission, say) backs off to the cap.
STABLE_SECONDS = 10.0
CAP_STEPS = 63  # a failure count at which any Backoff is at its cap

Emit = Callable[[str], None]


@dataclass(frozen=True)
class WatchHealth:
    name: str
    up: bool
    reason: str  # Starting, Live, Lost, Unavailable, FellBehind, Stopped
    message: str = ""
    since: float = 0.0  # time.time() of the last change of `up`
    events: int = 0  # keys hinted since start
    resyncs: int = 0  # times every covered key was queued (start, recovery, overflow)
    failures: int = 0  # consecutive failed sessions

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "up": self.up, "reason": self.reason,
                "message": self.message, "since": self.since, "events": self.events,
                "resyncs": self.resyncs, "failures": self.failures}


class Watch(Protocol):
    """One event source. `start` must not block; `set_targets` is called at the
    start of every pass with the targets of every kind of the current specs."""

    @property
    def name(self) -> str: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def set_targets(self, targets: Mapping[str, WatchTargets]) -> None: ...

    def health(self) -> WatchHealth: ...


# Built by the daemon with its `emit` (the debouncer's hint): no attribute wiring later.
WatchFactory = Callable[[Emit], Watch]


class WatchLost(ComplianceAgentError):
    """A session's source went away (the bus closed, a watched directory vanished)."""


class WatchUnsupported(ComplianceAgentError):
    """The source says it does not offer this watch (an actuator older than the
    request): down as Unavailable, and retried only at the backoff's cap, since
    asking again sooner cannot change the answer (an upgraded source may)."""


class SupervisedWatch(ABC):
    """A watch thread: session, and on failure backoff and a new session."""

    def __init__(self, name: str, emit: Emit, *, backoff: Backoff = WATCH_BACKOFF,
                 rng: random.Random | None = None) -> None:
        self._name = name
        self._emit = emit
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._targets: dict[str, WatchTargets] = {}
        self._health = WatchHealth(name, up=False, reason="Starting", since=time.time())
        self._thread: threading.Thread | None = None
        self._went_live = False
        self._live_at = 0.0
        self._retargeted = False  # the last session ended for new targets

    @property
    def name(self) -> str:
        return self._name

    # -- to implement ------------------------------------------------------------
    @abstractmethod
    def session(self) -> None:
        """Connect, call `live()`, then block delivering hints until `stopping()`
        (return) or the source is lost (raise)."""

    @abstractmethod
    def interrupt(self) -> None:
        """Wake a blocked session (from another thread): stop or new targets."""

    def covers(self, targets: WatchTargets) -> bool:
        """Whether this watch has anything to watch for `targets`."""
        return True

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self._name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.interrupt()
        except Exception:
            log.debug("watch interrupt failed", exc_info=True)
        if self._thread is not None:
            self._thread.join(2.0)
        self._set_health(up=False, reason="Stopped", message="")

    def stopping(self) -> bool:
        return self._stop.is_set()

    def set_targets(self, targets: Mapping[str, WatchTargets]) -> None:
        with self._lock:
            changed = dict(targets) != self._targets
            self._targets = dict(targets)
        if changed:
            try:
                self.interrupt()
            except Exception:
                log.debug("watch interrupt failed", exc_info=True)

    def targets(self) -> dict[str, WatchTargets]:
        with self._lock:
            return dict(self._targets)

    def health(self) -> WatchHealth:
        with self._lock:
            return self._health

    # -- for sessions ----------------------------------------------------------------
    def hint(self, key: str) -> None:
        with self._lock:
            self._health = replace(self._health, events=self._health.events + 1)
        self._emit(key)

    def resync(self, reason: str) -> None:
        """Queue every key this watch covers: a change may have been missed."""
        keys = [k for k, t in self.targets().items() if self.covers(t)]
        with self._lock:
            self._health = replace(self._health, resyncs=self._health.resyncs + 1)
        log.info("watch resync", extra={"reason": reason, "detail": self._name})
        for key in keys:
            self._emit(key)

    def live(self, message: str = "") -> None:
        """The session is connected and subscribed."""
        was_up = self.health().up
        retargeted, self._retargeted = self._retargeted, False
        self._went_live = True
        self._live_at = time.monotonic()
        self._set_health(up=True, reason="Live", message=message, failures=0)
        if not was_up:
            log.info("watch live", extra={"reason": "WatchLive", "detail": self._name})
            self.resync("WatchLive")  # whatever changed while it was down
        elif retargeted:
            # Between the old session and this one nothing watched the new targets:
            # a change in that gap would be lost without this look.
            self.resync("WatchRetargeted")

    def fell_behind(self, message: str) -> None:
        """Events were dropped (a queue overflowed): stay up, but look at everything."""
        log.warning("watch fell behind", extra={"reason": "WatchFellBehind",
                                                "detail": f"{self._name}: {message}"})
        self.resync("WatchFellBehind")

    def _set_health(self, *, up: bool, reason: str, message: str,
                    failures: int | None = None) -> None:
        with self._lock:
            h = self._health
            self._health = replace(
                h, up=up, reason=reason, message=message[:300],
                since=time.time() if up != h.up else h.since,
                failures=h.failures if failures is None else failures)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._went_live = False
            unsupported = False
            try:
                self.session()
                if self._stop.is_set():
                    return
                self._retargeted = True
                continue  # new targets: a fresh session
            except Exception as e:  # a watch must never take the loop down
                if self._stop.is_set():
                    return
                stable = self._went_live and time.monotonic() - self._live_at >= STABLE_SECONDS
                failures = 1 if stable else failures + 1
                unsupported = isinstance(e, WatchUnsupported)
                reason = "Lost" if isinstance(e, WatchLost | OSError | ConnectionError) \
                    else "Unavailable"
                self._set_health(up=False, reason=reason, message=f"{type(e).__name__}: {e}",
                                 failures=failures)
                log.warning("watch down, polling continues", extra={
                    "reason": "WatchDown", "detail": f"{self._name}: {type(e).__name__}: {e}"})
            # never spin: at least half the ceiling, at most the ceiling
            steps = CAP_STEPS if unsupported else failures
            ceiling = self._backoff.ceiling(steps)
            delay = ceiling / 2 + self._backoff.full_jitter(steps, self._rng) / 2
            self._stop.wait(delay)


class WatchHub:
    """The daemon's watches: started after READY, given the targets of each pass,
    stopped at shutdown; their health for `status` and the metrics."""

    def __init__(self, watches: Sequence[Watch], debouncer: Debouncer) -> None:
        self.watches = tuple(watches)
        self.debouncer = debouncer

    def start(self) -> None:
        if not self.watches:
            return
        self.debouncer.start()
        for w in self.watches:
            try:
                w.start()
            except Exception:
                log.exception("watch failed to start", extra={"reason": "WatchDown"})

    def stop(self) -> None:
        for w in self.watches:
            try:
                w.stop()
            except Exception:
                log.exception("watch failed to stop")
        if self.watches:
            self.debouncer.stop()

    def set_targets(self, targets: Mapping[str, WatchTargets]) -> None:
        for w in self.watches:
            try:
                w.set_targets(targets)
            except Exception:
                log.exception("watch rejected its targets", extra={"reason": "WatchDown"})

    def health(self) -> list[WatchHealth]:
        return [w.health() for w in self.watches]

    def condition(self) -> dict[str, str]:
        """`WatchesLive` for the host summary: False names the watches that are down
        (changes are then found by the periodic pass only)."""
        down = [h for h in self.health() if not h.up]
        if not self.watches:
            return {"type": "WatchesLive", "status": "False", "reason": "Disabled",
                    "message": "no watches: changes are found by the periodic pass"}
        if not down:
            return {"type": "WatchesLive", "status": "True", "reason": "Live", "message": ""}
        return {"type": "WatchesLive", "status": "False", "reason": "WatchDown",
                "message": "; ".join(f"{h.name}: {h.reason} {h.message}".strip() for h in down)
                + " (polling continues)"}

    def status(self) -> dict[str, Any]:
        return {"condition": self.condition(), "watches": [h.to_json() for h in self.health()]}


class WatchCollector:
    """`compliance_agent_watch_up{watch}` (1 live, 0 down) and event counters."""

    def __init__(self, hub: WatchHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("compliance_agent_watch_up", "1 while the watch is live, "
                               "0 while changes are found by polling only.", labels=["watch"])
        events = CounterMetricFamily("compliance_agent_watch_events",
                                     "Resource keys hinted by the watch.", labels=["watch"])
        resyncs = CounterMetricFamily("compliance_agent_watch_resyncs", "Times the watch "
                                      "queued every key it covers (start, recovery, overflow).",
                                      labels=["watch"])
        for h in self.hub.health():
            up.add_metric([h.name], 1.0 if h.up else 0.0)
            events.add_metric([h.name], h.events)
            resyncs.add_metric([h.name], h.resyncs)
        yield up
        yield events
        yield resyncs
