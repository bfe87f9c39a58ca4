"""Typed actions: the only way anything changes on the host.

Each action states whether the agent considers it disruptive and the exact
argv it runs (no shell). Dry-run, evidence (`action_taken`), guards and the
privileged actuator all work from these models alone; the root actuator makes
its own call on what is disruptive (reconciler.actuator.policy), so the flag
here is the agent's planning hint, never a permission.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# systemd unit names: no path separators, no leading dash (argv injection)
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@\\-]+\.(service|socket|timer|target|path|mount)$")
NFT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

SYSTEMCTL = "systemctl"
NFT = "nft"


def _check_unit(v: str) -> str:
    if v.startswith("-") or not UNIT_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a systemd unit name like 'sshd.service'")
    return v


class HealthCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    argv: list[str]
    expect_stdout: str | None = None  # stripped stdout must equal this
    timeout: float = 60.0


class BaseAction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # True for actions that start work and return (a backup job started with
    # --no-block): drift right after them means "in progress", not "failed".
    completes_later: ClassVar[bool] = False

    disruptive: bool = False
    reason: str = ""  # the drift reason that made the controller plan this
    order_id: str | None = None  # set when an admitted order's trigger drove this action

    def commands(self) -> list[list[str]]:
        raise NotImplementedError

    @property
    def key(self) -> str:
        """Identity for per-action backoff: same key = same remediation attempt."""
        raise NotImplementedError

    def describe(self) -> str:
        return " && ".join(" ".join(c) for c in self.commands())


class UnitAction(BaseAction):
    unit: str

    @field_validator("unit")
    @classmethod
    def _unit_name(cls, v: str) -> str:
        return _check_unit(v)


class StartUnit(UnitAction):
    type: Literal["StartUnit"] = "StartUnit"

    def commands(self) -> list[list[str]]:
        # no reset-failed here: on a unit that is merely inactive (possibly not even
        # loaded yet) systemd 252 answers "Unit ... not loaded" with exit 1
        return [[SYSTEMCTL, "start", self.unit]]

    @property
    def key(self) -> str:
        return f"unit:{self.unit}"


class RestartUnit(UnitAction):
    type: Literal["RestartUnit"] = "RestartUnit"

    def commands(self) -> list[list[str]]:
        return [[SYSTEMCTL, "reset-failed", self.unit], [SYSTEMCTL, "restart", self.unit]]

    @property
    def key(self) -> str:
        return f"unit:{self.unit}"


class EnableUnit(UnitAction):
    type: Literal["EnableUnit"] = "EnableUnit"

    def commands(self) -> list[list[str]]:
        return [[SYSTEMCTL, "enable", self.unit]]

    @property
    def key(self) -> str:
        return f"enable:{self.unit}"


class RunBackup(UnitAction):
    """Trigger a backup job's unit without waiting for it (non-disruptive)."""

    type: Literal["RunBackup"] = "RunBackup"

    completes_later: ClassVar[bool] = True

    def commands(self) -> list[list[str]]:
        return [[SYSTEMCTL, "start", "--no-block", self.unit]]

    @property
    def key(self) -> str:
        return f"backup:{self.unit}"


class ApplyNftRuleset(BaseAction):
    """Atomically replace the ruleset with the baseline file (`nft -f` is one transaction).

    The actuator re-checks the file's SHA-256 right before applying, so a file
    swapped after planning is refused.
    """

    type: Literal["ApplyNftRuleset"] = "ApplyNftRuleset"
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def commands(self) -> list[list[str]]:
        # What dry-run and evidence show; the actuator pipes the hashed bytes of
        # `path` to `nft -f -` (reconciler.actuator.local), never re-reading it.
        return [[NFT, "-f", self.path]]

    @property
    def key(self) -> str:
        return f"nft:{self.path}"


MAX_EGRESS_ELEMENTS = 1024  # addresses per set; an allowlist of names, not of networks


def _check_set_element(v: str) -> str:
    """One IPv4 or IPv6 host address in canonical form; anything else is refused.

    Elements are interpolated into an nft script: a free-form string could
    smuggle extra commands ('; flush ruleset'), nft resolves a host name given
    as an element through DNS at load time, and a prefix or range ('0.0.0.0/0')
    would open far more than the names in the allowlist resolve to. An IPv6
    scope ('fe80::1%eth0') is refused too: Python accepts any text after '%'.
    """
    try:
        address = ipaddress.ip_address(v) if "%" not in v else None
    except ValueError:
        address = None
    if address is None or str(address) != v:
        raise ValueError(
            f"{v[:80]!r} is not a single IP address in canonical form "
            "(like 192.0.2.10 or 2001:db8::10; no prefix, range or scope)"
        )
    return v


class UpdateEgressSet(BaseAction):
    """Replace all elements of one nftables set in a single transaction.

    One `nft` invocation carries "flush set; add element": nft sends it as one
    netlink batch, so a rejected element rolls back the flush too (verified
    with nft 1.0.6). An empty `elements` list only flushes: nothing allowed.
    """

    type: Literal["UpdateEgressSet"] = "UpdateEgressSet"
    table: str
    set_name: str
    family: Literal["inet", "ip", "ip6"] = "inet"
    elements: list[str] = Field(max_length=MAX_EGRESS_ELEMENTS)

    @field_validator("table", "set_name")
    @classmethod
    def _nft_name(cls, v: str) -> str:
        if not NFT_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid nftables identifier")
        return v

    @field_validator("elements")
    @classmethod
    def _elements(cls, v: list[str]) -> list[str]:
        return [_check_set_element(e) for e in v]

    def commands(self) -> list[list[str]]:
        script = f"flush set {self.family} {self.table} {self.set_name}"
        if self.elements:
            script += (
                f"; add element {self.family} {self.table} {self.set_name} "
                "{ " + ", ".join(self.elements) + " }"
            )
        return [[NFT, script]]

    @property
    def key(self) -> str:
        return f"egress:{self.table}:{self.set_name}"


class NixosRebuild(BaseAction):
    """Switch to a target system, then health-check; the actuator rolls back on failure.

    There is no standalone rollback action on purpose: a rollback only ever
    happens inside the actuator's own rebuild transaction, to the generation it
    recorded before switching (reconciler.actuator.rebuild). A free-standing
    "roll back" request could walk the host back to old, unpatched systems.
    """

    type: Literal["NixosRebuild"] = "NixosRebuild"
    disruptive: Literal[True] = True
    target: str  # store path or flake reference
    health_timeout: float = 60.0

    def commands(self) -> list[list[str]]:
        if self.target.startswith("/nix/store/"):
            return [
                ["nix-env", "-p", "/nix/var/nix/profiles/system", "--set", self.target],
                [f"{self.target}/bin/switch-to-configuration", "switch"],
            ]
        return [["nixos-rebuild", "switch", "--flake", self.target]]

    @property
    def key(self) -> str:
        return f"rebuild:{self.target}"


Action = Annotated[
    StartUnit
    | RestartUnit
    | EnableUnit
    | RunBackup
    | ApplyNftRuleset
    | UpdateEgressSet
    | NixosRebuild,
    Field(discriminator="type"),
]


class ActionEnvelope(BaseModel):
    """Wire wrapper so a single action can be (de)serialized, e.g. over the actuator socket."""

    action: Action
