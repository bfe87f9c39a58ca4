"""Noticing wall-clock steps (NTP corrections, an operator's `date -s`, a VM resume).

Timers never run on the wall clock (they use the monotonic clock), so a step
cannot stall or hurry anything; but timestamps in evidence can jump, and an
auditor must be able to tell why. `ClockStepDetector.check()` compares how far
the wall clock and the monotonic clock moved since the previous look: when
they disagree by more than `threshold` seconds, that difference is the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockStep:
    seconds: float  # positive: the wall clock jumped forward
    wall_before: float  # expected wall time (epoch seconds) had it not stepped
    wall_after: float  # wall time seen


class ClockStepDetector:
    def __init__(
        self,
        threshold: float = 2.0,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self._wall = wall
        self._monotonic = monotonic
        self._base = (wall(), monotonic())

    def check(self) -> ClockStep | None:
        """The step since the previous call, if any (each step is reported once)."""
        wall, mono = self._wall(), self._monotonic()
        wall0, mono0 = self._base
        self._base = (wall, mono)
        expected = wall0 + (mono - mono0)
        step = wall - expected
        if abs(step) < self.threshold:
            return None
        return ClockStep(seconds=step, wall_before=expected, wall_after=wall)
