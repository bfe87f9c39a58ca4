"""Polling with a deadline: how tests and benchmarks wait for something to happen
(never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_DEADLINE = 20.0  # seconds; a generous bound for "it happens", never a speed claim


def wait_for(cond: Callable[[], bool], timeout: float = DEFAULT_DEADLINE,
             interval: float = 0.01) -> bool:
    """True as soon as `cond()` is; False if it is still not at `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return cond()
