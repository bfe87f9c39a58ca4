"""Desired state: baseline + config defaults + triggers, all given at construction."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.runtime.desired import DesiredState, local_baseline
from reconciler.service import new_agent, spec_defaults
from specs.baseline import BaselineError
from specs.kinds.egress import EgressSpec
from specs.kinds.time_ import TimeSpec
from specs.resource import Trigger
from tests.unit.conftest import make_config, write_baseline
from tests.unit.test_runtime import NoHost, RecordingActuator

NOON = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_one_skew_threshold_by_default(tmp_path: Path) -> None:
    """`time.max_skew_ms` left unset is the agent's ntpMaxSkewMs: the resource
    drifts exactly when the clock guard holds disruptive actions."""
    write_baseline(tmp_path, {"time": {}})
    cfg = make_config(tmp_path, ntpMaxSkewMs=1234)
    _, specs = DesiredState(local_baseline(cfg.baseline_path), defaults=spec_defaults(cfg)).current()
    assert specs["time"] == TimeSpec(max_skew_ms=1234)
    write_baseline(tmp_path, {"time": {"max_skew_ms": 500}})
    _, specs = DesiredState(local_baseline(cfg.baseline_path), defaults=spec_defaults(cfg)).current()
    assert specs["time"] == TimeSpec(max_skew_ms=500), "an explicit alert limit is kept"


def test_generation_of_a_default_time_spec_is_unchanged(tmp_path: Path) -> None:
    """Before, the spec carried 5000 itself; filled from the default config it
    hashes the same, so no condition flips on upgrade."""
    write_baseline(tmp_path, {"time": {}})
    cfg = make_config(tmp_path)
    _, specs = DesiredState(local_baseline(cfg.baseline_path), defaults=spec_defaults(cfg)).current()
    assert specs["time"].generation == TimeSpec(max_skew_ms=5000).generation


def test_egress_hosts_and_table_come_from_config_when_unset(tmp_path: Path) -> None:
    write_baseline(tmp_path, {"egress": {}})
    cfg = make_config(tmp_path, allowedHosts=["mcp.local", "mcp.example.test"],
                      egressTable="site_egress")
    agent = new_agent(cfg, host=NoHost(), actuator=RecordingActuator({}))
    try:
        spec = agent.specs()["egress"]
    finally:
        agent.close()
    assert isinstance(spec, EgressSpec)
    assert spec.hosts == ["mcp.local", "mcp.example.test"] and spec.table == "site_egress"


def test_triggers_are_folded_in_and_the_last_good_baseline_is_kept(tmp_path: Path) -> None:
    write_baseline(tmp_path, {"services": {"units": [{"name": "a.service"}]}})
    cfg = make_config(tmp_path)
    trig = Trigger(order_id="o-1", action="restart_service", params={"unit": "a.service"},
                   requested_at=NOON)
    desired = DesiredState(local_baseline(cfg.baseline_path), defaults=spec_defaults(cfg),
                           triggers=lambda: {"*": [trig]})
    _, specs = desired.current()
    assert specs["services"].triggers == [trig]
    (tmp_path / "baseline.json").write_text("{not json")
    _, again = desired.current()
    assert again["services"].triggers == [trig], "the last good baseline, still with triggers"


def test_no_valid_baseline_ever_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "baseline.json").write_text("{not json")
    cfg = make_config(tmp_path)
    with pytest.raises(BaselineError):
        DesiredState(local_baseline(cfg.baseline_path)).current()
