"""Services controller: required systemd units are loaded, enabled and running.

observe: ONE ``systemctl show --property=... UNIT...`` call per pass. Its
output is blocks of ``Key=Value`` lines separated by blank lines; blocks are
matched to the requested names by ``Id``/``Names`` (an alias resolves to its
unit's block), never by position or property order.

diff / plan, per unit of the spec:

=================================  ==========================  ================
observed                           drift reason                action
=================================  ==========================  ================
LoadState not-found                UnitNotFound (alert)        none
LoadState masked                   UnitMasked (alert)          none
LoadState error / bad-setting      UnitLoadFailed (alert)      none
UnitFileState disabled, linked,    UnitDisabled                EnableUnit
enabled-runtime (enabled required)
UnitFileState bad                  UnitFileBad (alert)         none
ActiveState failed                 UnitFailed                  RestartUnit
ActiveState inactive               UnitInactive                StartUnit
activating (incl. auto-restart),   UnitActivating /            none this pass
reloading, deactivating            UnitReloading /
                                   UnitDeactivating
=================================  ==========================  ================

A unit that is activating (``auto-restart`` included) is already being
retried by systemd under its own ``Restart=`` policy; restarting it on top
would turn a crash loop into a restart storm, so that drift waits for a
later pass. When systemd gives up (start-limit-hit) the unit is ``failed``
and RestartUnit applies, under the runtime's per-unit exponential backoff
(``backoff()``: the spec's restart_backoff_base / restart_backoff_cap).

``enabled: false`` / ``active: false`` in the spec mean "not checked", not
"must be disabled/stopped": stopping units is out of this controller's scope.

Orders: a ``restart_service`` trigger for a unit of the spec is a drift
(``RestartRequested``) until the unit entered ``active`` after the order was
issued (``ActiveEnterTimestamp``; the Host runs commands with TZ=UTC),
then it is satisfied: level-triggered, so a restart is neither lost nor repeated.
A trigger for a unit the baseline does not list is alert-only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from controllers.base import ControllerBase
from specs.actions import Action, EnableUnit, RestartUnit, StartUnit
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.services import ServicesSpec, UnitSpec
from specs.watch import WatchTargets

SHOW_PROPERTIES: tuple[str, ...] = (
    "Id",
    "Names",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "Result",
    "NRestarts",
    "ExecMainStatus",
    "ActiveEnterTimestamp",
    "StateChangeTimestamp",
)
SHOW_TIMEOUT = 15.0

# UnitFileState values meaning "starts at boot, or cannot be enabled and is
# pulled in by something else": requiring `enabled` is satisfied.
ENABLED_OK = frozenset({"enabled", "static", "indirect", "generated", "transient", "alias"})
# Enabling fixes these: the unit file exists but is not (persistently) enabled.
ENABLE_FIXES = frozenset({"disabled", "linked", "linked-runtime", "enabled-runtime"})
TRANSITIONAL = {
    "activating": "UnitActivating",
    "reloading": "UnitReloading",
    "deactivating": "UnitDeactivating",
}


class ServicesObserveError(HostError):
    """systemctl could not be asked, or answered something we cannot read."""


class UnitState(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # as requested in the spec
    id: str = ""
    names: list[str] = Field(default_factory=list)
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    unit_file_state: str = ""
    result: str = ""
    n_restarts: int | None = None
    exec_main_status: int | None = None
    active_enter_timestamp: str = ""
    state_change_timestamp: str = ""


class ServicesObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    units: dict[str, UnitState] = Field(default_factory=dict)


def parse_show(text: str) -> list[dict[str, str]]:
    """Split `systemctl show` output into one dict per unit block."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    # split on "\n" only: str.splitlines() would also split a value at \x85 or U+2028
    for line in text.split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ServicesObserveError(
                f"systemctl show printed a line that is not Key=Value: {line[:200]!r}"
            )
        current[key] = value
    if current:
        blocks.append(current)
    return blocks


def _int_or_none(value: str | None) -> int | None:
    if value is None or value == "" or value == "[not set]":
        return None
    try:
        return int(value)
    except ValueError:
        return None


def unit_states(requested: list[str], text: str) -> dict[str, UnitState]:
    """Match parsed blocks to requested unit names by Id, then by Names."""
    by_name: dict[str, dict[str, str]] = {}
    for block in parse_show(text):
        for n in block.get("Names", "").split():
            by_name.setdefault(n, block)
        if "Id" in block:
            by_name[block["Id"]] = block  # Id wins over another unit's alias
    out: dict[str, UnitState] = {}
    for name in requested:
        found = by_name.get(name)
        if found is None:
            raise ServicesObserveError(
                f"systemctl show returned no block for {name}; "
                "check that systemctl on this host supports --property=Id,Names"
            )
        block = found
        out[name] = UnitState(
            name=name,
            id=block.get("Id", ""),
            names=block.get("Names", "").split(),
            load_state=block.get("LoadState", ""),
            active_state=block.get("ActiveState", ""),
            sub_state=block.get("SubState", ""),
            unit_file_state=block.get("UnitFileState", ""),
            result=block.get("Result", ""),
            n_restarts=_int_or_none(block.get("NRestarts")),
            exec_main_status=_int_or_none(block.get("ExecMainStatus")),
            active_enter_timestamp=block.get("ActiveEnterTimestamp", ""),
            state_change_timestamp=block.get("StateChangeTimestamp", ""),
        )
    return out


def show_argv(units: list[str]) -> list[str]:
    return ["systemctl", "show", f"--property={','.join(SHOW_PROPERTIES)}", *units]


def parse_timestamp(value: str) -> datetime | None:
    """`@1732586400` (--timestamp=unix) or systemd's UTC pretty form; None if unset."""
    value = value.strip()
    if not value or value in ("n/a", "0"):
        return None
    if value.startswith("@"):
        try:
            return datetime.fromtimestamp(float(value[1:]), tz=UTC)
        except ValueError:
            return None
    try:
        return datetime.strptime(value, "%a %Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    except ValueError:
        return None


RESTART_ORDER = "restart_service"


def _restart_drifts(spec: ServicesSpec, observed: ServicesObserved) -> list[Drift]:
    out: list[Drift] = []
    listed = {u.name for u in spec.units}
    for trig in spec.triggers:
        if trig.action != RESTART_ORDER:
            continue
        unit = str(trig.params.get("unit", ""))
        field = f"units.{unit}.restart"
        if unit not in listed or unit not in observed.units:
            out.append(Drift(field=field, reason="UnitNotInBaseline", expected="listed unit",
                             actual=unit, remedy=Remedy.alert,
                             message=f"order {trig.order_id} asks to restart a unit the "
                             "baseline does not manage; refused"))
            continue
        entered = parse_timestamp(observed.units[unit].active_enter_timestamp)
        if entered is None or entered < trig.requested_at:
            out.append(Drift(field=field, reason="RestartRequested",
                             expected=f"active since >= {trig.requested_at.isoformat()}",
                             actual=entered.isoformat() if entered else "never active",
                             message=f"order {trig.order_id}"))
    return out


def _unique(units: list[UnitSpec]) -> list[str]:
    return list(dict.fromkeys(u.name for u in units))


class ServicesController(ControllerBase[ServicesSpec, ServicesObserved]):
    spec_type = ServicesSpec
    kind = "services"

    def observe(self, host: Host, spec: ServicesSpec) -> ServicesObserved:
        names = _unique(spec.units)
        if not names:
            return ServicesObserved()
        done = host.run(show_argv(names), timeout=SHOW_TIMEOUT)
        if done.exit_code != 0:
            raise ServicesObserveError(
                f"systemctl show exited {done.exit_code}: {done.stderr.strip()[:500]}"
            )
        return ServicesObserved(units=unit_states(names, done.stdout))

    def diff(self, spec: ServicesSpec, observed: ServicesObserved) -> list[Drift]:
        drifts: list[Drift] = []
        for unit in spec.units:
            state = observed.units.get(unit.name)
            if state is None:
                drifts.append(_drift(unit, "loaded", "UnitNotObserved", "loaded", "unknown",
                                     "the unit was not part of the observation", alert=True))
                continue
            drifts.extend(_diff_unit(unit, state))
        return drifts + _restart_drifts(spec, observed)

    def plan(
        self, spec: ServicesSpec, observed: ServicesObserved, drifts: list[Drift]
    ) -> list[Action]:
        actions: list[Action] = []
        seen: set[tuple[str, str]] = set()
        by_field = {
            f"units.{u.name}.{aspect}": u.name
            for u in spec.units
            for aspect in ("loaded", "enabled", "active")
        }
        ordered = {d.field[len("units."):-len(".restart")]
                   for d in drifts if d.reason == "RestartRequested"}
        for trig in spec.triggers:
            wanted = str(trig.params.get("unit", ""))
            if trig.action == RESTART_ORDER and wanted in ordered and ("order", wanted) not in seen:
                seen.add(("order", wanted))
                actions.append(RestartUnit(unit=wanted, reason="RestartRequested",
                                           order_id=trig.order_id))
        for d in drifts:
            unit = by_field.get(d.field)  # drifts of other kinds/units are not ours
            if d.remedy is not Remedy.remediate or unit is None:
                continue
            if unit in ordered and d.reason in ("UnitFailed", "UnitInactive"):
                continue  # the ordered restart covers it
            action: Action | None = None
            if d.reason == "UnitDisabled":
                action = EnableUnit(unit=unit, reason=d.reason)
            elif d.reason == "UnitFailed":
                action = RestartUnit(unit=unit, reason=d.reason)
            elif d.reason == "UnitInactive":
                action = StartUnit(unit=unit, reason=d.reason)
            # transitional states (UnitActivating, ...): systemd is already acting
            if action is not None and (action.type, unit) not in seen:
                seen.add((action.type, unit))
                actions.append(action)
        return actions

    def facts(self, spec: ServicesSpec, observed: ServicesObserved) -> dict[str, Any]:
        return {
            "units": {
                name: {
                    "load_state": s.load_state,
                    "active_state": s.active_state,
                    "sub_state": s.sub_state,
                    "unit_file_state": s.unit_file_state,
                    "result": s.result,
                    "n_restarts": s.n_restarts,
                }
                for name, s in observed.units.items()
            }
        }

    def targets(self, spec: ServicesSpec) -> WatchTargets:
        return WatchTargets.of(units=_unique(spec.units))

    def backoff(self, spec: ServicesSpec) -> tuple[float, float]:
        """Per-unit restart backoff (base, cap) in seconds, applied by the runtime."""
        return (spec.restart_backoff_base, max(spec.restart_backoff_cap, spec.restart_backoff_base))


def _drift(
    unit: UnitSpec, aspect: str, reason: str, expected: str, actual: str, message: str,
    *, alert: bool = False,
) -> Drift:
    return Drift(
        field=f"units.{unit.name}.{aspect}", reason=reason, expected=expected, actual=actual,
        message=message, remedy=Remedy.alert if alert else Remedy.remediate,
    )


def _diff_unit(unit: UnitSpec, s: UnitState) -> list[Drift]:
    name = unit.name
    if s.load_state == "not-found":
        return [_drift(unit, "loaded", "UnitNotFound", "loaded", s.load_state,
                       f"{name} does not exist on this host; install or declare it "
                       "in the NixOS configuration, or remove it from the baseline",
                       alert=True)]
    if s.load_state == "masked":
        return [_drift(unit, "loaded", "UnitMasked", "loaded", s.load_state,
                       f"{name} is masked, so it can never start; an administrator masked "
                       f"it on purpose or by mistake: `systemctl unmask {name}` after review",
                       alert=True)]
    if s.load_state != "loaded":
        return [_drift(unit, "loaded", "UnitLoadFailed", "loaded", s.load_state or "unknown",
                       f"systemd could not load {name} ({s.load_state}); see "
                       f"`systemctl status {name}` for the unit file error", alert=True)]
    out: list[Drift] = []
    if unit.enabled:
        ufs = s.unit_file_state
        if ufs in ENABLE_FIXES:
            out.append(_drift(unit, "enabled", "UnitDisabled", "enabled", ufs,
                              f"{name} is {ufs}: it would not start at boot"))
        elif ufs == "bad":
            out.append(_drift(unit, "enabled", "UnitFileBad", "enabled", ufs,
                              f"{name}'s unit file is invalid; fix the unit definition",
                              alert=True))
        elif ufs.startswith("masked"):
            out.append(_drift(unit, "enabled", "UnitMasked", "enabled", ufs,
                              f"{name} is masked; `systemctl unmask {name}` after review",
                              alert=True))
        # ENABLED_OK, and "" (e.g. a template instance without its own link):
        # nothing to enable or nothing `systemctl enable` could fix.
    if unit.active:
        st = s.active_state
        if st == "failed":
            out.append(_drift(unit, "active", "UnitFailed", "active", f"failed/{s.result}",
                              f"{name} failed (result {s.result}, main exit status "
                              f"{s.exec_main_status}, {s.n_restarts} automatic restarts)"))
        elif st == "inactive":
            out.append(_drift(unit, "active", "UnitInactive", "active", "inactive",
                              f"{name} is not running"))
        elif st in TRANSITIONAL:
            out.append(_drift(unit, "active", TRANSITIONAL[st], "active",
                              f"{st}/{s.sub_state}",
                              f"{name} is {st} ({s.sub_state}); systemd is already acting "
                              "on it, so the agent waits for a later pass"))
        elif st != "active":
            out.append(_drift(unit, "active", "UnitStateUnknown", "active", st or "unknown",
                              f"{name} is in an unexpected state {st!r}", alert=True))
    return out
