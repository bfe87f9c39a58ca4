"""Deliver queued evidence to the control plane: drain, record, back off.

`Deliverer.deliver_once()` is one bounded delivery round, called from the
daemon loop. It never raises for network or server trouble; it only records
outcomes in the outbox:

* receipt (201 new, 200 repeat)     -> `delivered`, receipt kept
* permanent refusal of a bundle (other 4xx, e.g. 400/409/413/422)
                                     -> `dead` (kept, visible, re-queueable)
* refusal of the request itself (401/403/404/405/407/421) or a garbled
  answer                             -> stays `queued` with backoff, logged as
                                        an error (see SYSTEMIC_STATUSES)
* transient (5xx/408/429/transport)  -> stays `queued`, next attempt after an
  exponential backoff with full jitter, capped.

Retries must survive a restart and must not block the reconcile loop while
the control plane is down, so the schedule lives in the outbox row
(`attempts`, `next_attempt_at`): the shared full-jitter backoff applied to
that persisted count.
"""

from __future__ import annotations

import logging
import random
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
        self._last_prune: float | None = None

    def deliver_once(self) -> DeliveryResult:
        """Send due bundles in batches until none are due, the server is in
        trouble, or `max_batches` rounds were made (bounds one loop pass)."""
        total = DeliveryResult()
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
        now = self.clock().timestamp()
        if self._last_prune is not None and now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        pruned = self.outbox.prune_delivered(self.keep_delivered_seconds)
        if pruned:
            log.info("pruned %d delivered outbox rows older than %d s", pruned,
                     self.keep_delivered_seconds)

    def _retry(self, item: OutboxItem, error: str) -> Retry:
        next_at = self.clock().timestamp() + self.backoff.full_jitter(item.attempts + 1, self._rng)
        return Retry(item.bundle_id, error, next_at)

    def _deliver_batch(self, items: list[OutboxItem]) -> tuple[DeliveryResult, bool]:
        """Returns the outcome counts and whether to stop this round."""
        try:
            results = self.client.post_evidence_batch([(i.bundle_id, i.envelope) for i in items])
        except TransientError as e:
            log.warning("evidence delivery deferred (%d bundles): %s", len(items), e)
            self.outbox.settle(retry=[self._retry(i, str(e)) for i in items])
            return DeliveryResult(retried=len(items)), True
        except PermanentError as e:
            if e.status is None or e.status in SYSTEMIC_STATUSES:
                # The server refused *us* (identity, URL) or answered garbage: no
                # bundle is at fault, so none is dead-lettered; retry with backoff.
                log.error(
                    "evidence delivery refused for every bundle (%s); check mcpUrl and the"
                    " client certificate; %d bundles stay queued",
                    e,
                    len(items),
                )
                self.outbox.settle(retry=[self._retry(i, str(e)) for i in items])
                return DeliveryResult(retried=len(items)), True
            # The batch as a whole was refused (e.g. one malformed envelope):
            # fall back to one request per bundle so only the culprit dead-letters.
            log.warning("batch refused (%s); delivering %d bundles one by one", e, len(items))
            return self._deliver_singly(items)
        return self._settle(items, results), False

    def _settle(self, items: list[OutboxItem], results: list[ItemResult]) -> DeliveryResult:
        by_id = {i.bundle_id: i for i in items}
        delivered: list[tuple[str, str]] = []
        retry: list[Retry] = []
        dead: list[tuple[str, str]] = []
        for r in results:
            item = by_id[r.bundle_id]
            if r.ok and r.receipt_id is not None:
                delivered.append((r.bundle_id, r.receipt_id))
            elif r.transient or r.status in (200, 201):
                retry.append(self._retry(item, f"HTTP {r.status}: {r.error or 'no receipt'}"))
            else:
                dead.append((r.bundle_id, f"HTTP {r.status}: {r.error or 'refused'}"))
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
                if e.status is None or e.status in SYSTEMIC_STATUSES:
                    for rest in items[n:]:  # not this bundle's fault: retry all of them
                        results.append(ItemResult(rest.bundle_id, 503, error=str(e)))
                    stop = True
                    break
                results.append(ItemResult(item.bundle_id, e.status, error=str(e)))
                continue
            results.append(
                ItemResult(
                    item.bundle_id, 201 if receipt.created else 200, receipt_id=receipt.receipt_id
                )
            )
        return self._settle(items, results), stop
