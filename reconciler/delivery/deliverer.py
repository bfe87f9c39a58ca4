"""Deliver queued evidence to the control plane: drain, record, back off.

`Deliverer.deliver_once()` is one bounded delivery round, called from the
daemon loop. It never raises for network or server trouble; it only records
outcomes in the outbox:

* receipt (201 new, 200 repeat)     -> `delivered`, receipt kept
* the control plane refused the bundle itself: a 4xx other than those below
  whose body is the control plane's error document (JSON `{"error": ...}`),
  or a per-bundle 4xx in a batch answer
                                     -> `dead` (kept, visible, re-queueable)
* a refusal of the request itself (401/403/404/405/407/421), any 4xx without
  the control plane's error document (a proxy or middlebox answering), or a
  garbled answer                     -> stays `queued` with backoff, logged as
                                        an error
* transient (5xx/408/429/transport)  -> stays `queued` with backoff.

Order and schedule. Bundles leave in chain order (the outbox's enqueue
order), and a bundle is never sent while one before it waits for a retry, so
the control plane never sees a gap that a retry will fill (a dead letter is
the one gap it can see, until an operator re-queues it). The backoff belongs
to the queue, not to each bundle: consecutive failed rounds grow it (capped
full jitter), and one success resets it, so delivery resumes as soon as the
control plane answers again. It runs on the monotonic clock; wall-clock time
is only recorded (`attempts`, `next_attempt_at` in the row, for operators).
A restarted deliverer resumes from the head row's `next_attempt_at`, clamped
to at most the backoff cap ahead, so a wall clock stepped forward and back
again never parks the queue.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.delivery.client import (
    ControlPlaneClient,
    ItemResult,
    PermanentError,
    TransientError,
)
from reconciler.store.outbox import Clock, Outbox, OutboxItem, Retry, utc_now
from specs.backoff import Backoff

log = logging.getLogger(__name__)

# 4xx answers about the request itself, not the bundle in it: who we are (401,
# 403, 407), where we send (404, 405, 421). Dead-lettering every bundle for a
# revoked certificate or a wrong URL would only make work; they stay queued.
SYSTEMIC_STATUSES = frozenset({401, 403, 404, 405, 407, 421})
PRUNE_EVERY_SECONDS = 3600.0


@dataclass(frozen=True)
class DeliveryResult:
    delivered: int = 0
    retried: int = 0
    dead: int = 0

    def __add__(self, other: DeliveryResult) -> DeliveryResult:
        return DeliveryResult(
            self.delivered + other.delivered, self.retried + other.retried, self.dead + other.dead
        )


class Deliverer:
    """Drains the outbox through one `ControlPlaneClient` (one kept-alive connection)."""

    def __init__(
        self,
        outbox: Outbox,
        client: ControlPlaneClient,
        clock: Clock = utc_now,
        batch_size: int = 500,
        max_batch_bytes: int = 4 * 1024 * 1024,
        max_batches: int = 100,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        keep_delivered_seconds: float = 30 * 86400,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if batch_size < 1 or max_batches < 1:
            raise ValueError("batch_size and max_batches must be >= 1")
        self.outbox = outbox
        self.client = client
        self.clock = clock
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.max_batches = max_batches
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self.keep_delivered_seconds = keep_delivered_seconds
        self._monotonic = monotonic
        self._last_prune: float | None = None
        self._failures = 0  # consecutive failed rounds
        self._due_at: float | None = None  # monotonic; None until resumed from the outbox
        self._delay = 0.0  # the delay of the current backoff, for the retry rows

    def deliver_once(self) -> DeliveryResult:
        """Send the queue's head in batches until it is empty, the server is in
        trouble, or `max_batches` rounds were made (bounds one loop pass).
        Does nothing while the queue's backoff runs."""
        total = DeliveryResult()
        if self._due_at is None:
            self._due_at = self._resume_at()
        if self._monotonic() >= self._due_at:
            for _ in range(self.max_batches):
                items = self._within_budget(self.outbox.claim_batch(self.batch_size))
                if not items:
                    break
                res, stop = self._deliver_batch(items)
                total += res
                if stop:
                    break
        self._maybe_prune()
        return total

    def wait_seconds(self) -> float:
        """Seconds until the backoff allows the next attempt (0 when due)."""
        if self._due_at is None:
            return 0.0
        return max(0.0, self._due_at - self._monotonic())

    def _resume_at(self) -> float:
        """Where a new deliverer picks up the persisted backoff: the head row's
        retry time, but never more than the cap ahead (the wall clock that
        wrote it may have been wrong)."""
        now = self._monotonic()
        head = self.outbox.head_schedule()
        if head is None:
            return now
        attempts, next_at = head
        self._failures = attempts
        ahead = next_at - self.clock().timestamp()
        return now + min(max(0.0, ahead), self.backoff.cap)

    def _back_off(self) -> None:
        """One more failed round: push the next attempt out (queue-wide)."""
        self._failures += 1
        self._delay = self.backoff.full_jitter(self._failures, self._rng)
        self._due_at = self._monotonic() + self._delay

    def _succeeded(self) -> None:
        self._failures = 0
        self._delay = 0.0
        self._due_at = self._monotonic()

    def _within_budget(self, items: list[OutboxItem]) -> list[OutboxItem]:
        """The longest prefix under `max_batch_bytes` (at least one item); the rest
        stays queued and is claimed again by the next round."""
        size = 0
        for n, item in enumerate(items):
            size += len(item.envelope) + 1
            if size > self.max_batch_bytes and n > 0:
                return items[:n]
        return items

    def _maybe_prune(self) -> None:
        """Drop old receipts at most hourly so the outbox table stays bounded."""
        now = self._monotonic()
        if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        pruned = self.outbox.prune_delivered(self.keep_delivered_seconds)
        if pruned:
            log.info("pruned %d delivered outbox rows older than %d s", pruned,
                     self.keep_delivered_seconds)

    def _retry(self, item: OutboxItem, error: str) -> Retry:
        # Recorded for operators and a restart; the schedule is `_due_at`.
        return Retry(item.bundle_id, error, self.clock().timestamp() + self._delay)

    def _deliver_batch(self, items: list[OutboxItem]) -> tuple[DeliveryResult, bool]:
        """Returns the outcome counts and whether to stop this round."""
        try:
            results = self.client.post_evidence_batch([(i.bundle_id, i.envelope) for i in items])
        except TransientError as e:
            log.warning("evidence delivery deferred (%d bundles): %s", len(items), e)
            self._back_off()
            self.outbox.settle(retry=[self._retry(i, str(e)) for i in items])
            return DeliveryResult(retried=len(items)), True
        except PermanentError as e:
            if not _about_the_bundles(e):
                # The server refused *us* (identity, URL), a middlebox answered, or
                # the answer was garbage: no bundle is known to be at fault, so
                # none is dead-lettered; retry with backoff.
                log.error(
                    "evidence delivery refused for every bundle (%s); check mcpUrl, the"
                    " client certificate and any proxy on the way; %d bundles stay queued",
                    e,
                    len(items),
                )
                self._back_off()
                self.outbox.settle(retry=[self._retry(i, str(e)) for i in items])
                return DeliveryResult(retried=len(items)), True
            # The batch as a whole was refused (e.g. one malformed envelope):
            # fall back to one request per bundle so only the culprit dead-letters.
            log.warning("batch refused (%s); delivering %d bundles one by one", e, len(items))
            return self._deliver_singly(items)
        res = self._settle(items, results)
        return res, res.retried > 0

    def _settle(self, items: list[OutboxItem], results: list[ItemResult]) -> DeliveryResult:
        """Record one batch's outcomes. Any retry backs the queue off (the round
        stops there, so nothing after it overtakes it twice); otherwise a receipt
        resets the backoff."""
        by_id = {i.bundle_id: i for i in items}
        delivered: list[tuple[str, str]] = []
        dead: list[tuple[str, str]] = []
        retrying: list[tuple[OutboxItem, str]] = []
        for r in results:
            item = by_id[r.bundle_id]
            if r.ok and r.receipt_id is not None:
                delivered.append((r.bundle_id, r.receipt_id))
            elif r.transient or r.status in (200, 201):
                retrying.append((item, f"HTTP {r.status}: {r.error or 'no receipt'}"))
            else:
                dead.append((r.bundle_id, f"HTTP {r.status}: {r.error or 'refused'}"))
        if retrying:
            self._back_off()
        elif delivered:
            self._succeeded()
        retry = [self._retry(item, why) for item, why in retrying]
        for bid, why in dead:
            log.error(
                "evidence bundle %s refused by the control plane (%s); kept as a dead letter,"
                " re-queue with 'compliance-agent queue retry %s'",
                bid,
                why,
                bid,
            )
        self.outbox.settle(delivered=delivered, retry=retry, dead=dead)
        return DeliveryResult(len(delivered), len(retry), len(dead))

    def _deliver_singly(self, items: list[OutboxItem]) -> tuple[DeliveryResult, bool]:
        results: list[ItemResult] = []
        stop = False
        for n, item in enumerate(items):
            try:
                receipt = self.client.post_evidence(item.bundle_id, item.envelope)
            except TransientError as e:
                # Server trouble: leave this and the rest for later.
                for rest in items[n:]:
                    results.append(ItemResult(rest.bundle_id, e.status or 503, error=str(e)))
                stop = True
                break
            except PermanentError as e:
                if not _about_the_bundles(e):
                    for rest in items[n:]:  # not this bundle's fault: retry all of them
                        results.append(ItemResult(rest.bundle_id, 503, error=str(e)))
                    stop = True
                    break
                results.append(ItemResult(item.bundle_id, e.status or 400, error=str(e)))
                continue
            results.append(
                ItemResult(
                    item.bundle_id, 201 if receipt.created else 200, receipt_id=receipt.receipt_id
                )
            )
        return self._settle(items, results), stop


def _about_the_bundles(e: PermanentError) -> bool:
    """Whether a refusal of a whole request is the control plane's verdict on
    what was sent (so the bundles may be dead-lettered), rather than about who
    sent it, where, or from something on the way."""
    return e.status is not None and e.status not in SYSTEMIC_STATUSES and e.from_control_plane
