from __future__ import annotations

import random
import threading
import time

import pytest

from reconciler.runtime.workqueue import ShutDown, WorkQueue
from specs.backoff import Backoff


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_dedup_while_queued() -> None:
    q = WorkQueue()
    q.add("a")
    q.add("a")
    q.add("b")
    assert q.depth() == 2
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) == "b"
    assert q.get(timeout=0) is None


def test_key_readded_during_processing_waits_for_done() -> None:
    q = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # re-added while a worker holds it
    assert q.get(timeout=0) is None, "must not hand the key to a second worker"
    q.done("a")
    assert q.get(timeout=0) == "a"


def test_never_two_workers_on_one_key_under_contention() -> None:
    q = WorkQueue()
    active: dict[str, int] = {}
    violations: list[str] = []
    lock = threading.Lock()
    processed = [0]
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                key = q.get(timeout=0.05)
            except ShutDown:
                return
            if key is None:
                continue
            with lock:
                active[key] = active.get(key, 0) + 1
                if active[key] > 1:
                    violations.append(key)
            time.sleep(0.0005)  # hold the key so overlaps could show up
            with lock:
                active[key] -= 1
                processed[0] += 1
            q.done(key)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    produce_until = time.monotonic() + 0.3  # keep re-adding while workers hold keys
    i = 0
    while time.monotonic() < produce_until:
        q.add(f"k{i % 3}")
        i += 1
        time.sleep(0.0001)
    # let the queue drain, bounded
    while q.depth() and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    q.shutdown()
    for t in threads:
        t.join(2)
    assert processed[0] > 3
    assert violations == []


def test_backoff_grows_and_is_capped() -> None:
    b = Backoff(base=1.0, cap=60.0)
    assert [b.ceiling(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert b.ceiling(500) == 60


def test_rate_limited_uses_full_jitter_within_ceiling_and_forget_resets() -> None:
    clock = FakeClock()
    q = WorkQueue(Backoff(base=1.0, cap=8.0), monotonic=clock, rng=random.Random(7))
    delays = [q.add_rate_limited("a") for _ in range(6)]
    ceilings = [1, 2, 4, 8, 8, 8]
    for d, c in zip(delays, ceilings, strict=True):
        assert 0 <= d <= c
    assert q.failures("a") == 6
    assert q.retries_total == 6
    q.forget("a")
    assert q.failures("a") == 0


def test_add_after_becomes_ready_only_when_due() -> None:
    clock = FakeClock()
    q = WorkQueue(monotonic=clock)
    q.add_after("a", 10)
    assert q.get(timeout=0) is None
    assert q.waiting() == 1
    clock.t += 10
    assert q.get(timeout=0) == "a"


def test_delayed_duplicate_of_queued_key_is_deduped() -> None:
    clock = FakeClock()
    q = WorkQueue(monotonic=clock)
    q.add("a")
    q.add_after("a", 1)
    clock.t += 1
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert q.get(timeout=0) is None


def test_shutdown_wakes_blocked_get() -> None:
    q = WorkQueue()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            q.get()
        except ShutDown as e:
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    q.shutdown()
    t.join(2)
    assert not t.is_alive()
    assert len(errors) == 1
    with pytest.raises(ShutDown):
        q.get(timeout=0)
