"""Egress controller: parsing of real getent/nft output, fail-closed diff and plan."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pytest

from controllers.egress import (
    REASON_OUT_OF_DATE,
    REASON_RESOLUTION_FAILED,
    REASON_SET_MISSING,
    REASON_TABLE_MISSING,
    EgressController,
    EgressObserved,
    EgressObserveError,
    intervals,
    parse_getent,
    parse_nft_set,
)
from specs.actions import UpdateEgressSet
from specs.drift import Drift, Remedy
from specs.host import CommandNotFound, CommandTimeout, Completed, FileStat
from specs.kinds.egress import EgressSpec

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "egress"
MISSING_STDERR = (FIX / "nft_missing_table.stderr").read_text()


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def getent_output(addrs: Sequence[str], name: str) -> str:
    # the shape getent prints: one line per socket type, name on the first
    lines = []
    for a in addrs:
        lines += [f"{a:<15} STREAM {name}", f"{a:<15} DGRAM  ", f"{a:<15} RAW    "]
    return "\n".join(lines) + "\n"


class FakeHost:
    """getent answers from a mapping; nft sets held in memory (list + replace)."""

    def __init__(self, dns: dict[str, dict[str, list[str]]], sets: dict[str, list[str]] | None):
        self.dns = dns
        self.sets = sets  # None: the table does not exist
        self.timeouts: set[tuple[str, str]] = set()
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.nft_failure: Completed | None = None

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        argv = list(argv)
        with self.lock:
            self.calls.append(argv)
        if argv[0] == "getent":
            db, name = argv[1], argv[2]
            if (db, name) in self.timeouts:
                raise CommandTimeout(argv, timeout)
            rtype = "A" if db == "ahostsv4" else "AAAA"
            addrs = self.dns.get(name, {}).get(rtype, [])
            if db == "ahostsv6" and not addrs:  # glibc's AI_V4MAPPED fallback
                addrs = ["::ffff:" + a for a in self.dns.get(name, {}).get("A", [])]
            if not addrs:
                return Completed(argv=argv, exit_code=2, stdout="", stderr="", duration=0.0)
            return Completed(argv=argv, exit_code=0, stdout=getent_output(addrs, name),
                             stderr="", duration=0.0)
        if argv[:3] == ["nft", "-j", "list"]:
            if self.nft_failure is not None:
                return self.nft_failure
            if self.sets is None or (argv[3] == "set" and argv[6] not in self.sets):
                return Completed(argv=argv, exit_code=1, stdout="", stderr=MISSING_STDERR,
                                 duration=0.0)
            if argv[3] == "table":
                return Completed(argv=argv, exit_code=0, stdout="{}", stderr="", duration=0.0)
            body: dict[str, object] = {"name": argv[6]}
            if self.sets[argv[6]]:  # nft omits "elem" for an empty set
                body["elem"] = self.sets[argv[6]]
            doc = {"nftables": [{"metainfo": {}}, {"set": body}]}
            return Completed(argv=argv, exit_code=0, stdout=json.dumps(doc), stderr="",
                             duration=0.0)
        if argv[0] == "nft" and len(argv) == 2:
            return self._apply(argv)
        raise AssertionError(f"unexpected command {argv}")

    def _apply(self, argv: list[str]) -> Completed:
        """The two statements UpdateEgressSet renders, applied all-or-nothing."""
        assert self.sets is not None
        new = {k: list(v) for k, v in self.sets.items()}
        for stmt in argv[1].split("; "):
            words = stmt.split(" ", 5)
            if words[:2] == ["flush", "set"]:
                new[words[4]] = []
            elif words[:2] == ["add", "element"]:
                new[words[4]] += [e.strip() for e in words[5].strip("{} ").split(",")]
            else:
                raise AssertionError(f"unexpected nft statement {stmt!r}")
        self.sets = new
        return Completed(argv=argv, exit_code=0, stdout="", stderr="", duration=0.0)

    def read_text(self, path: str) -> str:
        raise FileNotFoundError(path)

    def stat(self, path: str) -> FileStat:
        raise FileNotFoundError(path)


SPEC = EgressSpec(hosts=["api.example.test", "cdn.example.test"])
DNS = {
    "api.example.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
    "cdn.example.test": {"A": ["192.0.2.11", "192.0.2.12"]},
}


def reconcile(
    host: FakeHost, spec: EgressSpec = SPEC
) -> tuple[EgressObserved, list[Drift], list[UpdateEgressSet]]:
    ctl = EgressController()
    obs = ctl.observe(host, spec)
    drifts = ctl.diff(spec, obs)
    actions = ctl.plan(spec, obs, drifts)
    assert all(isinstance(a, UpdateEgressSet) for a in actions)
    return obs, drifts, cast(list[UpdateEgressSet], actions)


# --- parsing of real output ----------------------------------------------------


def test_parse_getent_real_v4_and_v6() -> None:
    assert parse_getent(fixture("getent_ahostsv4_api.txt"), "v4") == ["192.0.2.10"]
    assert parse_getent(fixture("getent_ahostsv6_api.txt"), "v6") == ["2001:db8::10"]


def test_parse_getent_drops_v4_mapped_answers() -> None:
    # ahostsv6 of a name with only an A record answers ::ffff:a.b.c.d
    assert parse_getent(fixture("getent_ahostsv6_v4mapped.txt"), "v6") == []


def test_parse_getent_dedups_sorts_canonicalizes_and_ignores_other_family() -> None:
    out = getent_output(["192.0.2.20", "2001:DB8:0::1", "192.0.2.3", "192.0.2.20"], "x")
    assert parse_getent(out + "garbage line\n\n", "v4") == ["192.0.2.3", "192.0.2.20"]
    assert parse_getent(out, "v6") == ["2001:db8::1"]


def test_parse_nft_set_real_mixed_v4() -> None:
    assert parse_nft_set(fixture("nft_set_v4_mixed.json")) == [
        "192.0.2.10", "198.51.100.0/24", "203.0.113.5-203.0.113.9",
    ]


def test_parse_nft_set_real_mixed_v6() -> None:
    assert parse_nft_set(fixture("nft_set_v6_mixed.json")) == [
        str(ipaddress.ip_address("::ffff:1.2.3.4")), "2001:db8::10", "2001:db8::11",
        "2001:db8:1::/120",
        "2001:db9::1-2001:db9::5",
    ]


def test_parse_nft_set_real_empty_and_automerge() -> None:
    assert parse_nft_set(fixture("nft_set_v4_empty.json")) == []
    assert parse_nft_set(fixture("nft_set_v4_automerge.json")) == [
        "192.0.2.10-192.0.2.12", "192.0.2.20",
    ]


def test_parse_nft_set_elem_wrapper_with_counter() -> None:
    doc = {"nftables": [{"set": {"elem": [
        {"elem": {"val": "192.0.2.1", "counter": {"packets": 0, "bytes": 0}}},
        {"elem": {"val": {"prefix": {"addr": "10.0.0.0", "len": 8}}, "timeout": 60}},
    ]}}]}
    assert parse_nft_set(json.dumps(doc)) == ["192.0.2.1", "10.0.0.0/8"]


@pytest.mark.parametrize(
    "text",
    ["not json", '{"nftables": []}', '{"nftables": [{"set": {"elem": [{"concat": [1]}]}}]}'],
)
def test_parse_nft_set_rejects_unexpected_output(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nft_set(text)


def test_intervals_compare_coverage_not_spelling() -> None:
    singles = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.20"]
    automerged = parse_nft_set(fixture("nft_set_v4_automerge.json"))
    assert intervals(singles) == intervals(automerged)
    assert intervals(["192.0.2.10"]) != intervals(["192.0.2.10", "192.0.2.11"])
    assert intervals([]) == []


# --- diff / plan ---------------------------------------------------------------


def test_converged_sets_give_no_drift_and_no_action() -> None:
    host = FakeHost(DNS, {"allowed_v4": ["192.0.2.12", "192.0.2.10", "192.0.2.11"],
                          "allowed_v6": ["2001:db8::10"]})
    _, drifts, actions = reconcile(host)
    assert drifts == [] and actions == []


def test_out_of_date_sets_are_replaced_whole_per_family() -> None:
    host = FakeHost(DNS, {"allowed_v4": ["198.51.100.7"], "allowed_v6": []})
    _, drifts, actions = reconcile(host)
    assert [d.reason for d in drifts] == [REASON_OUT_OF_DATE, REASON_OUT_OF_DATE]
    assert all(d.remedy is Remedy.remediate for d in drifts)
    assert actions == [
        UpdateEgressSet(table="compliance_egress", set_name="allowed_v4", family="inet",
                        elements=["192.0.2.10", "192.0.2.11", "192.0.2.12"],
                        reason=REASON_OUT_OF_DATE),
        UpdateEgressSet(table="compliance_egress", set_name="allowed_v6", family="inet",
                        elements=["2001:db8::10"], reason=REASON_OUT_OF_DATE),
    ]


def test_only_the_differing_family_is_planned() -> None:
    host = FakeHost(DNS, {"allowed_v4": ["192.0.2.10", "192.0.2.11", "192.0.2.12"],
                          "allowed_v6": []})
    _, _, actions = reconcile(host)
    assert [a.set_name for a in actions] == ["allowed_v6"]


def test_failed_name_loses_its_old_addresses_fail_closed() -> None:
    # cdn was allowed before; now it does not resolve: its addresses must go
    live = {
        "allowed_v4": ["192.0.2.10", "192.0.2.11", "192.0.2.12"],
        "allowed_v6": ["2001:db8::10"],
    }
    host = FakeHost({"api.example.test": DNS["api.example.test"]}, live)
    obs, drifts, actions = reconcile(host)
    assert obs.failed.keys() == {"cdn.example.test"}
    reasons = {(d.reason, d.field, d.remedy) for d in drifts}
    assert reasons == {
        (REASON_OUT_OF_DATE, "egress.sets.allowed_v4", Remedy.remediate),
        (REASON_RESOLUTION_FAILED, "egress.hosts.cdn.example.test", Remedy.alert),
    }
    assert len(actions) == 1 and isinstance(actions[0], UpdateEgressSet)
    assert actions[0].elements == ["192.0.2.10"]


def test_all_names_failing_empties_both_sets() -> None:
    live = {"allowed_v4": ["192.0.2.10"], "allowed_v6": ["2001:db8::10"]}
    host = FakeHost({}, live)
    obs, drifts, actions = reconcile(host)
    assert sorted(obs.failed) == ["api.example.test", "cdn.example.test"]
    assert [a.elements for a in actions] == [[], []]
    assert actions[0].commands() == [["nft", "flush set inet compliance_egress allowed_v4"]]
    alerts = [d for d in drifts if d.remedy is Remedy.alert]
    assert {d.reason for d in alerts} == {REASON_RESOLUTION_FAILED} and len(alerts) == 2


def test_timeout_in_one_family_drops_that_family_and_alerts() -> None:
    host = FakeHost(DNS, {"allowed_v4": [], "allowed_v6": ["2001:db8::10"]})
    host.timeouts.add(("ahostsv6", "api.example.test"))
    obs, drifts, actions = reconcile(host)
    api = next(n for n in obs.names if n.name == "api.example.test")
    assert api.v6.status == "timeout" and api.v4.addresses == ["192.0.2.10"]
    assert "v6: timeout" in (api.failure or "")
    by_set = {a.set_name: a.elements for a in actions}
    assert by_set == {"allowed_v4": ["192.0.2.10", "192.0.2.11", "192.0.2.12"], "allowed_v6": []}
    assert any(d.reason == REASON_RESOLUTION_FAILED for d in drifts)


def test_missing_getent_is_a_failed_resolution_not_a_crash() -> None:
    class NoGetent(FakeHost):
        def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
            if argv[0] == "getent":
                raise CommandNotFound(argv)
            return super().run(argv, timeout)

    host = NoGetent(DNS, {"allowed_v4": ["192.0.2.10"], "allowed_v6": []})
    obs, _, actions = reconcile(host)
    assert len(obs.failed) == 2
    assert [a.elements for a in actions] == [[]]


def test_missing_table_is_alert_only_and_plans_nothing() -> None:
    host = FakeHost(DNS, None)
    obs, drifts, actions = reconcile(host)
    assert not obs.table_present
    assert [(d.reason, d.remedy) for d in drifts] == [(REASON_TABLE_MISSING, Remedy.alert)]
    assert actions == []


def test_missing_set_is_alert_only() -> None:
    host = FakeHost(DNS, {"allowed_v4": ["192.0.2.10", "192.0.2.11", "192.0.2.12"]})
    obs, drifts, actions = reconcile(host)
    assert obs.table_present
    assert [(d.reason, d.field) for d in drifts] == [(REASON_SET_MISSING, "egress.sets.allowed_v6")]
    assert actions == []


def test_nft_permission_error_raises_observe_error() -> None:
    host = FakeHost(DNS, {"allowed_v4": [], "allowed_v6": []})
    host.nft_failure = Completed(argv=["nft"], exit_code=1, stdout="",
                                 stderr="Error: Operation not permitted", duration=0.0)
    with pytest.raises(EgressObserveError, match="CAP_NET_ADMIN"):
        EgressController().observe(host, SPEC)


def test_no_hosts_means_empty_sets() -> None:
    host = FakeHost(DNS, {"allowed_v4": ["192.0.2.10"], "allowed_v6": []})
    _, drifts, actions = reconcile(host, EgressSpec())
    assert [d.reason for d in drifts] == [REASON_OUT_OF_DATE]
    assert [a.elements for a in actions] == [[]]
    assert not any(c[0] == "getent" for c in host.calls)


def test_facts() -> None:
    host = FakeHost({"api.example.test": DNS["api.example.test"]},
                    {"allowed_v4": ["192.0.2.10"], "allowed_v6": []})
    ctl = EgressController()
    obs = ctl.observe(host, SPEC)
    facts = ctl.facts(SPEC, obs)
    assert facts["egress_resolved"] == {"api.example.test": ["192.0.2.10", "2001:db8::10"]}
    assert list(facts["egress_failed"]) == ["cdn.example.test"]
    assert facts["egress_element_counts"] == {"allowed_v4": 1, "allowed_v6": 0}
    json.dumps(facts)  # evidence must be JSON


# --- spec ------------------------------------------------------------------------


def test_spec_validates_and_dedups_host_names() -> None:
    spec = EgressSpec(hosts=["API.example.test.", "api.example.test", "192.0.2.1"])
    assert spec.hosts == ["api.example.test", "192.0.2.1"]
    for bad in ["-oProxy=x", "a b", "x;y", ""]:
        with pytest.raises(ValueError):
            EgressSpec(hosts=[bad])


def test_with_config_defaults() -> None:
    spec = EgressSpec().with_config_defaults(["mcp.example.test"], "site_egress")
    assert spec.hosts == ["mcp.example.test"] and spec.table == "site_egress"
    explicit = EgressSpec(hosts=["a.example.test"], table="mine")
    assert explicit.with_config_defaults(["mcp.example.test"], "site_egress") is explicit


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline

    root = Path(__file__).resolve().parents[2]
    baseline = load_baseline(root / "examples" / "baselines" / "egress.json")
    assert baseline.egress == EgressSpec()
    assert "egress" in baseline.resources()
