"""Signed orders: one-shot requests from the control plane.

Payload type `application/vnd.compliance-agent.order+json`, snake_case keys:

    order_id, site_id, host_id, nonce, issued_at, ttl_seconds, action, params

Parsing happens in two stages on purpose, mirroring the admission order
(reconciler.trust.admission): `OrderPayload` checks the envelope-level fields (a
failure there is `Malformed`); `action` and `params` are checked afterwards
against the closed action set (`UnsupportedAction`, `InvalidParams`), so an
order for an action this agent version does not know is still attributed to
its order_id, site and nonce.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

ORDER_PAYLOAD_TYPE = "application/vnd.compliance-agent.order+json"
MAX_ORDER_BYTES = 64 * 1024

NONCE_RE = re.compile(r"^[0-9a-f]{32,128}$")  # >= 128 bits, lowercase hex
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
RFC3339_UTC_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|\+00:00|-00:00)$"
)
# Same grammar as specs.actions.UNIT_RE: no path separators, no leading dash.
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount)$")
JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
STORE_PATH_RE = re.compile(r"^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+._?=-]+(/[^\s]*)?$")
# A flake reference: scheme-prefixed (github:, git+https:, path:, ...) or a bare
# registry name, optionally with '#attr'. No whitespace, no leading '-'.
FLAKE_REF_RE = re.compile(
    r"^(?:[a-z][a-z0-9+.-]*:)?[A-Za-z0-9._~/?=&%+@-][A-Za-z0-9._~:/?#=&%+@,-]*$"
)


class OrderAction(StrEnum):
    reconcile_now = "reconcile_now"
    run_backup = "run_backup"
    restart_service = "restart_service"
    rebuild = "rebuild"
    restore_firewall = "restore_firewall"
    refresh_egress = "refresh_egress"
    collect_evidence = "collect_evidence"


class _Params(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ReconcileNowParams(_Params):
    pass


class RunBackupParams(_Params):
    job: StrictStr

    @field_validator("job")
    @classmethod
    def _job(cls, v: str) -> str:
        if not JOB_RE.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not a backup job name (letters, digits, ._@-)")
        return v


class RestartServiceParams(_Params):
    unit: StrictStr

    @field_validator("unit")
    @classmethod
    def _unit(cls, v: str) -> str:
        if len(v) > 256 or v.startswith("-") or not UNIT_RE.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not a systemd unit name like 'sshd.service'")
        return v


class RebuildParams(_Params):
    target: StrictStr

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if len(v) > 512 or v.startswith("-"):
            raise ValueError("rebuild target must be a store path or flake ref of <= 512 chars")
        if v.startswith("/"):
            if not STORE_PATH_RE.fullmatch(v):
                raise ValueError(f"{v[:80]!r} is not a /nix/store path")
        elif not FLAKE_REF_RE.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not a flake reference like 'github:org/repo#host'")
        return v


class RestoreFirewallParams(_Params):
    pass


class RefreshEgressParams(_Params):
    pass


class CollectEvidenceParams(_Params):
    pass


OrderParams = (
    ReconcileNowParams
    | RunBackupParams
    | RestartServiceParams
    | RebuildParams
    | RestoreFirewallParams
    | RefreshEgressParams
    | CollectEvidenceParams
)

ACTION_PARAMS: dict[OrderAction, type[_Params]] = {
    OrderAction.reconcile_now: ReconcileNowParams,
    OrderAction.run_backup: RunBackupParams,
    OrderAction.restart_service: RestartServiceParams,
    OrderAction.rebuild: RebuildParams,
    OrderAction.restore_firewall: RestoreFirewallParams,
    OrderAction.refresh_egress: RefreshEgressParams,
    OrderAction.collect_evidence: CollectEvidenceParams,
}


def parse_rfc3339_utc(v: str) -> datetime:
    """Parse an RFC 3339 timestamp that must be in UTC ('Z' or '+00:00')."""
    if not RFC3339_UTC_RE.fullmatch(v):
        raise ValueError(f"{v[:40]!r} is not an RFC 3339 UTC time like 2026-01-31T12:00:00Z")
    head, frac = v[:19], v[19:]
    frac = frac.rstrip("Zz").removesuffix("+00:00").removesuffix("-00:00")
    micro = int((frac[1:] + "000000")[:6]) if frac.startswith(".") else 0
    base = datetime.fromisoformat(head.replace("t", "T"))  # C parser; strptime is 10x slower
    return base.replace(microsecond=micro, tzinfo=UTC)


def format_rfc3339(dt: datetime) -> str:
    """UTC, microseconds, 'Z' suffix: fixed width, so strings sort like times."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class OrderPayload(BaseModel):
    """The signed order as sent; `action`/`params` are checked later (see module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    order_id: StrictStr
    site_id: StrictStr = Field(min_length=1, max_length=256)
    host_id: StrictStr = Field(min_length=1, max_length=256)
    nonce: StrictStr
    issued_at: datetime
    ttl_seconds: StrictInt = Field(gt=0, le=366 * 86400)
    action: StrictStr = Field(max_length=64)
    params: dict[str, Any]

    @field_validator("order_id")
    @classmethod
    def _order_id(cls, v: str) -> str:
        if not ID_RE.fullmatch(v):
            raise ValueError("order_id must be 1-128 chars of letters, digits, ._:@-")
        return v

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, v: str) -> str:
        if not NONCE_RE.fullmatch(v):
            raise ValueError("nonce must be 32-128 lowercase hex characters (>= 128 bits)")
        return v

    @field_validator("issued_at", mode="before")
    @classmethod
    def _issued_at(cls, v: Any) -> datetime:
        if not isinstance(v, str):
            raise ValueError("issued_at must be an RFC 3339 UTC string")
        return parse_rfc3339_utc(v)

    def expires_at(self, max_ttl_seconds: int) -> datetime:
        """issued_at + min(ttl_seconds, the agent's orderTtl)."""
        return self.issued_at + timedelta(seconds=min(self.ttl_seconds, max_ttl_seconds))


class Order(BaseModel):
    """An admitted order: the payload with a known action and typed params."""

    model_config = ConfigDict(frozen=True)

    order_id: str
    site_id: str
    host_id: str
    nonce: str
    issued_at: datetime
    ttl_seconds: int
    action: OrderAction
    params: OrderParams


def parse_params(action: OrderAction, params: dict[str, Any]) -> OrderParams:
    """Validate `params` for `action`; raises pydantic.ValidationError."""
    model = ACTION_PARAMS[action]
    return model.model_validate(params)  # type: ignore[return-value]
