"""Firewall controller and ruleset normalization against real `nft -j list ruleset` output.

Fixtures: tests/fixtures/nft/list_*.json, recorded from nft 1.0.6 by
`.venv/bin/python -m tests.fixtures.nft.capture` (root): baseline.nft loaded
into a throwaway network namespace, then one change per case.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.firewall import FirewallController, FirewallObserved, FirewallObserveError
from controllers.nft_normalize import (
    RulesetFormatError,
    digest,
    normalize,
    parse_listing,
)
from specs.actions import ApplyNftRuleset
from specs.drift import Remedy
from specs.host import Completed, FileStat
from specs.kinds.firewall import FirewallSpec

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "nft"
RULESET_PATH = "/etc/nftables.rules"
BASELINE_TEXT = (FIX / "baseline.nft").read_text()
BASELINE_SHA = hashlib.sha256(BASELINE_TEXT.encode()).hexdigest()


def listing(name: str) -> str:
    return (FIX / f"list_{name}.json").read_text()


def ruleset_digest(
    text: str, unmanaged_tables: Sequence[str] = (), unmanaged_set_elements: Sequence[str] = ()
) -> str:
    """The live digest exactly as FirewallController.observe computes it."""
    return digest(normalize(parse_listing(text), unmanaged_tables, unmanaged_set_elements))


BASE_DIGEST = ruleset_digest(listing("baseline"))


class FakeHost:
    """Live ruleset = one recorded listing; the sandbox answers with the baseline listing."""

    def __init__(self, live: str, file_text: str = BASELINE_TEXT,
                 sandbox: tuple[int, str, str] | None = None) -> None:
        self.live = live
        self.file_text = file_text
        self.sandbox = sandbox or (0, listing("baseline"), "")
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        self.calls.append(list(argv))
        if list(argv) == ["nft", "-j", "list", "ruleset"]:
            code, out, err = 0, self.live, ""
        elif argv[0] == "sandbox":
            code, out, err = self.sandbox
        else:
            raise AssertionError(f"unexpected command {argv}")
        return Completed(argv=list(argv), exit_code=code, stdout=out, stderr=err, duration=0.01)

    def read_text(self, path: str) -> str:
        if path != RULESET_PATH:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.file_text

    def stat(self, path: str) -> FileStat:
        raise FileNotFoundError(path)

    def sandbox_calls(self) -> int:
        return sum(1 for c in self.calls if c[0] == "sandbox")


def spec(**kw: Any) -> FirewallSpec:
    return FirewallSpec(ruleset_path=RULESET_PATH, ruleset_sha256=BASELINE_SHA, **kw)


def controller() -> FirewallController:
    return FirewallController(sandbox_argv=["sandbox"])


# -- normalization ---------------------------------------------------------


@pytest.mark.parametrize("case", ["baseline_traffic", "baseline_handles", "baseline_reordered"])
def test_state_handles_and_order_are_not_drift(case: str) -> None:
    assert listing(case) != listing("baseline")  # the raw listings really differ
    assert ruleset_digest(listing(case)) == BASE_DIGEST


@pytest.mark.parametrize("case", [
    "rule_added", "rule_removed", "rule_changed", "rules_reordered", "policy_accept",
    "chain_added", "element_added", "priority_changed", "empty",
])
def test_behaviour_changes_are_drift(case: str) -> None:
    assert ruleset_digest(listing(case)) != BASE_DIGEST


def test_traffic_fixture_really_has_counters_quota_and_dynamic_elements() -> None:
    text = listing("baseline_traffic")
    assert '"packets": 5' in text
    assert '"used": 640' in text
    assert '"expires"' in text and "127.0.0.1" in text


def test_shuffled_set_elements_and_objects_are_not_drift() -> None:
    doc = json.loads(listing("baseline"))
    items = doc["nftables"]
    rng = random.Random(7)
    shuffled = copy.deepcopy(items)
    for item in shuffled:
        body = next(iter(item.values()))
        if isinstance(body, dict) and isinstance(body.get("elem"), list):
            rng.shuffle(body["elem"])
    non_rules = [i for i in shuffled if "rule" not in i]
    rules = [i for i in shuffled if "rule" in i]
    rng.shuffle(non_rules)
    assert digest(normalize(non_rules + rules)) == BASE_DIGEST


def test_named_quota_limit_is_configuration_not_state() -> None:
    doc = json.loads(listing("baseline"))
    for item in doc["nftables"]:
        if "quota" in item and isinstance(item["quota"], dict):
            item["quota"]["bytes"] *= 2  # a different monthly limit
    assert digest(normalize(doc["nftables"])) != BASE_DIGEST


def test_unmanaged_tables_and_set_elements_are_left_out() -> None:
    # element_added changed inet filter ports; ignoring its elements hides that
    assert ruleset_digest(listing("element_added"), unmanaged_set_elements=["inet filter ports"]) \
        == ruleset_digest(listing("baseline"), unmanaged_set_elements=["inet filter ports"])
    # priority_changed only touched table ip nat
    assert ruleset_digest(listing("priority_changed"), unmanaged_tables=["ip nat"]) \
        == ruleset_digest(listing("baseline"), unmanaged_tables=["ip nat"])


def test_parse_listing_rejects_garbage() -> None:
    assert parse_listing("") == []
    with pytest.raises(RulesetFormatError):
        parse_listing("table inet filter {")
    with pytest.raises(RulesetFormatError):
        parse_listing('{"not": "nft"}')


# -- controller --------------------------------------------------------------


def test_matching_ruleset_has_no_drift_and_reports_hashes() -> None:
    ctrl, host = controller(), FakeHost(listing("baseline_traffic"))
    s = spec()
    obs = ctrl.observe(host, s)
    assert obs.file_matches and obs.live_digest == obs.expected_digest == BASE_DIGEST
    assert ctrl.diff(s, obs) == []
    assert ctrl.plan(s, obs, []) == []
    assert ctrl.facts(s, obs) == {
        "ruleset_hash": BASE_DIGEST,
        "expected_ruleset_hash": BASE_DIGEST,
        "ruleset_file_sha256": BASELINE_SHA,
    }
    sandbox = next(c for c in host.calls if c[0] == "sandbox")
    assert sandbox == ["sandbox", "--sha256", BASELINE_SHA, RULESET_PATH]


@pytest.mark.parametrize("case", ["rule_added", "rule_removed", "policy_accept", "chain_added"])
def test_drift_plans_apply_of_the_baseline_file(case: str) -> None:
    ctrl = controller()
    s = spec()
    obs = ctrl.observe(FakeHost(listing(case)), s)
    drifts = ctrl.diff(s, obs)
    assert [d.reason for d in drifts] == ["RulesetDrifted"]
    assert drifts[0].remedy is Remedy.remediate
    assert drifts[0].expected == BASE_DIGEST and drifts[0].actual == obs.live_digest
    assert ctrl.plan(s, obs, drifts) == [
        ApplyNftRuleset(path=RULESET_PATH, sha256=BASELINE_SHA, reason="RulesetDrifted")
    ]


def test_drift_message_points_at_the_chain() -> None:
    ctrl = controller()
    obs = ctrl.observe(FakeHost(listing("rule_added")), spec())
    assert "chain inet filter input: 7 rules live vs 6 expected" in obs.difference
    obs = ctrl.observe(FakeHost(listing("chain_added")), spec())
    assert "chains: 1 unexpected, 0 missing" in obs.difference


def test_expected_digest_is_computed_once_per_file_hash() -> None:
    ctrl, host = controller(), FakeHost(listing("baseline"))
    for _ in range(3):
        ctrl.observe(host, spec())
    assert host.sandbox_calls() == 1
    # a different normalization (unmanaged list) is a different cache entry
    ctrl.observe(host, spec(unmanaged_tables=["ip nat"]))
    assert host.sandbox_calls() == 2


def test_tampered_file_is_alert_only_and_never_loaded() -> None:
    ctrl = controller()
    host = FakeHost(listing("rule_added"), file_text=BASELINE_TEXT + "\n# sneaky edit\n")
    s = spec()
    obs = ctrl.observe(host, s)
    assert not obs.file_matches
    assert host.sandbox_calls() == 0
    drifts = ctrl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("RulesetFileMismatch", Remedy.alert)]
    assert ctrl.plan(s, obs, drifts) == []
    assert ctrl.facts(s, obs)["ruleset_hash"] == obs.live_digest


def test_missing_file_is_alert_only() -> None:
    ctrl = controller()
    s = FirewallSpec(ruleset_path="/nope.rules", ruleset_sha256=BASELINE_SHA)
    obs = ctrl.observe(FakeHost(listing("baseline")), s)
    drifts = ctrl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("RulesetFileUnreadable", Remedy.alert)]
    assert "/nope.rules" in drifts[0].message
    assert ctrl.plan(s, obs, drifts) == []


@pytest.mark.parametrize("code, reason", [(3, "RulesetInvalid"), (4, "RulesetUnverifiable")])
def test_sandbox_failure_is_alert_only(code: int, reason: str) -> None:
    ctrl = controller()
    host = FakeHost(listing("rule_added"), sandbox=(code, "", "Error: syntax error"))
    obs = ctrl.observe(host, spec())
    drifts = ctrl.diff(spec(), obs)
    assert [(d.reason, d.remedy) for d in drifts] == [(reason, Remedy.alert)]
    assert "syntax error" in drifts[0].message
    assert ctrl.plan(spec(), obs, drifts) == []


def test_rejected_file_is_not_re_evaluated_every_pass() -> None:
    ctrl = controller()
    host = FakeHost(listing("baseline"), sandbox=(3, "", "Error: syntax error"))
    for _ in range(3):
        obs = ctrl.observe(host, spec())
        assert [d.reason for d in ctrl.diff(spec(), obs)] == ["RulesetInvalid"]
    assert host.sandbox_calls() == 1
    # an unverifiable verdict (no namespace) may be transient: asked again
    host2 = FakeHost(listing("baseline"), sandbox=(4, "", "no netns"))
    for _ in range(2):
        controller_obs = ctrl.observe(host2, spec(unmanaged_tables=["ip nat"]))
    assert controller_obs.expected_unverifiable
    assert host2.sandbox_calls() == 2


def test_unlistable_live_ruleset_is_an_observe_error() -> None:
    class NoCap(FakeHost):
        def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
            return Completed(argv=list(argv), exit_code=1, stdout="",
                             stderr="Operation not permitted", duration=0.0)

    with pytest.raises(FirewallObserveError, match="CAP_NET_ADMIN"):
        controller().observe(NoCap(""), spec())


def test_spec_validates_unmanaged_names() -> None:
    with pytest.raises(ValueError):
        spec(unmanaged_tables=["inet"])
    with pytest.raises(ValueError):
        spec(unmanaged_set_elements=["inet filter; flush ruleset"])
    assert spec(unmanaged_set_elements=["inet filter allowed_v4"]).unmanaged_set_elements


def test_observed_model_round_trips() -> None:
    obs = controller().observe(FakeHost(listing("baseline")), spec())
    assert FirewallObserved.model_validate(obs.model_dump(mode="json")) == obs


# -- properties ----------------------------------------------------------------

_FIXTURES = sorted(p.stem.removeprefix("list_") for p in FIX.glob("list_*.json"))


@given(st.sampled_from(_FIXTURES), st.randoms())
@settings(max_examples=60)
def test_digest_ignores_any_order_of_non_rule_items_and_elements(
    case: str, rnd: random.Random
) -> None:
    items = json.loads(listing(case))["nftables"]
    shuffled = copy.deepcopy(items)
    for item in shuffled:
        body = next(iter(item.values()))
        if isinstance(body, dict) and isinstance(body.get("elem"), list):
            rnd.shuffle(body["elem"])
    others = [i for i in shuffled if "rule" not in i]
    rules = [i for i in shuffled if "rule" in i]
    rnd.shuffle(others)
    # interleave rules back in their relative order (rule order is semantic)
    merged: list[Any] = []
    for item in others:
        while rules and rnd.random() < 0.5:
            merged.append(rules.pop(0))
        merged.append(item)
    merged.extend(rules)
    assert digest(normalize(merged)) == digest(normalize(items))


@given(st.randoms())
@settings(max_examples=30)
def test_swapping_two_different_rules_of_a_chain_is_drift(rnd: random.Random) -> None:
    items = json.loads(listing("baseline"))["nftables"]
    idx = [i for i, it in enumerate(items)
           if "rule" in it and it["rule"]["chain"] == "input"]
    a, b = rnd.sample(idx, 2)
    swapped = list(items)
    swapped[a], swapped[b] = swapped[b], swapped[a]
    assert digest(normalize(swapped)) != digest(normalize(items))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["nftables", "table", "chain", "rule", "set", "map", "counter",
                         "family", "name", "table", "elem", "flags", "expr", "set", "handle",
                         "packets", "bytes", "x"]), inner, max_size=4),
    max_leaves=20,
)


@given(st.one_of(st.text(max_size=200), _json.map(json.dumps),
                 st.lists(_json, max_size=5).map(lambda v: json.dumps({"nftables": v}))))
@settings(max_examples=300)
def test_parse_and_normalize_only_raise_the_format_error(text: str) -> None:
    with contextlib.suppress(RulesetFormatError):
        digest(normalize(parse_listing(text)))
