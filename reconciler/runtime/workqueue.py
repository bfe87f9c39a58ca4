"""A rate-limited work queue with client-go semantics.

* A key added while already queued is queued once (dedup).
* A key is never handed to two workers at once: a key re-added while it is
  being processed is parked and queued again only when `done(key)` is called.
* `add_rate_limited(key)` requeues after per-key exponential backoff with full
  jitter, capped; `forget(key)` resets a key's failure count after success.
* `add_after(key, delay)` requeues after a delay (the next poll).
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from specs.backoff import Backoff
from specs.errors import ComplianceAgentError


class ShutDown(ComplianceAgentError):
    """The queue was shut down; workers should exit."""


class WorkQueue:
    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._backoff = backoff or Backoff()
        self._now = monotonic
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._waiting: list[tuple[float, int, str]] = []  # (ready_at, seq, key)
        self._seq = itertools.count()
        self._failures: dict[str, int] = {}
        self._shutting_down = False
        self.adds_total = 0
        self.retries_total = 0

    # -- adding -------------------------------------------------------------
    def add(self, key: str) -> None:
        with self._cond:
            if self._shutting_down or key in self._dirty:
                return
            self.adds_total += 1
            self._dirty.add(key)
            if key not in self._processing:
                self._queue.append(key)
                self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            heapq.heappush(self._waiting, (self._now() + delay, next(self._seq), key))
            self._cond.notify()

    def add_rate_limited(self, key: str) -> float:
        """Requeue after backoff with full jitter; returns the delay chosen."""
        with self._cond:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            self.retries_total += 1
            delay = self._backoff.full_jitter(failures, self._rng)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        with self._cond:
            return self._failures.get(key, 0)

    # -- consuming ----------------------------------------------------------
    def get(self, timeout: float | None = None) -> str | None:
        """Next key to process, or None on timeout. Raises ShutDown when drained."""
        deadline = None if timeout is None else self._now() + timeout
        with self._cond:
            while True:
                self._promote_due()
                if self._queue:
                    key = self._queue.popleft()
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._shutting_down:
                    raise ShutDown()
                wait = self._next_wait(deadline)
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._shutting_down = True
            self._waiting.clear()
            self._cond.notify_all()

    # -- introspection ------------------------------------------------------
    def depth(self) -> int:
        with self._cond:
            return len(self._queue)

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def processing(self) -> set[str]:
        with self._cond:
            return set(self._processing)

    # -- internals (call with the lock held) ---------------------------------
    def _promote_due(self) -> None:
        now = self._now()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, key = heapq.heappop(self._waiting)
            if key in self._dirty:
                continue
            self._dirty.add(key)
            self.adds_total += 1
            if key not in self._processing:
                self._queue.append(key)

    def _next_wait(self, deadline: float | None) -> float | None:
        now = self._now()
        candidates = []
        if deadline is not None:
            candidates.append(deadline - now)
        if self._waiting:
            candidates.append(max(0.0, self._waiting[0][0] - now))
            if candidates[-1] == 0.0:
                return 0.001
        return min(candidates) if candidates else None
