"""The one backoff formula: exponential in the number of consecutive failures,
capped, optionally with AWS-style "full jitter" (uniform in [0, ceiling]).

Used by the workqueue (per-key requeues), the per-action guard backoff, the
evidence deliverer and the reseller integrations, so "how long after n
failures" means the same everywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0
    cap: float = 300.0

    def ceiling(self, failures: int) -> float:
        """The delay after `failures` consecutive failures (>= 1): base * 2**(n-1), capped."""
        exp = min(max(failures, 1) - 1, 62)
        return float(min(self.cap, self.base * (2.0**exp)))

    def full_jitter(self, failures: int, rng: random.Random) -> float:
        """A delay drawn uniformly from [0, ceiling(failures)]: spreads a fleet's retries."""
        return rng.uniform(0.0, self.ceiling(failures))
