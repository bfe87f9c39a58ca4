"""Order admission (guardrail 1): is this signed order for us, fresh, and new?

`OrderAdmission.admit(envelope_bytes)` runs these checks in this order and
stops at the first failure; the verdict's `reason` names it:

    TooLarge          envelope over 64 KiB
    Malformed         not JSON / not a DSSE envelope / payload not an order
    WrongPayloadType  payloadType is not the order type
    UnknownKey        no signature by a key in mcpPublicKeys
    BadSignature      a trusted key's signature does not verify
    WrongSite         site_id is not this site
    WrongHost         host_id is not this host
    AlreadyAdmitted   this very order (same signed payload) was admitted before
    Replayed          nonce already admitted for a different payload (nonces are
                      kept until issued_at + ttl_seconds + skew)
    NotYetValid       issued_at later than now + max skew
    Expired           now >= issued_at + min(ttl_seconds, orderTtl)   (outcome "expired")
    UnsupportedAction action not in the closed set
    InvalidParams     params do not fit the action

`AlreadyAdmitted` is no refusal: the control plane served an order again
(e.g. the agent crashed before saving its order cursor). It has no outcome;
its admission, trigger and evidence were committed the first time, so the
caller records nothing. It is checked before the time checks, so an order
admitted before a long stop is not reported as expired on its re-read.

Every other verdict has outcome "rejected". Nothing raises out of `admit`:
an unexpected exception becomes `Malformed`, because a hostile envelope must
never crash the loop. Only an admitted order records its nonce; a rejected
order changes nothing (the caller records rejection evidence from the verdict).

`admit_in(tx, envelope)` records the nonce in the caller's transaction, so the
nonce, the order's trigger and its evidence commit together or not at all (the
control-plane loop); `admit` / `admit_many` commit on their own (`order verify`,
benchmarks).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import ValidationError

from reconciler.store.database import Transaction
from reconciler.store.nonces import NonceClaim, NonceStore, NonceUse
from reconciler.trust.dsse import TrustedKeys, TrustError, loads_strict, verify_envelope
from specs.orders import (
    MAX_ORDER_BYTES,
    ORDER_PAYLOAD_TYPE,
    Order,
    OrderAction,
    OrderPayload,
    parse_params,
)
from specs.resource import Trigger

if TYPE_CHECKING:
    from specs.config import AgentConfig

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
AdmissionOutcome = Literal["rejected", "expired"]
ALREADY_ADMITTED = "AlreadyAdmitted"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AdmissionVerdict:
    admitted: bool
    reason: str  # CamelCase; "Admitted" when admitted
    order: Order | None = None
    outcome: AdmissionOutcome | None = None  # evidence outcome for a refusal
    message: str = ""  # operator detail (never contains key material)
    order_id: str | None = None  # known once the payload parsed, even when refused

    @property
    def already_admitted(self) -> bool:
        return self.reason == ALREADY_ADMITTED

    def to_json(self) -> dict[str, object]:
        return {"admitted": self.admitted, "reason": self.reason}


class OrderAdmission:
    """Decides whether a signed order envelope is admitted (see module doc).

    Thread-safe: the nonce insert is atomic in SQLite, so two concurrent
    admissions of one order admit it at most once.
    """

    def __init__(
        self,
        trusted_keys: Sequence[str] | TrustedKeys,
        site_id: str,
        host_id: str,
        order_ttl: int,
        max_skew_seconds: float,
        nonce_store: NonceStore,
        clock: Clock = utc_now,
        max_bytes: int = MAX_ORDER_BYTES,
    ) -> None:
        self.keys = (
            trusted_keys if isinstance(trusted_keys, TrustedKeys) else TrustedKeys(trusted_keys)
        )
        self.site_id = site_id
        self.host_id = host_id
        self.order_ttl = order_ttl
        self.max_skew = timedelta(seconds=max_skew_seconds)
        self.nonces = nonce_store
        self.clock = clock
        self.max_bytes = max_bytes

    @classmethod
    def from_config(
        cls, cfg: AgentConfig, nonce_store: NonceStore, clock: Clock = utc_now
    ) -> OrderAdmission:
        """The admission the daemon and `order verify` share, so they always agree.

        Allowed clock skew for `issued_at` is `ntpMaxSkewMs`: the same tolerance
        the clock-sanity guard applies before it distrusts this host's clock.
        """
        return cls(
            cfg.mcp_public_keys,
            site_id=cfg.site_id,
            host_id=cfg.host_id,
            order_ttl=cfg.order_ttl,
            max_skew_seconds=cfg.ntp_max_skew_ms / 1000,
            nonce_store=nonce_store,
            clock=clock,
        )

    def admit(self, envelope_bytes: bytes, now: datetime | None = None) -> AdmissionVerdict:
        """Admit or refuse one order envelope (see module doc). Never raises."""
        return self.admit_many([envelope_bytes], now)[0]

    def admit_many(
        self, envelopes: Sequence[bytes], now: datetime | None = None
    ) -> list[AdmissionVerdict]:
        """`admit` for a batch (e.g. one control-plane poll), verdicts in input order.

        Every check runs per envelope; the nonces of all admissible orders are
        then recorded in one transaction, so a batch costs one commit.
        """
        when = now or self.clock()
        verdicts: list[AdmissionVerdict | None] = []
        pending: list[tuple[int, Order, NonceClaim]] = []
        for i, env in enumerate(envelopes):
            checked = self._safe_check(env, when)
            if isinstance(checked, AdmissionVerdict):
                verdicts.append(checked)
            else:
                verdicts.append(None)
                pending.append((i, *checked))
        if pending:
            try:
                uses = self.nonces.record_many([c for _, _, c in pending], when)
            except Exception as e:
                log.warning("recording order nonces failed: %s", type(e).__name__)
                for i, o, _ in pending:
                    verdicts[i] = _reject("Malformed", "nonce store unavailable", o.order_id)
            else:
                for (i, o, _), use in zip(pending, uses, strict=True):
                    verdicts[i] = _verdict(o, use)
        return [v for v in verdicts if v is not None]

    def admit_in(
        self, tx: Transaction, envelope_bytes: bytes, now: datetime | None = None
    ) -> AdmissionVerdict:
        """`admit`, recording the nonce inside the caller's write transaction.

        The nonce commits with whatever else the caller writes, or not at all.
        A failure to record it raises (the caller's transaction must roll back
        and the order be read again); every check before that never raises.
        """
        when = now or self.clock()
        checked = self._safe_check(envelope_bytes, when)
        if isinstance(checked, AdmissionVerdict):
            return checked
        order, claim = checked
        return _verdict(order, self.nonces.claim(tx, claim, when))

    def _safe_check(
        self, envelope_bytes: bytes, now: datetime
    ) -> AdmissionVerdict | tuple[Order, NonceClaim]:
        try:
            return self._check(envelope_bytes, now)
        except Exception as e:  # a hostile envelope must never take the loop down
            log.warning("order admission failed unexpectedly: %s", type(e).__name__)
            return _reject("Malformed", type(e).__name__)

    def _check(
        self, envelope_bytes: bytes, now: datetime
    ) -> AdmissionVerdict | tuple[Order, NonceClaim]:
        """Every check but recording the nonce: a verdict, or (order, its nonce claim)."""
        if not isinstance(envelope_bytes, bytes | bytearray | memoryview):
            return _reject("Malformed", "order envelope must be bytes")
        try:
            payload = verify_envelope(
                bytes(envelope_bytes), ORDER_PAYLOAD_TYPE, self.keys, self.max_bytes
            )
        except TrustError as e:
            return _reject(e.reason, e.message)
        try:
            p = OrderPayload.model_validate(loads_strict(payload, "order payload"))
        except TrustError as e:
            return _reject("Malformed", e.message)
        except ValidationError as e:
            return _reject("Malformed", _first_error(e))
        oid = p.order_id
        if p.site_id != self.site_id:
            return _reject("WrongSite", f"order is for site {p.site_id[:64]!r}", oid)
        if p.host_id != self.host_id:
            return _reject("WrongHost", f"order is for host {p.host_id[:64]!r}", oid)
        digest = hashlib.sha256(payload).hexdigest()
        use = self.nonces.lookup(p.nonce, oid, digest)
        if use is NonceUse.same_order:
            return AdmissionVerdict(False, ALREADY_ADMITTED, order_id=oid,
                                    message="this order was admitted before")
        if use is NonceUse.replay:
            return _reject("Replayed", "nonce already admitted for another order", oid)
        if p.issued_at > now + self.max_skew:
            return _reject(
                "NotYetValid", f"issued_at {p.issued_at.isoformat()} is in the future", oid
            )
        expires = p.expires_at(self.order_ttl)
        if now >= expires:
            return AdmissionVerdict(
                False,
                "Expired",
                outcome="expired",
                order_id=oid,
                message=f"expired at {expires.isoformat()}",
            )
        try:
            action = OrderAction(p.action)
        except ValueError:
            return _reject("UnsupportedAction", f"unknown action {p.action[:64]!r}", oid)
        try:
            params = parse_params(action, p.params)
        except ValidationError as e:
            return _reject("InvalidParams", _first_error(e), oid)
        order = Order(
            order_id=oid,
            site_id=p.site_id,
            host_id=p.host_id,
            nonce=p.nonce,
            issued_at=p.issued_at,
            ttl_seconds=p.ttl_seconds,
            action=action,
            params=params,
        )
        return order, NonceClaim(p.nonce, oid, digest, nonce_keep_until(order, self.max_skew))


def _verdict(order: Order, use: NonceUse) -> AdmissionVerdict:
    if use is NonceUse.fresh:
        return AdmissionVerdict(True, "Admitted", order=order, order_id=order.order_id)
    if use is NonceUse.same_order:
        return AdmissionVerdict(False, ALREADY_ADMITTED, order_id=order.order_id,
                                message="this order was admitted before")
    return _reject("Replayed", "nonce already admitted for another order", order.order_id)


def nonce_keep_until(order: Order, max_skew: timedelta) -> datetime:
    """Until when an admitted order's nonce is remembered: past the last instant
    the order could pass the Expired check under any orderTtl (which only ever
    shortens its signed `ttl_seconds`), even with the clock stepped back by the skew."""
    return order.issued_at + timedelta(seconds=order.ttl_seconds) + max_skew


def _reject(reason: str, message: str, order_id: str | None = None) -> AdmissionVerdict:
    return AdmissionVerdict(False, reason, outcome="rejected", message=message, order_id=order_id)


def _first_error(e: ValidationError) -> str:
    errs = e.errors()
    if not errs:
        return "invalid"
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return f"{loc}: {first['msg']}"[:300]


# Which resource kind an order concerns; None means every managed kind.
ACTION_KIND: dict[OrderAction, str | None] = {
    OrderAction.reconcile_now: None,
    OrderAction.collect_evidence: None,
    OrderAction.run_backup: "backup",
    OrderAction.restart_service: "services",
    OrderAction.rebuild: "patching",
    OrderAction.restore_firewall: "firewall",
    OrderAction.refresh_egress: "egress",
}


def order_to_trigger(order: Order) -> tuple[str | None, Trigger]:
    """The resource kind an admitted order affects (None = all) and its Trigger."""
    return ACTION_KIND[order.action], Trigger(
        order_id=order.order_id,
        action=order.action.value,
        params=order.params.model_dump(mode="json"),
        requested_at=order.issued_at,
    )
