"""Wire format and admission rules between the unprivileged agent and the root actuator.

One request and one reply per connection, each a frame: a 4-byte big-endian
length followed by that many bytes of UTF-8 JSON. A length prefix (rather
than newline-delimited JSON) lets the server refuse an oversized request
before reading it, and makes a truncated message detectable.

Request: `{"action": {...typed action...}, "step_start": 1}` (an
`ActionEnvelope` plus the evidence step number to start counting from), or a
privileged read `{"observe": [argv...], "timeout": 30}`: the unprivileged
agent cannot list nftables (CAP_NET_ADMIN), so the few read-only commands
its controllers need are served here, from a fixed allowlist.

Reply: `{"status": "ok" | "refused" | "error", "reason": CamelCase | null,
"message": str, "result": ActionResult | null}`. `refused` means the
actuator's own policy said no and nothing ran; an observe reply carries
`completed` (the command's exit code and output) instead of `result`; `error` means the request
could not be handled at all; `ok` carries the ActionResult (which may itself
report a failed command).

Admission (`parse_request`, then `ActuatorPolicy.check`), in order:

* the request must be JSON naming a known action type (else UnknownAction)
  with valid params (else InvalidParams);
* a unit action (start, restart, enable, backup) must name a unit listed by a
  unit-bearing kind of the baseline (services, av_edr, logging, backup);
* `ApplyNftRuleset` must name exactly the baseline firewall file and hash;
* `UpdateEgressSet` must target the configured egress table, one of its two
  sets, with elements that are IP addresses/prefixes of the set's family
  (they are spliced into an nft script, so anything else is refused);
* `NixosRebuild` must target a system the baseline's patching spec names;
* disruptive actions run only inside the maintenance window unless
  `allowDisruptiveOutsideWindow` is set.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reconciler.actuator.result import ActionResult
from specs.actions import (
    UNIT_RE,
    Action,
    ActionEnvelope,
    ApplyNftRuleset,
    EnableUnit,
    NixosRebuild,
    RestartUnit,
    Rollback,
    RunBackup,
    StartUnit,
    UpdateEgressSet,
)
from specs.baseline import Baseline
from specs.errors import ComplianceAgentError
from specs.host import Completed
from specs.window import MaintenanceWindow

HEADER = struct.Struct(">I")
MAX_REQUEST_BYTES = 256 * 1024  # an egress set of a few thousand prefixes fits easily
MAX_REPLY_BYTES = 8 * 1024 * 1024  # records carry capped output tails only
KNOWN_ACTIONS = frozenset(
    cls.model_fields["type"].default for cls in get_args(get_args(Action)[0])
)


class Refusal(StrEnum):
    """Why the actuator said no (the `reason` of a refused or error reply)."""

    PeerNotAllowed = "PeerNotAllowed"
    RequestTooLarge = "RequestTooLarge"
    MalformedRequest = "MalformedRequest"
    UnknownAction = "UnknownAction"
    InvalidParams = "InvalidParams"
    BaselineUnavailable = "BaselineUnavailable"
    UnitNotInBaseline = "UnitNotInBaseline"
    RulesetNotInBaseline = "RulesetNotInBaseline"
    EgressTableMismatch = "EgressTableMismatch"
    RebuildTargetNotInBaseline = "RebuildTargetNotInBaseline"
    OutsideMaintenanceWindow = "OutsideMaintenanceWindow"
    ObservationNotAllowed = "ObservationNotAllowed"
    InternalError = "InternalError"


class ActuatorRequest(ActionEnvelope):
    model_config = ConfigDict(extra="forbid")

    step_start: int = Field(1, ge=1)


class ObserveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    observe: list[str] = Field(min_length=1, max_length=16)
    timeout: float = Field(30.0, gt=0, le=120)


class ActuatorReply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "refused", "error"]
    reason: Refusal | None = None
    message: str = ""
    result: ActionResult | None = None
    completed: Completed | None = None


class FrameError(ComplianceAgentError):
    """A frame was truncated, oversized or not JSON."""

    def __init__(self, reason: Refusal, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def encode_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 65536))
        if not chunk:
            raise FrameError(
                Refusal.MalformedRequest,
                f"connection closed after {len(buf)} of {n} bytes",
            )
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, limit: int) -> bytes:
    """Read one frame; refuse (without reading the body) if it is over `limit` bytes."""
    (size,) = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if size > limit:
        raise FrameError(
            Refusal.RequestTooLarge, f"frame of {size} bytes exceeds the {limit}-byte limit"
        )
    return _recv_exact(sock, size)


def send_json(sock: socket.socket, model: BaseModel) -> None:
    sock.sendall(encode_frame(model.model_dump_json().encode()))


def is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


# --- admission ---------------------------------------------------------------------------

# Baseline kinds whose specs name systemd units the actuator may act on.
UNIT_KINDS = ("services", "av_edr", "logging", "backup")
# The baseline kind that names the systems a rebuild may switch to.
PATCHING_KIND = "patching"
EGRESS_SETS = {"allowed_v4": 4, "allowed_v6": 6}
NFT_SANDBOX_MODULE = "reconciler.actuator.nft_sandbox"
# Block devices whose LUKS header may be read (the agent has no /dev: PrivateDevices).
DEVICE_RE = re.compile(r"^/dev/(?!.*\.\.)[A-Za-z0-9._/:-]+$")
DEVICE_READS = (
    ["blkid", "-p", "-o", "export"], ["cryptsetup", "isLuks"], ["cryptsetup", "luksDump"]
)


@dataclass(frozen=True)
class Verdict:
    reason: Refusal
    message: str


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a dumped spec (kinds differ in shape; walking is shape-agnostic)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def baseline_units(baseline: Baseline) -> set[str]:
    units: set[str] = set()
    for kind in UNIT_KINDS:
        spec = getattr(baseline, kind, None)
        if spec is not None:
            units.update(s for s in _strings(spec.model_dump()) if UNIT_RE.match(s))
    return units


def baseline_rebuild_targets(baseline: Baseline) -> set[str]:
    """The systems a rebuild may switch to: the patching spec's `target` (and `targets`)."""
    spec = getattr(baseline, PATCHING_KIND, None)
    if spec is None:
        return set()
    found = {getattr(spec, "target", None), *getattr(spec, "targets", ())}
    return {t for t in found if isinstance(t, str) and t}


class ActuatorPolicy:
    def __init__(
        self,
        *,
        egress_table: str,
        window: MaintenanceWindow,
        allow_disruptive_outside_window: bool,
        clock: Callable[[], datetime],
    ) -> None:
        self.egress_table = egress_table
        self.window = window
        self.allow_disruptive_outside_window = allow_disruptive_outside_window
        self.clock = clock

    def check(self, action: Action, baselines: list[Baseline]) -> Verdict | None:
        """None if the action may run now; otherwise why not."""
        verdict = self._target_allowed(action, baselines)
        if verdict is not None:
            return verdict
        if action.disruptive and not self.allow_disruptive_outside_window:
            now = self.clock()
            if not self.window.contains(now):
                return Verdict(
                    Refusal.OutsideMaintenanceWindow,
                    f"{action.type} is disruptive and {now:%H:%M} UTC is outside the "
                    f"maintenance window {self.window}; it will run in the window "
                    "(or set allowDisruptiveOutsideWindow)",
                )
        return None

    def check_observe(
        self, argv: list[str], baselines: list[Baseline], sandbox: list[str]
    ) -> tuple[list[str] | None, Verdict | None]:
        """The argv to run for a privileged read, or why not.

        `sandbox` is how the actuator itself starts the ruleset sandbox; the
        client's interpreter (argv[0]) is never run.
        """
        t = self.egress_table
        fixed = [["nft", "-j", "list", "ruleset"], ["nft", "-j", "list", "table", "inet", t]]
        fixed += [["nft", "-j", "list", "set", "inet", t, name] for name in EGRESS_SETS]
        if argv in fixed:
            return argv, None
        if argv[:-1] in DEVICE_READS and DEVICE_RE.match(argv[-1]):
            return argv, None  # header metadata only; luksDump prints no key material
        if len(argv) == 6 and argv[1:4] == ["-m", NFT_SANDBOX_MODULE, "--sha256"]:
            for b in baselines:
                fw = b.firewall
                if fw and argv[4] == fw.ruleset_sha256 and argv[5] == fw.ruleset_path:
                    return [*sandbox, "--sha256", argv[4], argv[5]], None
        return None, Verdict(
            Refusal.ObservationNotAllowed,
            f"{' '.join(argv)[:200]!r} is not one of the privileged reads the actuator serves "
            "(nft -j list ruleset/table/set of the egress table, the baseline ruleset sandbox, "
            "blkid -p / cryptsetup isLuks|luksDump of a /dev path)",
        )

    def _target_allowed(self, action: Action, baselines: list[Baseline]) -> Verdict | None:
        if isinstance(action, StartUnit | RestartUnit | EnableUnit | RunBackup):
            allowed = set().union(*(baseline_units(b) for b in baselines))
            if action.unit not in allowed:
                return Verdict(
                    Refusal.UnitNotInBaseline,
                    f"{action.unit} is not listed by the baseline's "
                    f"{'/'.join(UNIT_KINDS)} specs; add it to the baseline to manage it",
                )
            return None
        if isinstance(action, ApplyNftRuleset):
            for b in baselines:
                fw = b.firewall
                if fw and fw.ruleset_path == action.path and fw.ruleset_sha256 == action.sha256:
                    return None
            return Verdict(
                Refusal.RulesetNotInBaseline,
                f"{action.path} (sha256 {action.sha256[:12]}...) is not the baseline "
                "firewall ruleset file and hash",
            )
        if isinstance(action, UpdateEgressSet):
            return self._egress(action)
        if isinstance(action, NixosRebuild):
            targets = set().union(*(baseline_rebuild_targets(b) for b in baselines))
            if action.target not in targets:
                return Verdict(
                    Refusal.RebuildTargetNotInBaseline,
                    f"rebuild target {action.target!r} is not named by the baseline's "
                    f"{PATCHING_KIND} spec",
                )
            return None
        if isinstance(action, Rollback):
            return None  # no target: the previous generation is whatever the system has
        return Verdict(Refusal.UnknownAction, f"no policy for action {action.type}")

    def _egress(self, action: UpdateEgressSet) -> Verdict | None:
        if action.family != "inet" or action.table != self.egress_table:
            return Verdict(
                Refusal.EgressTableMismatch,
                f"egress updates may only target 'inet {self.egress_table}', "
                f"not '{action.family} {action.table}'",
            )
        version = EGRESS_SETS.get(action.set_name)
        if version is None:
            return Verdict(
                Refusal.EgressTableMismatch,
                f"set {action.set_name!r} is not one of {sorted(EGRESS_SETS)}",
            )
        for element in action.elements:
            if element_version(element) != version:
                return Verdict(
                    Refusal.InvalidParams,
                    f"{element!r} is not an IPv{version} address or prefix for "
                    f"set {action.set_name}",
                )
        return None




def parse_request(
    body: bytes,
) -> tuple[ActuatorRequest | ObserveRequest | None, Verdict | None]:
    """Typed request, or why not: unknown action types are told apart from bad params."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return None, Verdict(Refusal.MalformedRequest, f"request is not JSON: {e}")
    if isinstance(data, dict) and "observe" in data:
        try:
            return ObserveRequest.model_validate(data), None
        except ValidationError as e:
            return None, Verdict(Refusal.InvalidParams, f"invalid observe request: {_problems(e)}")
    if not isinstance(data, dict) or not isinstance(data.get("action"), dict):
        return None, Verdict(
            Refusal.MalformedRequest, 'request must be {"action": {"type": ..., ...}}'
        )
    kind = data["action"].get("type")
    if kind not in KNOWN_ACTIONS:
        return None, Verdict(
            Refusal.UnknownAction,
            f"action type {str(kind)[:64]!r} is not one of {sorted(KNOWN_ACTIONS)}",
        )
    try:
        return ActuatorRequest.model_validate(data), None
    except ValidationError as e:
        return None, Verdict(Refusal.InvalidParams, f"invalid {kind} request: {_problems(e)}")


def _problems(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())


def element_version(element: str) -> int | None:
    """IP version of a set element (address, prefix or 'a-b' range), None if it is none."""
    try:
        if "-" in element:
            lo, hi = (ipaddress.ip_address(p.strip()) for p in element.split("-", 1))
            return lo.version if lo.version == hi.version else None
        return ipaddress.ip_network(element.strip(), strict=False).version
    except ValueError:
        return None
