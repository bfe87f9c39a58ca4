"""Wire format between the unprivileged agent and the root actuator.

One request and one reply per connection, each a frame: a 4-byte big-endian
length followed by that many bytes of UTF-8 JSON. A length prefix (rather
than newline-delimited JSON) lets the server refuse an oversized request
before reading it, and makes a truncated message detectable.

Requests, told apart by their one top-level key:

* `{"action": {...typed action...}, "step_start": 1}`: run a typed action;
* `{"observe": [argv...], "timeout": 10}`: a privileged read-only command
  from a fixed allowlist (the agent cannot list nftables or read block
  devices itself);
* `{"offer_baseline": "<DSSE envelope JSON>"}`: a signed baseline the agent
  fetched; the actuator verifies it itself and keeps it only if it is newer
  than anything it has accepted before;
* `{"collect_finished": "NixosRebuild"}`: the result of a rebuild transaction
  the actuator finished but never handed to the agent (the agent was down
  when it ended, and, seeing its target running, will not ask for it again);
  `result` is null when there is none. Delivered once, like any result.
* `{"watch": "nftables"}`: a stream of change notices of the live ruleset
  (`reconciler.actuator.watch_stream`): the first reply frame says the monitor
  is listening (`"watching": "nftables"`) or why not, then each further frame
  is a `WatchNotice` (`{"changed": "ruleset"}`, never any ruleset data) until
  one says `ended` or the connection closes. The agent sends nothing more.

A request of a kind this actuator does not know (one from a newer agent) is
refused with `UnknownRequest`; actuators older than that refused it with
`MalformedRequest`, and the agent treats both as "not available here".

Reply: `{"status": "ok" | "refused" | "error", "reason": CamelCase | null,
"message": str, ...}`. `refused` means the actuator's own policy said no and
nothing ran; `error` means the request could not be handled; `ok` carries
`result` (an ActionResult, which may itself report a failed command),
`completed` (an observation) or `baseline_version` (an accepted offer).

What is admitted is decided in `reconciler.actuator.policy`; this module only
parses, and an unparseable request is refused with a stable reason.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.actuator.result import ActionResult
from specs.actions import Action, ActionEnvelope
from specs.errors import ComplianceAgentError
from specs.host import Completed

HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 2 * 1024 * 1024  # a signed baseline envelope (payload <= 1 MiB, base64)
# No real request has more than a few dozen objects and arrays (a signed baseline
# travels as one string); a frame of millions would be parsed into root's memory.
MAX_JSON_CONTAINERS = 4096
MAX_REPLY_BYTES = 8 * 1024 * 1024  # records carry capped output tails only
MAX_OBSERVE_TIMEOUT = 30.0  # seconds; reads are quick, and a slow one must not hold root long
# ...except a backup read, which may take the time its job in the verified baseline
# gives it (a repository check takes minutes), up to this ceiling; one at a time.
MAX_BACKUP_READ_TIMEOUT = 86_400.0
KNOWN_ACTIONS = frozenset(
    cls.model_fields["type"].default for cls in get_args(get_args(Action)[0])
)


class Refusal(StrEnum):
    """Why the actuator said no (the `reason` of a refused or error reply). Stable: the
    agent records these verbatim in evidence, and operators alert on them."""

    PeerNotAllowed = "PeerNotAllowed"
    Busy = "Busy"
    RequestTooLarge = "RequestTooLarge"
    MalformedRequest = "MalformedRequest"
    UnknownAction = "UnknownAction"
    InvalidParams = "InvalidParams"
    BaselineUnavailable = "BaselineUnavailable"
    UnitNotInBaseline = "UnitNotInBaseline"
    RulesetNotInBaseline = "RulesetNotInBaseline"
    RulesetInclude = "RulesetInclude"
    EgressTableMismatch = "EgressTableMismatch"
    EgressElementNotAllowed = "EgressElementNotAllowed"
    RebuildTargetNotInBaseline = "RebuildTargetNotInBaseline"
    OutsideMaintenanceWindow = "OutsideMaintenanceWindow"
    ObservationNotAllowed = "ObservationNotAllowed"
    UnknownRequest = "UnknownRequest"  # a request kind this actuator does not know
    WatchUnavailable = "WatchUnavailable"  # the monitor could not be started
    # offer_baseline: the DSSE reasons of reconciler.trust.dsse, plus these
    UnknownKey = "UnknownKey"
    BadSignature = "BadSignature"
    WrongPayloadType = "WrongPayloadType"
    TooLarge = "TooLarge"
    Malformed = "Malformed"
    InvalidBaseline = "InvalidBaseline"
    BaselineWrongSite = "BaselineWrongSite"
    BaselineWrongHost = "BaselineWrongHost"
    BaselineRollback = "BaselineRollback"
    InternalError = "InternalError"


@dataclass(frozen=True)
class PolicyDecision:
    """A refusal: the stable reason and what the operator should know."""

    reason: Refusal
    message: str


class ActuatorRequest(ActionEnvelope):
    model_config = ConfigDict(extra="forbid")

    step_start: int = Field(1, ge=1, le=10_000)


class ObserveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    observe: list[str] = Field(min_length=1, max_length=16)
    timeout: float = Field(10.0, gt=0, le=MAX_BACKUP_READ_TIMEOUT)


class OfferBaselineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    offer_baseline: str = Field(min_length=2, max_length=MAX_REQUEST_BYTES)


class CollectFinishedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the one action the actuator finishes across its own restarts (a journaled transaction)
    collect_finished: Literal["NixosRebuild"]


class WatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    watch: Literal["nftables"]


Request = (ActuatorRequest | ObserveRequest | OfferBaselineRequest | CollectFinishedRequest
           | WatchRequest)
REQUEST_KINDS = ("action", "observe", "offer_baseline", "collect_finished", "watch")


class ActuatorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "refused", "error"]
    reason: Refusal | None = None
    message: str = ""
    result: ActionResult | None = None
    completed: Completed | None = None
    baseline_version: int | None = None
    watching: Literal["nftables"] | None = None  # a watch stream is open; notices follow


# Reply fields added after the first release, left out of a reply while unset: the
# agent of an earlier release forbids unknown fields, and it still talks to a newer
# actuator while a switch restarts both (it reattaches to its rebuild).
LATER_REPLY_FIELDS = frozenset({"watching"})


class WatchEnd(StrEnum):
    """Why the actuator ended a watch stream (its last frame)."""

    MonitorExited = "MonitorExited"  # nft monitor exited (message: its exit code)
    ActuatorStopping = "ActuatorStopping"


class WatchNotice(BaseModel):
    """One frame of a watch stream after the first: a change happened (what it was
    is not said: the agent reads the state again through its own reads), or the
    stream ends. Coalesced by the actuator: at most one per `NOTICE_INTERVAL`."""

    model_config = ConfigDict(extra="forbid")

    changed: Literal["ruleset"] | None = None
    ended: WatchEnd | None = None
    message: str = Field("", max_length=300)


MAX_NOTICE_BYTES = 4096  # a notice is a few dozen bytes; anything larger is not one
NOTICE_INTERVAL = 0.1  # seconds: the actuator sends at most one notice per interval
# An idle stream says it is alive this often (a frame with neither change nor end),
# so a client tells a quiet ruleset from a wedged actuator after a few missed.
HEARTBEAT_INTERVAL = 30.0


class FrameError(ComplianceAgentError):
    """A frame was truncated, oversized or not JSON."""

    def __init__(self, reason: Refusal, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            # the socket's timeout bounds one recv only: a peer sending a byte now and
            # then would otherwise hold its connection for as long as it likes
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {len(buf)} of {n} bytes")
            sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 65536))
        if not chunk:
            raise FrameError(
                Refusal.MalformedRequest,
                f"connection closed after {len(buf)} of {n} bytes",
            )
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, limit: int, *, deadline: float | None = None) -> bytes:
    """Read one frame; refuse (without reading the body) if it is over `limit` bytes.
    With `deadline` (time.monotonic()), the whole frame must arrive by then, else
    TimeoutError; the socket's timeout is changed on the way."""
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size, deadline))
    if size > limit:
        raise FrameError(
            Refusal.RequestTooLarge, f"frame of {size} bytes exceeds the {limit}-byte limit"
        )
    return _recv_exact(sock, size, deadline)


def send_json(sock: socket.socket, model: BaseModel) -> None:
    unset = None
    if isinstance(model, ActuatorReply):
        unset = {f for f in LATER_REPLY_FIELDS if getattr(model, f) is None}
    sock.sendall(encode_frame(model.model_dump_json(exclude=unset).encode()))


def refused(decision: PolicyDecision) -> ActuatorReply:
    return ActuatorReply(status="refused", reason=decision.reason, message=decision.message)


def parse_request(body: bytes) -> Request | PolicyDecision:
    """The typed request, or why not: unknown action types are told apart from bad params."""
    containers = body.count(b"{") + body.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        # Counted on the raw bytes (brackets inside strings too), before parsing: a
        # frame of `{},{},...` would cost root ~25 bytes of memory per byte sent.
        return PolicyDecision(
            Refusal.MalformedRequest,
            f"request has {containers} JSON containers; at most {MAX_JSON_CONTAINERS}",
        )
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        # ValueError: not JSON, not UTF-8, or an integer past Python's digit limit
        return PolicyDecision(Refusal.MalformedRequest, f"request is not JSON: {e}"[:300])
    if not isinstance(data, dict):
        return PolicyDecision(Refusal.MalformedRequest, "request must be a JSON object")
    if "observe" in data:
        return _validate(ObserveRequest, data, "observe")
    if "offer_baseline" in data:
        return _validate(OfferBaselineRequest, data, "offer_baseline")
    if "collect_finished" in data:
        return _validate(CollectFinishedRequest, data, "collect_finished")
    if "watch" in data:
        return _validate(WatchRequest, data, "watch")
    if "action" not in data and len(data) == 1:
        kind = str(next(iter(data)))[:64]
        return PolicyDecision(
            Refusal.UnknownRequest,
            f"request kind {kind!r} is not known to this actuator (it knows "
            f"{', '.join(REQUEST_KINDS)}); it may be older than the agent",
        )
    if not isinstance(data.get("action"), dict):
        return PolicyDecision(
            Refusal.MalformedRequest,
            'request must be {"action": {...}}, {"observe": [...]}, {"offer_baseline": ...}, '
            '{"collect_finished": ...} or {"watch": "nftables"}',
        )
    kind = data["action"].get("type")
    if not isinstance(kind, str) or kind not in KNOWN_ACTIONS:  # a list is not hashable
        return PolicyDecision(
            Refusal.UnknownAction,
            f"action type {str(kind)[:64]!r} is not one of {sorted(KNOWN_ACTIONS)}",
        )
    return _validate(ActuatorRequest, data, str(kind))


def _validate(
    model: (
        type[ActuatorRequest]
        | type[ObserveRequest]
        | type[OfferBaselineRequest]
        | type[CollectFinishedRequest]
        | type[WatchRequest]
    ),
    data: dict[str, object],
    what: str,
) -> Request | PolicyDecision:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        return PolicyDecision(Refusal.InvalidParams, f"invalid {what} request: {_problems(e)}")


def _problems(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
    )[:1000]
