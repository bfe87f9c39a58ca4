"""Compliance report from signed evidence: times, episodes, remediations, deferrals,
alerts, coverage; bundles that fail verification are not used; OSCAL output
validates against compliance-trestle's OSCAL models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.evidence.report import State, build_report
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import Store, open_store
from reconciler.trust.dsse import Signer, TrustedKeys
from tests.harness.require import unavailable
from tests.unit.test_trust_support import AGENT_SIGNER

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
SILENCE = timedelta(hours=2)


def trestle_assessment_results() -> Any:
    """compliance-trestle's OSCAL model (dev extras); CI fails rather than skips without it."""
    try:
        from trestle.oscal.assessment_results import AssessmentResults
    except ModuleNotFoundError:
        unavailable("needs compliance-trestle (pip install -e '.[dev]')")
    return AssessmentResults


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


RESTART = {"step": 1, "action": "restart_unit", "command": ["systemctl", "restart", "ehr.service"],
           "exit_code": 0, "duration_sec": 0.2, "result": "ok"}
HELD = {"guard": "maintenance_window", "allowed": False, "reason": "OutsideMaintenanceWindow",
        "message": "disruptive action deferred to the window 02:00-04:00 UTC"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.db")
    yield s
    s.close()


def record(w: EvidenceWriter, clock: Clock, at: datetime, check: str, outcome: str,
           **kw: Any) -> str:
    clock.now = at
    return w.record(check=check, outcome=outcome, post_state={"at": at.isoformat()},
                    timestamp_start=at, timestamp_end=at, **kw)


def history(store: Store, tmp_path: Path) -> dict[str, str]:
    """A day of one clinic host: services drift and are fixed, patching is deferred to the
    window, encryption is alert-only all day, then the agent is silent for 5 hours."""
    clock = Clock()
    w = EvidenceWriter(store, AGENT_SIGNER, tmp_path / "evidence",
                       EvidenceIdentity("clinic-1", "fd-1"), clock=clock)
    ids = {}
    ids["svc_before"] = record(w, clock, T0 - H, "services", "success")
    ids["enc_0"] = record(w, clock, T0, "encryption", "alert",
                          error="RootNotEncrypted: root")
    ids["svc_drift"] = record(w, clock, T0 + H, "services", "failed",
                              error="UnitInactive: ehr.service")
    ids["svc_fixed"] = record(w, clock, T0 + 2 * H, "services", "success", actions=[RESTART])
    ids["patch_def"] = record(w, clock, T0 + 2 * H, "patching", "deferred",
                              guard_verdicts=[HELD])
    ids["enc_1"] = record(w, clock, T0 + 3 * H, "encryption", "alert",
                          error="RootNotEncrypted: root")
    ids["order"] = record(w, clock, T0 + 3 * H, "order", "rejected", error="BadSignature")
    ids["patch_ok"] = record(w, clock, T0 + 4 * H, "patching", "success")
    ids["svc_4"] = record(w, clock, T0 + 4 * H, "services", "success")
    # then nothing until T0 + 9h: five hours without evidence
    ids["svc_9"] = record(w, clock, T0 + 9 * H, "services", "success")
    w.close()
    return ids


def report(store: Store, tmp_path: Path, keys: list[str] | None = None) -> Any:
    return build_report(
        store, tmp_path / "evidence", TrustedKeys(keys or [AGENT_SIGNER.public_key_hex]),
        site_id="clinic-1", host_id="fd-1", since=T0, until=T0 + 10 * H,
        now=T0 + 12 * H, max_silence=SILENCE)


def test_time_in_compliance_episodes_and_silences(store: Store, tmp_path: Path) -> None:
    ids = history(store, tmp_path)
    rep = report(store, tmp_path)
    svc = next(c for c in rep.checks if c.check == "services")
    # compliant 0-1h (state from the bundle before the period), drifted 1-2h, compliant
    # 2-6h (4h..6h is the 2h grace after the last bundle), unknown 6-9h, compliant 9-10h
    assert svc.seconds == {"compliant": 6 * 3600.0, "drifted": 3600.0, "unknown": 3 * 3600.0}
    assert [(e.start, e.end, e.opened_by, e.closed_by, e.resolution) for e in svc.episodes] == [
        (T0 + H, T0 + 2 * H, ids["svc_drift"], ids["svc_fixed"], "remediated")]
    assert [(r.bundle_id, r.actions[0]["action"]) for r in svc.remediations] == [
        (ids["svc_fixed"], "restart_unit")]
    assert [(s.start, s.end, s.after_bundle) for s in svc.silences] == [
        (T0 + 6 * H, T0 + 9 * H, ids["svc_4"])]
    assert svc.bundles == 4  # the one before the period only sets the starting state

    patch = next(c for c in rep.checks if c.check == "patching")
    assert [(d.bundle_id, d.reason) for d in patch.deferrals] == [
        (ids["patch_def"], "OutsideMaintenanceWindow")]
    # nothing known before its first bundle, nor after the grace that follows its last
    assert [(s.start, s.end) for s in patch.silences] == [(T0, T0 + 2 * H), (T0 + 6 * H, T0 + 10 * H)]

    enc = next(c for c in rep.checks if c.check == "encryption")
    assert len(enc.alerts) == 1
    alert = enc.alerts[0]
    assert (alert.remediable, alert.reason, alert.bundle_ids) == (
        False, "NotRemediable", [ids["enc_0"], ids["enc_1"]])
    assert enc.end_state is State.unknown and enc.seconds["compliant"] == 0
    assert [e.bundle_id for e in rep.events] == [ids["order"]]


def test_citations_combine_their_checks(store: Store, tmp_path: Path) -> None:
    history(store, tmp_path)
    rep = report(store, tmp_path)
    cit = {c.citation: c for c in rep.citations}
    # 164.312(a)(2)(iv) is encryption's alone: drifted while it had evidence
    assert cit["164.312(a)(2)(iv)"].seconds["compliant"] == 0
    assert "sc-13" in cit["164.312(a)(2)(iv)"].controls
    # 164.308(a)(1)(ii)(B) is services'
    assert cit["164.308(a)(1)(ii)(B)"].checks == ["services"]
    assert cit["164.308(a)(1)(ii)(B)"].controls == ["pl-2", "ra-2", "ra-3"]


def test_coverage_reports_chain_state_and_unverifiable_bundles(
    store: Store, tmp_path: Path
) -> None:
    ids = history(store, tmp_path)
    assert report(store, tmp_path).coverage.chain_ok
    # an attacker rewrites a drift bundle as success: its signature no longer verifies,
    # so the report does not use it, and says so
    path = next((tmp_path / "evidence").glob(f"*-{ids['svc_drift']}.json"))
    env = json.loads(path.read_bytes())
    env["payload"] = env["payload"].replace(env["payload"][40:44], "AAAA", 1)
    path.write_text(json.dumps(env))
    rep = report(store, tmp_path)
    assert [r["bundle_id"] for r in rep.coverage.rejected] == [ids["svc_drift"]]
    assert not rep.coverage.chain_ok
    svc = next(c for c in rep.checks if c.check == "services")
    assert [e.opened_by for e in svc.episodes] == [ids["svc_fixed"]]  # not the forged bundle


def test_bundles_signed_by_another_key_are_not_used(store: Store, tmp_path: Path) -> None:
    history(store, tmp_path)
    from nacl.signing import SigningKey

    other = Signer(SigningKey.generate())
    rep = report(store, tmp_path, keys=[other.public_key_hex])
    assert rep.checks == [] and len(rep.coverage.rejected) == 10
    assert {r["reason"] for r in rep.coverage.rejected} == {"UnknownKey"}


def test_oscal_assessment_results_validate_with_trestle(store: Store, tmp_path: Path) -> None:
    AssessmentResults = trestle_assessment_results()
    from reconciler.evidence.oscal import assessment_results

    ids = history(store, tmp_path)
    doc = assessment_results(report(store, tmp_path), "0.1.0")
    ar = AssessmentResults.model_validate(doc["assessment-results"])
    result = ar.results[0]
    targets = {(f.target.target_id, f.target.status.state.value if hasattr(
        f.target.status.state, "value") else f.target.status.state) for f in result.findings}
    assert ("sc-13", "not-satisfied") in targets  # encryption never compliant
    assert ("pl-2", "satisfied") in targets  # services ended compliant
    hrefs = json.dumps(doc)
    assert ids["svc_drift"] in hrefs and ids["svc_fixed"] in hrefs
    assert doc["assessment-results"]["metadata"]["oscal-version"] == "1.1.2"


def test_drift_fixed_within_one_reconcile_is_an_episode(store: Store, tmp_path: Path) -> None:
    clock = Clock()
    w = EvidenceWriter(store, AGENT_SIGNER, tmp_path / "evidence",
                       EvidenceIdentity("clinic-1", "fd-1"), clock=clock)
    clock.now = T0 + H
    fixed = w.record(check="services", outcome="success", actions=[RESTART],
                     timestamp_start=T0 + H - timedelta(seconds=2), timestamp_end=T0 + H)
    w.close()
    svc = report(store, tmp_path).checks[0]
    assert [(e.start, e.end, e.opened_by, e.closed_by, e.resolution) for e in svc.episodes] == [
        (T0 + H - timedelta(seconds=2), T0 + H, fixed, fixed, "remediated")]


def test_trestle_rejects_a_malformed_document(store: Store, tmp_path: Path) -> None:
    """The validation above can fail: a missing required field or a stray key is refused."""
    from pydantic import ValidationError

    AssessmentResults = trestle_assessment_results()
    from reconciler.evidence.oscal import assessment_results

    history(store, tmp_path)
    doc = assessment_results(report(store, tmp_path), "0.1.0")["assessment-results"]
    broken = json.loads(json.dumps(doc))
    del broken["results"][0]["reviewed-controls"]
    with pytest.raises(ValidationError):
        AssessmentResults.model_validate(broken)
    stray = json.loads(json.dumps(doc))
    stray["results"][0]["findings"][0]["target"]["status"]["state"] = "passed"
    with pytest.raises(ValidationError):
        AssessmentResults.model_validate(stray)
