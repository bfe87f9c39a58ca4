"""The control-plane thread: poll orders and the signed baseline, deliver evidence.

It runs beside the reconcile loop so a slow or unreachable control plane never
delays a pass or the watchdog: passes keep reconciling from the last good
baseline and evidence queues in the outbox until delivery works again.

Orders go through admission; every verdict becomes evidence; an admitted
order becomes a trigger in desired state (reconciler.store.triggers) and wakes the
reconcile loop. Nothing an order asks for bypasses the controllers or guards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from controllers.time_ import http_date_offset_ms
from reconciler.delivery.baseline_resolver import BaselineResolver
from reconciler.delivery.checkpoints import CheckpointDelivery
from reconciler.delivery.client import ControlPlaneClient, ControlPlaneError
from reconciler.delivery.deliverer import Deliverer
from reconciler.evidence.writer import EvidenceRequest, EvidenceWriter
from reconciler.ops.clock_step import ClockStepDetector
from reconciler.store.database import Store
from reconciler.store.meta import ORDERS_CURSOR, MetaStore
from reconciler.store.outbox import Outbox
from reconciler.store.triggers import TriggerStore
from reconciler.trust.admission import AdmissionVerdict, OrderAdmission, order_to_trigger
from specs.status import Outcome

log = logging.getLogger("compliance_agent.control_plane")

@dataclass
class ControlPlaneStats:
    polls: int = 0
    requested_polls: int = 0  # of `polls`, made at once on request (order wake-ups)
    poll_errors: int = 0
    orders_admitted: int = 0
    orders_already_admitted: int = 0
    orders_refused: dict[str, int] = field(default_factory=dict)
    delivered: int = 0
    clock_steps: int = 0
    last_error: str | None = None
    last_contact: datetime | None = None
    http_offset_ms: float | None = None


class ControlPlaneLoop:
    def __init__(
        self,
        *,
        client: ControlPlaneClient,
        admission: OrderAdmission,
        triggers: TriggerStore,
        writer: EvidenceWriter,
        outbox: Outbox,
        deliverer: Deliverer,
        baseline_resolver: BaselineResolver,
        store: Store,
        poll_interval: float,
        on_admitted: Callable[[str | None, str], None],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
        checkpoints: CheckpointDelivery | None = None,
        clock_steps: ClockStepDetector | None = None,
    ) -> None:
        self.client = client
        self.admission = admission
        self.triggers = triggers
        self.writer = writer
        self.outbox = outbox
        self.deliverer = deliverer
        self.baseline_resolver = baseline_resolver
        self.meta = MetaStore(store)
        self.poll_interval = poll_interval
        self.on_admitted = on_admitted
        self.clock = clock
        self.rng = rng or random.Random()
        self.checkpoints = checkpoints
        self.clock_steps = clock_steps or ClockStepDetector(wall=lambda: clock().timestamp())
        self.stats = ControlPlaneStats()
        self.recent_verdicts: deque[AdmissionVerdict] = deque(maxlen=50)  # for status and the demo
        self._delivery_backoff = 0.0  # seconds until the deliverer's backoff ends
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._poll_requested = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="control-plane", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.client.close()

    def kick(self) -> None:
        """Deliver now (e.g. right after a pass wrote bundles)."""
        self._kick.set()

    def request_poll(self) -> None:
        """Poll orders and the baseline as soon as this thread is free (an order
        wake-up). Thread-safe and non-blocking; requests made before the poll
        starts coalesce into one. The interval schedule is not changed."""
        self._poll_requested.set()
        self._kick.set()

    def _run(self) -> None:
        # Scheduled on the monotonic clock only: a wall-clock step (noticed and
        # recorded by watch_clock) neither stalls nor hurries polls or delivery.
        next_poll = 0.0
        while not self._stop.is_set():
            self.watch_clock()
            now = time.monotonic()
            if now >= next_poll:
                self._poll_requested.clear()
                self.poll_once()
                next_poll = now + self.poll_interval * (1 + self.rng.uniform(-0.1, 0.1))
            elif self._poll_requested.is_set():
                self._poll_requested.clear()
                self.stats.requested_polls += 1
                self.poll_once()
            self.deliver_once()
            if not self._poll_requested.is_set():
                wait = next_poll - time.monotonic()
                if self._delivery_backoff > 0:  # wake when the delivery backoff ends
                    wait = min(wait, self._delivery_backoff)
                self._kick.wait(min(5.0, max(0.2, wait)))
            self._kick.clear()

    def watch_clock(self) -> None:
        """Log and record a wall-clock step as evidence (check `clock_step`)."""
        step = self.clock_steps.check()
        if step is None:
            return
        self.stats.clock_steps += 1
        before = datetime.fromtimestamp(step.wall_before, UTC).isoformat()
        after = datetime.fromtimestamp(step.wall_after, UTC).isoformat()
        log.warning("wall clock stepped", extra={
            "reason": "ClockStep", "detail": f"{step.seconds:+.3f} s: {before} -> {after}"})
        try:
            self.writer.record(
                check="clock_step", outcome=Outcome.alert,
                pre_state={"expected_wall_time": before},
                post_state={"wall_time": after, "step_seconds": round(step.seconds, 3)},
                error=f"wall clock stepped {step.seconds:+.3f} s",
            )
        except Exception as e:  # a full disk must not stop the control-plane thread
            self._note_error("clock step evidence", e)

    # -- one round ---------------------------------------------------------------
    def poll_once(self) -> None:
        self.stats.polls += 1
        try:
            self._poll_orders()
        except ControlPlaneError as e:
            self._note_error("orders", e)
        try:
            self.baseline_resolver.current()  # fetch (ETag), verify, store if newer
            for rej in self.baseline_resolver.take_rejections():
                self.writer.record(
                    check="baseline", outcome=Outcome.rejected,
                    pre_state={"version": rej.version, "etag": rej.etag},
                    post_state={"applied": False, "reason": rej.reason},
                    error=f"{rej.reason}: {rej.message}",
                )
        except Exception as e:
            self._note_error("baseline", e)
        self._note_server_clock()

    def _poll_orders(self) -> None:
        cursor = self._cursor()
        page = self.client.fetch_orders(cursor)
        self.stats.last_contact = self.clock()
        self.stats.last_error = None
        for envelope in page.orders:
            try:
                # the signature covers the payload, not this JSON's formatting
                self.handle_order(json.dumps(envelope, separators=(",", ":")).encode())
            except Exception as e:
                # Not durable (disk full, database error): keep the cursor where it
                # is so this order and the rest of the page are read again; the
                # ones already handled are then recognised as AlreadyAdmitted.
                log.error("order could not be recorded; it will be read again", extra={
                    "reason": "OrderNotRecorded", "detail": f"{type(e).__name__}: {e}"[:300]})
                self._note_error("orders", e)
                return
        # Only now: every order of the page is durably handled (admitted with its
        # evidence, or refused with its evidence), so the cursor skips none.
        if page.cursor and page.cursor != cursor:
            self._save_cursor(page.cursor)

    def handle_order(self, raw: bytes) -> AdmissionVerdict:
        """Admit or refuse one order envelope, with evidence either way.

        The nonce, the trigger and the verdict's evidence (with its outbox entry)
        commit in one transaction or not at all; an exception means nothing was
        recorded and the order must be read again. An order admitted before
        (`AlreadyAdmitted`) records nothing.
        """
        with self.writer.transaction() as tx:
            verdict = self.admission.admit_in(tx, raw)
            order = verdict.order
            if not verdict.already_admitted:
                if verdict.admitted and order is not None:
                    kind, trigger = order_to_trigger(order)
                    self.triggers.add_in(tx, kind, trigger, self.clock())
                self.writer.append(tx, [_order_evidence(verdict, raw)])
        self.recent_verdicts.append(verdict)
        if verdict.already_admitted:
            self.stats.orders_already_admitted += 1
            log.info("order seen again, admitted before", extra={
                "reason": verdict.reason, "detail": str(verdict.order_id)})
        elif verdict.admitted and order is not None:
            kind, _ = order_to_trigger(order)
            self.stats.orders_admitted += 1
            log.info("order admitted", extra={"resource": kind or "all", "reason": "Admitted",
                                              "detail": f"{order.order_id} {order.action.value}"})
            self.on_admitted(kind, order.action.value)
        else:
            self.stats.orders_refused[verdict.reason] = (
                self.stats.orders_refused.get(verdict.reason, 0) + 1)
            log.warning("order refused", extra={"reason": verdict.reason,
                                                "detail": verdict.message[:300]})
        return verdict

    def deliver_once(self) -> None:
        try:
            result = self.deliverer.deliver_once()
        except Exception as e:  # the deliverer handles network trouble; this is a bug guard
            self._note_error("delivery", e)
            return
        self.stats.delivered += result.delivered
        self._delivery_backoff = self.deliverer.wait_seconds()
        if self.checkpoints is not None:
            try:
                self.checkpoints.deliver_once()  # after the bundles it covers
            except Exception as e:  # network trouble is handled inside; this is a bug guard
                self._note_error("checkpoint delivery", e)

    # -- helpers ---------------------------------------------------------------------
    def _note_error(self, what: str, e: Exception) -> None:
        self.stats.poll_errors += 1
        self.stats.last_error = f"{what}: {e}"
        log.warning("control plane unreachable or refusing", extra={
            "reason": "ControlPlaneError", "detail": f"{what}: {e}"[:500]})

    def _note_server_clock(self) -> None:
        server = self.client.last_server_date
        if server is None:
            return
        self.stats.http_offset_ms = http_date_offset_ms(server, self.clock())

    def _cursor(self) -> str | None:
        return self.meta.get(ORDERS_CURSOR)

    def _save_cursor(self, cursor: str) -> None:
        self.meta.put(ORDERS_CURSOR, cursor)


def _order_evidence(verdict: AdmissionVerdict, raw: bytes) -> EvidenceRequest:
    order = verdict.order
    return EvidenceRequest(
        check="order",
        outcome=Outcome.success if verdict.admitted else Outcome(verdict.outcome or "rejected"),
        order_id=verdict.order_id,
        pre_state={"order_id": verdict.order_id,
                   "action": order.action.value if order else None,
                   "envelope_sha256": _sha256(raw), "size": len(raw)},
        post_state={"admitted": verdict.admitted, "reason": verdict.reason},
        error=None if verdict.admitted else f"{verdict.reason}: {verdict.message}"[:1000],
    )


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()
