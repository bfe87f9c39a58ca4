"""Coalesces watch hints per key before they reach the workqueue.

A hint only says "key K may have changed"; the workqueue already dedups a key
that is queued, but a key that was just handed to a worker is queued again by
the next hint. So hints are held per key until the key has been quiet for
`quiet` seconds, and never longer than `max_delay` after the first one: a
switch-to-configuration that restarts 40 units makes one reconcile of each
kind it touches, not 40.

Echoes: while a key is being reconciled, and for `echo` seconds after a
reconcile that ran actions, hints for it are the agent's own remediation
coming back (a restarted unit goes through activating -> active). They only
mark the key dirty, once: one follow-up reconcile at the end of the window,
which sees the settled state. That reconcile finds nothing to do, so it runs
no action and cannot echo again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("compliance_agent.watch")


class Debouncer:
    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        quiet: float = 0.2,
        max_delay: float = 1.0,
        echo: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self.quiet = quiet
        self.max_delay = max(max_delay, quiet)
        self.echo = echo
        self._now = monotonic
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[float, float]] = {}  # key -> (first hint, due)
        self._inflight: set[str] = set()
        self._hinted_inflight: set[str] = set()
        self._echo_until: dict[str, float] = {}
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.hints_total = 0
        self.emitted_total = 0

    # -- producers -------------------------------------------------------------
    def hint(self, key: str) -> None:
        """Thread-safe; never blocks on the loop."""
        with self._cond:
            self.hints_total += 1
            now = self._now()
            if key in self._inflight:
                self._hinted_inflight.add(key)
                return
            until = self._echo_until.get(key)
            if until is not None and now < until:
                self._pending[key] = (now, until)  # one follow-up, at the window's end
            else:
                self._echo_until.pop(key, None)
                first, _ = self._pending.get(key, (now, now))
                self._pending[key] = (first, min(now + self.quiet, first + self.max_delay))
            self._cond.notify()

    def begin(self, key: str) -> None:
        """A worker starts reconciling `key`."""
        with self._cond:
            self._inflight.add(key)

    def end(self, key: str, acted: bool) -> None:
        """The reconcile of `key` finished; `acted`: it ran actions on the host."""
        with self._cond:
            self._inflight.discard(key)
            hinted = key in self._hinted_inflight
            self._hinted_inflight.discard(key)
            now = self._now()
            if acted:
                self._echo_until[key] = now + self.echo
                if hinted:
                    self._pending[key] = (now, now + self.echo)
            elif hinted:  # a change after the observation began: look again
                self._pending[key] = (now, now + self.quiet)
            self._cond.notify()

    def pending(self) -> set[str]:
        with self._cond:
            return set(self._pending)

    # -- the flushing thread ------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="watch-debounce", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)

    def flush_due(self) -> list[str]:
        """Emit the keys whose time has come (the thread's step; tests call it too)."""
        with self._cond:
            due = self._take_due_locked()
        for key in due:
            self.emitted_total += 1
            try:
                self._emit(key)
            except Exception:
                log.exception("watch hint could not be queued",
                              extra={"resource": key, "reason": "WatchHintFailed"})
        return due

    def _run(self) -> None:
        while True:
            if self.flush_due():
                continue
            with self._cond:
                if self._stopped:
                    return
                nxt = min((d for _, d in self._pending.values()), default=None)
                if nxt is None or nxt > self._now():
                    self._cond.wait(None if nxt is None else max(0.001, nxt - self._now()))

    def _take_due_locked(self) -> list[str]:
        now = self._now()
        due = [k for k, (_, d) in self._pending.items() if d <= now]
        for k in due:
            del self._pending[k]
        # forget echo windows that have passed, so the map stays as small as the key set
        for k in [k for k, u in self._echo_until.items() if u <= now]:
            del self._echo_until[k]
        return due
