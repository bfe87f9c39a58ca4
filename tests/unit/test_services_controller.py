"""Services controller against `systemctl show` output recorded from a real systemd 252.

Fixtures: tests/fixtures/systemctl/show_*.txt, re-recorded with
`.venv/bin/python -m tests.fixtures.systemctl.capture` (root).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.services import (
    SHOW_PROPERTIES,
    ServicesController,
    ServicesObserved,
    ServicesObserveError,
    UnitState,
    parse_show,
    unit_states,
)
from specs.actions import EnableUnit, RestartUnit, StartUnit
from specs.drift import Remedy
from specs.host import Completed, FileStat
from specs.kinds.services import ServicesSpec, UnitSpec

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "systemctl"
CTRL = ServicesController()


def fixture(name: str) -> str:
    return (FIX / f"show_{name}.txt").read_text()


class FakeHost:
    """Answers the one systemctl call with recorded output and records argv."""

    def __init__(self, stdout: str, exit_code: int = 0, stderr: str = "") -> None:
        self.stdout, self.exit_code, self.stderr = stdout, exit_code, stderr
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        self.calls.append(list(argv))
        return Completed(argv=list(argv), exit_code=self.exit_code, stdout=self.stdout,
                         stderr=self.stderr, duration=0.001)

    def read_text(self, path: str) -> str:
        raise FileNotFoundError(path)

    def stat(self, path: str) -> FileStat:
        raise FileNotFoundError(path)


def spec(*names: str, enabled: bool = True, active: bool = True) -> ServicesSpec:
    return ServicesSpec(units=[UnitSpec(name=n, enabled=enabled, active=active) for n in names])


def observe_one(case: str, unit: str, **kw: bool) -> tuple[ServicesSpec, ServicesObserved]:
    s = spec(unit, **kw)
    return s, CTRL.observe(FakeHost(fixture(case)), s)


def test_observe_makes_exactly_one_systemctl_call_for_all_units() -> None:
    units = (FIX / "combined_units.txt").read_text().split()
    host = FakeHost(fixture("combined"))
    obs = CTRL.observe(host, spec(*units))
    assert len(host.calls) == 1
    argv = host.calls[0]
    assert argv[:2] == ["systemctl", "show"]
    assert "--property=" + ",".join(SHOW_PROPERTIES) in argv
    assert not any(a.startswith("-") for a in argv[-len(set(units)):])
    # duplicates are asked once; all unique units appear once, after the options
    assert argv[-len(set(units)):] == list(dict.fromkeys(units))
    assert set(obs.units) == set(units)
    assert obs.units["failed.service"].exec_main_status == 3
    assert obs.units["killed.service"].result == "signal"
    assert obs.units["missing.service"].load_state == "not-found"
    assert obs.units["tmpl@one.service"].active_state == "active"


def test_blocks_are_matched_by_id_not_position() -> None:
    text = fixture("combined")
    blocks = text.strip().split("\n\n")
    shuffled = "\n\n".join(reversed(blocks)) + "\n"
    # also reverse the property order inside each block
    shuffled = "\n\n".join("\n".join(reversed(b.splitlines())) for b in shuffled.split("\n\n"))
    units = (FIX / "combined_units.txt").read_text().split()
    a = unit_states(units, text)
    b = unit_states(units, shuffled)
    assert a == b


def test_alias_resolves_to_its_unit() -> None:
    _, obs = observe_one("alias", "active-alias.service")
    st = obs.units["active-alias.service"]
    assert st.id == "active.service"
    assert "active-alias.service" in st.names
    assert CTRL.diff(spec("active-alias.service"), obs) == []


@pytest.mark.parametrize("case, unit", [
    ("active", "active.service"),
    ("static", "static.service"),
    ("template_instance", "tmpl@one.service"),
])
def test_healthy_units_have_no_drift(case: str, unit: str) -> None:
    s, obs = observe_one(case, unit)
    assert CTRL.diff(s, obs) == []
    assert CTRL.plan(s, obs, []) == []


@pytest.mark.parametrize("case, unit", [
    ("failed_exit", "failed.service"),
    ("failed_killed", "killed.service"),
])
def test_failed_unit_is_restarted(case: str, unit: str) -> None:
    s, obs = observe_one(case, unit)
    drifts = CTRL.diff(s, obs)
    # static units cannot be enabled, so only the failure is a drift
    assert [d.reason for d in drifts] == ["UnitFailed"]
    assert drifts[0].remedy is Remedy.remediate
    assert drifts[0].field == f"units.{unit}.active"
    actions = CTRL.plan(s, obs, drifts)
    assert actions == [RestartUnit(unit=unit, reason="UnitFailed")]
    assert actions[0].commands() == [
        ["systemctl", "reset-failed", unit], ["systemctl", "restart", unit]
    ]


def test_failed_message_says_why() -> None:
    s, obs = observe_one("failed_killed", "killed.service")
    (d,) = CTRL.diff(s, obs)
    assert "signal" in d.message and "9" in d.message
    assert d.actual == "failed/signal"


def test_inactive_and_disabled_unit_is_enabled_and_started() -> None:
    s, obs = observe_one("inactive_disabled", "inactive.service")
    drifts = CTRL.diff(s, obs)
    assert {d.reason for d in drifts} == {"UnitDisabled", "UnitInactive"}
    actions = CTRL.plan(s, obs, drifts)
    assert EnableUnit(unit="inactive.service", reason="UnitDisabled") in actions
    assert StartUnit(unit="inactive.service", reason="UnitInactive") in actions
    assert len(actions) == 2


def test_not_required_aspects_are_not_checked() -> None:
    s, obs = observe_one("inactive_disabled", "inactive.service", enabled=False, active=False)
    assert CTRL.diff(s, obs) == []


@pytest.mark.parametrize("case, unit, reason", [
    ("not_found", "missing.service", "UnitNotFound"),
    ("masked", "masked.service", "UnitMasked"),
])
def test_missing_or_masked_unit_is_alert_only(case: str, unit: str, reason: str) -> None:
    s, obs = observe_one(case, unit)
    drifts = CTRL.diff(s, obs)
    assert [d.reason for d in drifts] == [reason]
    assert drifts[0].remedy is Remedy.alert
    assert unit in drifts[0].message
    assert CTRL.plan(s, obs, drifts) == []


@pytest.mark.parametrize("case, unit, sub", [
    ("auto_restart", "crashloop.service", "auto-restart"),
    ("activating_start", "starting.service", "start"),
])
def test_activating_unit_drifts_but_gets_no_action(case: str, unit: str, sub: str) -> None:
    s, obs = observe_one(case, unit)
    drifts = CTRL.diff(s, obs)
    assert [d.reason for d in drifts] == ["UnitActivating"]
    assert drifts[0].remedy is Remedy.remediate
    assert drifts[0].actual == f"activating/{sub}"
    assert CTRL.plan(s, obs, drifts) == []  # no restart storm on top of Restart=


@pytest.mark.parametrize("ufs, reason", [
    ("enabled-runtime", "UnitDisabled"),
    ("linked", "UnitDisabled"),
    ("bad", "UnitFileBad"),
    ("indirect", None),
    ("generated", None),
    ("transient", None),
    ("", None),
])
def test_unit_file_states(ufs: str, reason: str | None) -> None:
    st = UnitState(name="x.service", id="x.service", load_state="loaded",
                   active_state="active", sub_state="running", unit_file_state=ufs)
    obs = ServicesObserved(units={"x.service": st})
    reasons = [d.reason for d in CTRL.diff(spec("x.service"), obs)]
    assert reasons == ([reason] if reason else [])


@pytest.mark.parametrize("state, reason", [
    ("reloading", "UnitReloading"),
    ("deactivating", "UnitDeactivating"),
])
def test_other_transitional_states_wait(state: str, reason: str) -> None:
    st = UnitState(name="x.service", load_state="loaded", active_state=state,
                   unit_file_state="enabled")
    obs = ServicesObserved(units={"x.service": st})
    drifts = CTRL.diff(spec("x.service"), obs)
    assert [d.reason for d in drifts] == [reason]
    assert CTRL.plan(spec("x.service"), obs, drifts) == []


def test_combined_pass_plans_one_action_per_need() -> None:
    units = (FIX / "combined_units.txt").read_text().split()
    s = spec(*units)
    obs = CTRL.observe(FakeHost(fixture("combined")), s)
    drifts = CTRL.diff(s, obs)
    actions = CTRL.plan(s, obs, drifts)
    assert sorted((a.type, a.unit) for a in actions) == [  # type: ignore[union-attr]
        ("EnableUnit", "inactive.service"),
        ("RestartUnit", "failed.service"),
        ("RestartUnit", "killed.service"),
        ("StartUnit", "inactive.service"),
    ]
    facts = CTRL.facts(s, obs)
    assert facts["units"]["crashloop.service"]["sub_state"] == "auto-restart"
    assert facts["units"]["missing.service"]["load_state"] == "not-found"


def test_systemctl_failure_is_an_observe_error() -> None:
    host = FakeHost("", exit_code=1, stderr="Failed to connect to bus")
    with pytest.raises(ServicesObserveError, match="Failed to connect to bus"):
        CTRL.observe(host, spec("a.service"))


def test_garbage_output_is_an_observe_error() -> None:
    with pytest.raises(ServicesObserveError, match="not Key=Value"):
        parse_show("Id=a.service\nthis is not a property\n")
    with pytest.raises(ServicesObserveError, match=r"no block for b\.service"):
        unit_states(["b.service"], fixture("active"))


def test_empty_spec_runs_nothing() -> None:
    host = FakeHost("")
    assert CTRL.observe(host, spec()) == ServicesObserved()
    assert host.calls == []


def test_backoff_comes_from_the_spec() -> None:
    s = ServicesSpec(units=[], restart_backoff_base=5, restart_backoff_cap=60)
    assert CTRL.backoff(s) == (5, 60)


def test_parse_show_handles_values_with_equals_and_missing_trailing_newline() -> None:
    blocks = parse_show("Id=a.service\nDescription=x=y\n\nId=b.service")
    assert blocks == [{"Id": "a.service", "Description": "x=y"}, {"Id": "b.service"}]


# -- properties ----------------------------------------------------------------

_value = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=30)
_unit = st.from_regex(r"[a-z][a-z0-9-]{0,10}\.service", fullmatch=True)


@given(st.text(max_size=300))
@settings(max_examples=200)
def test_parse_show_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        blocks = parse_show(text)
    except ServicesObserveError:
        return
    assert all(isinstance(b, dict) for b in blocks)


@given(st.lists(_unit, min_size=1, max_size=6, unique=True), st.randoms(), st.data())
@settings(max_examples=100)
def test_any_block_and_property_order_gives_the_same_states(
    units: list[str], rnd: random.Random, data: st.DataObject
) -> None:
    blocks = []
    for u in units:
        props = {k: data.draw(_value) for k in SHOW_PROPERTIES}
        props["Id"], props["Names"] = u, u
        blocks.append(props)
    def render(bs: list[dict[str, str]]) -> str:
        return "\n\n".join("\n".join(f"{k}={v}" for k, v in b.items()) for b in bs) + "\n"
    ordered = unit_states(units, render(blocks))
    shuffled_blocks = [dict(rnd.sample(list(b.items()), len(b))) for b in blocks]
    rnd.shuffle(shuffled_blocks)
    assert unit_states(units, render(shuffled_blocks)) == ordered
    for u, b in zip(units, blocks, strict=True):
        assert ordered[u].active_state == b["ActiveState"]
