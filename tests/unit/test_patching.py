"""Patching controller: observation parsing, drifts and plans from recorded state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.patching import (
    FIND_GENERATIONS,
    NIXOS_VERSION,
    Generation,
    PatchingController,
    PatchingObserved,
    parse_generations,
    pinned_revision,
)
from specs.actions import NixosRebuild
from specs.drift import Remedy
from specs.host import CommandNotFound, Completed, FileStat
from specs.kinds.patching import PatchingSpec, store_hash
from specs.resource import Trigger

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "patching"
GEN41 = "/nix/store/0c9f3k2v7d8mzr6yq4l1g5a2b3c4d5f6-nixos-system-clinic-24.05.20240601.abc1234"
GEN42 = "/nix/store/1qw8rjz9v2xk5m7p3n4b6c8d0f1g2h3i-nixos-system-clinic-24.05.20240715.def5678"
NEW = "/nix/store/3zz9y8x7w6v5s4r3q2p1n0m9l8k7j6i5-nixos-system-clinic-24.05.20240901.fed9876"
NOW = datetime(2024, 8, 1, 3, 0, tzinfo=UTC)
SWITCHED = datetime(2024, 7, 15, 9, 0, tzinfo=UTC).timestamp()


def fx(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


def link(target: str, mtime: float = 0.0) -> FileStat:
    return FileStat(mode=0o120777, uid=0, gid=0, size=len(target), mtime=mtime, is_dir=False,
                    is_symlink=True, link_target=target)


class FakeHost:
    def __init__(self, links: dict[str, FileStat], runs: dict[tuple[str, ...], str]) -> None:
        self.links = links
        self.runs = runs

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        if tuple(argv) not in self.runs:
            raise CommandNotFound(argv)
        return Completed(argv=list(argv), exit_code=0, stdout=self.runs[tuple(argv)], stderr="",
                         duration=0.01)

    def read_text(self, path: str) -> str:
        raise FileNotFoundError(path)

    def stat(self, path: str) -> FileStat:
        if path in self.links:
            return self.links[path]
        raise FileNotFoundError(path)


def nixos_host(*, booted_kernel: str = "/nix/store/k1-linux-6.6.40/bzImage") -> FakeHost:
    return FakeHost(
        links={
            "/run/current-system": link(GEN42, SWITCHED),
            "/run/booted-system": link(GEN41),
            "/nix/var/nix/profiles/system": link("system-42-link"),
            "/run/current-system/kernel": link("/nix/store/k1-linux-6.6.40/bzImage"),
            "/run/booted-system/kernel": link(booted_kernel),
            "/run/current-system/initrd": link("/nix/store/i1-initrd/initrd"),
            "/run/booted-system/initrd": link("/nix/store/i1-initrd/initrd"),
        },
        runs={tuple(FIND_GENERATIONS): fx("find_generations.txt"),
              tuple(NIXOS_VERSION): fx("nixos_version.json")},
    )


def observe(host: FakeHost, spec: PatchingSpec) -> PatchingObserved:
    return PatchingController(clock=lambda: NOW).observe(host, spec)


def test_parse_generations_skips_junk_and_sorts() -> None:
    gens = parse_generations(fx("find_generations.txt"))
    assert [g.number for g in gens] == [9, 41, 42]
    assert gens[2].system == GEN42
    assert gens[1].created_at == pytest.approx(1717200000.123456789)


def test_observe_nixos_host() -> None:
    spec = PatchingSpec(target=GEN42)
    o = observe(nixos_host(), spec)
    assert o.current_system == GEN42
    assert o.profile_generation == 42
    assert o.nixos_version == "24.05.20240715.def5678"
    assert o.configuration_revision == "5f2c0a9e7b1d4c3a8e6f0b2d9c7a1e3f5b8d0c2a"
    assert o.running_generation() == Generation(number=42, system=GEN42, created_at=1721030400.0)
    assert o.rollback_available
    assert not o.reboot_required
    ctrl = PatchingController(clock=lambda: NOW)
    assert ctrl.diff(spec, o) == []
    facts = ctrl.facts(spec, o)
    assert facts["derivation_digest"] == "1qw8rjz9v2xk5m7p3n4b6c8d0f1g2h3i"
    assert facts["current_generation"] == 42
    assert facts["rollback_available"] is True
    assert facts["nixos_revision"] == "24.05.20240715.def5678"


def test_wrong_store_path_plans_disruptive_rebuild() -> None:
    ctrl = PatchingController(clock=lambda: NOW)
    spec = PatchingSpec(target=NEW, health_timeout=90)
    o = observe(nixos_host(), spec)
    drifts = ctrl.diff(spec, o)
    assert [d.reason for d in drifts] == ["WrongSystem"]
    actions = ctrl.plan(spec, o, drifts)
    assert actions == [NixosRebuild(target=NEW, health_timeout=90, reason="WrongSystem")]
    assert actions[0].disruptive


def test_stale_store_path_alerts_but_stale_flake_rebuilds() -> None:
    ctrl = PatchingController(clock=lambda: NOW)
    o = observe(nixos_host(), PatchingSpec())
    stale_path = PatchingSpec(target=GEN42, max_generation_age_days=7)
    drifts = ctrl.diff(stale_path, o)
    assert [(d.reason, d.remedy) for d in drifts] == [("StaleGeneration", Remedy.alert)]
    assert ctrl.plan(stale_path, o, drifts) == []
    flake = PatchingSpec(target="github:clinic/nixos-config#reception", max_generation_age_days=7)
    drifts = ctrl.diff(flake, o)
    assert [(d.reason, d.remedy) for d in drifts] == [("StaleGeneration", Remedy.remediate)]
    [action] = ctrl.plan(flake, o, drifts)
    assert isinstance(action, NixosRebuild)
    assert action.target == "github:clinic/nixos-config#reception"
    fresh = PatchingSpec(target=GEN42, max_generation_age_days=30)
    assert ctrl.diff(fresh, o) == []


def test_flake_pinned_revision_compared_through_configuration_revision() -> None:
    ctrl = PatchingController(clock=lambda: NOW)
    o = observe(nixos_host(), PatchingSpec())
    same = "github:clinic/nixos-config/5f2c0a9e7b1d4c3a8e6f0b2d9c7a1e3f5b8d0c2a#reception"
    assert ctrl.diff(PatchingSpec(target=same), o) == []
    other = "git+https://git.clinic.lan/nixos?rev=0000000000000000000000000000000000000001#rx"
    drifts = ctrl.diff(PatchingSpec(target=other), o)
    assert [d.reason for d in drifts] == ["WrongSystem"]
    assert ctrl.diff(PatchingSpec(target="/etc/nixos#reception"), o) == []  # unpinned


@pytest.mark.parametrize(
    ("ref", "rev"),
    [
        ("github:o/r/" + "a" * 40 + "#h", "a" * 40),
        ("git+https://x/y?ref=main&rev=" + "b" * 40 + "#h", "b" * 40),
        ("github:o/r#h", None),
        ("github:o/r/main#h", None),
    ],
)
def test_pinned_revision(ref: str, rev: str | None) -> None:
    assert pinned_revision(ref) == rev


def test_reboot_required_is_alert_only() -> None:
    ctrl = PatchingController(clock=lambda: NOW)
    spec = PatchingSpec(target=GEN42)
    o = observe(nixos_host(booted_kernel="/nix/store/k0-linux-6.6.30/bzImage"), spec)
    drifts = ctrl.diff(spec, o)
    assert [(d.reason, d.remedy) for d in drifts] == [("RebootRequired", Remedy.alert)]
    assert ctrl.plan(spec, o, drifts) == []
    assert ctrl.diff(PatchingSpec(target=GEN42, require_reboot_alert=False), o) == []


def test_rebuild_order_is_level_triggered() -> None:
    ctrl = PatchingController(clock=lambda: NOW)
    before = datetime.fromtimestamp(SWITCHED, UTC) - timedelta(hours=1)
    after = datetime.fromtimestamp(SWITCHED, UTC) + timedelta(hours=1)
    old = Trigger(order_id="o-1", action="rebuild", params={"target": NEW}, requested_at=before)
    new = Trigger(order_id="o-2", action="rebuild", params={"target": NEW}, requested_at=after)
    spec_done = PatchingSpec(target=GEN42, triggers=[old])
    o = observe(nixos_host(), spec_done)
    assert ctrl.diff(spec_done, o) == []  # switched after the order: satisfied
    spec_pending = PatchingSpec(target=GEN42, triggers=[old, new])
    drifts = ctrl.diff(spec_pending, o)
    assert [d.reason for d in drifts] == ["RebuildRequested"]
    [action] = ctrl.plan(spec_pending, o, drifts)
    assert isinstance(action, NixosRebuild)
    assert action.target == NEW and action.order_id == "o-2"


def test_not_nixos_is_an_alert() -> None:
    ctrl = PatchingController(clock=lambda: NOW)
    host = FakeHost(links={}, runs={})
    o = ctrl.observe(host, PatchingSpec(target=NEW))
    drifts = ctrl.diff(PatchingSpec(target=NEW), o)
    assert [(d.reason, d.remedy) for d in drifts] == [("CurrentSystemUnknown", Remedy.alert)]
    assert "not a NixOS host" in drifts[0].message
    assert ctrl.facts(PatchingSpec(), o)["rollback_available"] is False


def test_running_system_not_in_profile_head() -> None:
    # `nixos-rebuild test` activates without moving the profile: the running
    # generation is found by its store path, not by the profile link.
    host = nixos_host()
    host.links["/run/current-system"] = link(GEN41, SWITCHED)
    o = observe(host, PatchingSpec())
    cur = o.running_generation()
    assert cur is not None and cur.number == 41


@pytest.mark.parametrize(
    "bad",
    ["-rf", "/nix/store/short-nixos", "/etc/nixos#h\n", "github:o/r#h x",
     "/nix/store/" + "e" * 32 + "-x"],
)
def test_spec_rejects_bad_targets(bad: str) -> None:
    with pytest.raises(ValueError):
        PatchingSpec(target=bad)


def test_store_hash() -> None:
    assert store_hash(GEN41) == "0c9f3k2v7d8mzr6yq4l1g5a2b3c4d5f6"
    assert store_hash("github:o/r#h") is None


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline

    example = Path(__file__).resolve().parents[2] / "examples" / "baselines" / "patching.json"
    b = load_baseline(example)
    assert b.patching is not None and b.patching.target is not None
    assert b.patching.max_generation_age_days == 45


def test_rebuild_backoff_is_hours_not_seconds() -> None:
    base, cap = PatchingController().backoff(PatchingSpec())
    assert base >= 3600 and cap >= base


@given(st.text(max_size=400))
def test_generation_parser_total(text: str) -> None:
    for g in parse_generations(text):
        assert g.number >= 0 and g.system
