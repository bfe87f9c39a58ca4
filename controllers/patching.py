"""NixOS system generation: is the running system the target, and is it fresh?

Observed through the Host only: the `/run/current-system` and
`/run/booted-system` links, the system profile's `system-N-link` generations
(one `find -printf` call: name, link target and mtime of each), and
`nixos-version --json`. A rebuild itself is a NixosRebuild action, run by the
actuator as a transaction with health check and rollback (reconciler.actuator.rebuild).

Target comparison: a store path is compared exactly with /run/current-system.
A flake reference cannot be compared without evaluating it (which the agent
never does during observation), so it is compared through
`configurationRevision` only when the reference pins a revision (`?rev=<sha>`
or `github:owner/repo/<sha>`); an unpinned flake reference yields no
WrongSystem drift, and is rebuilt on a rebuild order or a stale generation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from specs.actions import Action, NixosRebuild
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.patching import PatchingSpec, is_store_path, store_hash
from specs.resource import Trigger
from specs.watch import WatchTargets

PROFILES_DIR = "/nix/var/nix/profiles"
PROFILE = f"{PROFILES_DIR}/system"
FIND_GENERATIONS = [
    "find", PROFILES_DIR, "-maxdepth", "1", "-name", "system-*-link", "-printf", r"%f\t%l\t%T@\n",
]
NIXOS_VERSION = ["nixos-version", "--json"]
TIMEOUT = 10.0
REBUILD_ORDER_ACTIONS = frozenset({"rebuild"})  # specs.orders.OrderAction.rebuild
# Every rebuild attempt is a disruptive switch (and maybe a rollback): a target
# that was reverted is retried at most hourly inside the window, backing off to daily.
REBUILD_BACKOFF = (3600.0, 86400.0)
_GEN_NAME_RE = re.compile(r"^system-(\d+)-link$")
_PINNED_REV_RE = re.compile(r"(?:[?&]rev=|^github:[^/]+/[^/?#]+/)([0-9a-f]{40})(?:[&#?]|$)")

Clock = Callable[[], datetime]


class Generation(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int
    system: str  # store path the system-N-link points to
    created_at: float  # mtime of the link (epoch seconds): when the generation was made


class PatchingObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    observed_at: datetime
    current_system: str | None
    booted_system: str | None
    switched_at: float | None  # mtime of /run/current-system: the last activation
    profile_generation: int | None  # N of the profile's system-N-link
    generations: list[Generation]
    nixos_version: str | None = None
    nixpkgs_revision: str | None = None
    configuration_revision: str | None = None
    current_kernel: str | None = None
    booted_kernel: str | None = None
    current_initrd: str | None = None
    booted_initrd: str | None = None
    problems: list[str] = []

    def running_generation(self) -> Generation | None:
        """The generation whose system is running (the profile's, when it matches)."""
        by_number = {g.number: g for g in self.generations}
        prof = by_number.get(self.profile_generation) if self.profile_generation else None
        if prof is not None and prof.system == self.current_system:
            return prof
        matches = [g for g in self.generations if g.system == self.current_system]
        return max(matches, key=lambda g: g.number) if matches else prof

    @property
    def rollback_available(self) -> bool:
        cur = self.running_generation()
        return cur is not None and any(g.number < cur.number for g in self.generations)

    @property
    def reboot_required(self) -> bool:
        pairs = [(self.current_kernel, self.booted_kernel), (self.current_initrd,
                                                             self.booted_initrd)]
        return any(c is not None and b is not None and c != b for c, b in pairs)


def parse_generations(text: str, profiles_dir: str = PROFILES_DIR) -> list[Generation]:
    """Lines 'system-N-link<TAB>target<TAB>mtime' from find -printf; odd lines skipped."""
    out: list[Generation] = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        m = _GEN_NAME_RE.fullmatch(parts[0])
        if not m:
            continue
        target = parts[1] if parts[1].startswith("/") else f"{profiles_dir}/{parts[1]}"
        try:
            mtime = float(parts[2])
        except ValueError:
            continue
        out.append(Generation(number=int(m.group(1)), system=target, created_at=mtime))
    return sorted(out, key=lambda g: g.number)


def pinned_revision(flake_ref: str) -> str | None:
    m = _PINNED_REV_RE.search(flake_ref)
    return m.group(1) if m else None


class PatchingController(ControllerBase[PatchingSpec, PatchingObserved]):
    spec_type = PatchingSpec
    kind = "patching"
    transactional_actions = frozenset({"NixosRebuild"})

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or (lambda: datetime.now(UTC))

    def targets(self, spec: PatchingSpec) -> WatchTargets:
        # the links a switch or a reboot replaces; a watch sees the rename in /run
        return WatchTargets.of(paths=["/run/current-system", "/run/booted-system"])

    def backoff(self, spec: PatchingSpec) -> tuple[float, float]:
        """(base, cap) seconds between attempts of the same rebuild (runtime per-action backoff)."""
        return REBUILD_BACKOFF

    def observe(self, host: Host, spec: PatchingSpec) -> PatchingObserved:
        problems: list[str] = []
        current, switched_at = _link_and_mtime(host, "/run/current-system")
        booted, _ = _link_and_mtime(host, "/run/booted-system")
        profile_link, _ = _link_and_mtime(host, PROFILE)
        prof_gen = None
        if profile_link is not None:
            m = _GEN_NAME_RE.fullmatch(profile_link.rsplit("/", 1)[-1])
            prof_gen = int(m.group(1)) if m else None
        generations: list[Generation] = []
        done = _run(host, FIND_GENERATIONS, problems)
        if done is not None:
            generations = parse_generations(done)
        version: dict[str, Any] = {}
        out = _run(host, NIXOS_VERSION, problems) if current is not None else None
        if out is not None:
            try:
                loaded = json.loads(out)
                version = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                problems.append("nixos-version --json printed no JSON")
        if current is None:
            problems.append("/run/current-system is missing: not a NixOS host?")
        return PatchingObserved(
            observed_at=self.clock(),
            current_system=current, booted_system=booted, switched_at=switched_at,
            profile_generation=prof_gen, generations=generations,
            nixos_version=_str(version.get("nixosVersion")),
            nixpkgs_revision=_str(version.get("nixpkgsRevision")),
            configuration_revision=_str(version.get("configurationRevision")),
            current_kernel=_link_and_mtime(host, "/run/current-system/kernel")[0],
            booted_kernel=_link_and_mtime(host, "/run/booted-system/kernel")[0],
            current_initrd=_link_and_mtime(host, "/run/current-system/initrd")[0],
            booted_initrd=_link_and_mtime(host, "/run/booted-system/initrd")[0],
            problems=problems,
        )

    def diff(self, spec: PatchingSpec, observed: PatchingObserved) -> list[Drift]:
        drifts: list[Drift] = []
        if observed.current_system is None:
            return [Drift(field="target", reason="CurrentSystemUnknown", expected="a NixOS system",
                          actual="none", message="; ".join(observed.problems),
                          remedy=Remedy.alert)]
        wrong = _wrong_system(spec, observed)
        if wrong is not None:
            drifts.append(wrong)
        stale = _stale(spec, observed)
        if stale is not None:
            drifts.append(stale)
        for trig in _pending_rebuilds(spec, observed):
            drifts.append(Drift(
                field="triggers", reason="RebuildRequested", expected="switched after "
                + trig.requested_at.isoformat(), actual="not yet",
                message=f"order {trig.order_id} asked for a rebuild", remedy=Remedy.remediate,
            ))
        if spec.require_reboot_alert and observed.reboot_required:
            drifts.append(Drift(
                field="require_reboot_alert", reason="RebootRequired",
                expected=observed.current_kernel or "", actual=observed.booted_kernel or "",
                message="the running kernel/initrd are not the current system's: reboot in a "
                "maintenance window to finish the update", remedy=Remedy.alert,
            ))
        return drifts

    def plan(
        self, spec: PatchingSpec, observed: PatchingObserved, drifts: list[Drift]
    ) -> list[Action]:
        todo = [d for d in drifts if d.remedy is Remedy.remediate]
        if not todo:
            return []
        pending = _pending_rebuilds(spec, observed)
        if pending:
            trig = max(pending, key=lambda t: t.requested_at)
            target = trig.params.get("target") if isinstance(trig.params.get("target"),
                                                                str) else None
            target = target or spec.target
            if target is None:
                return []
            return [NixosRebuild(target=target, health_timeout=spec.health_timeout,
                                 reason="RebuildRequested", order_id=trig.order_id)]
        if spec.target is None:
            return []
        return [NixosRebuild(target=spec.target, health_timeout=spec.health_timeout,
                             reason=todo[0].reason)]

    def facts(self, spec: PatchingSpec, observed: PatchingObserved) -> dict[str, Any]:
        cur = observed.running_generation()
        return {
            "nixos_revision": observed.nixos_version,
            "nixpkgs_revision": observed.nixpkgs_revision,
            "configuration_revision": observed.configuration_revision,
            "derivation_digest": store_hash(observed.current_system or ""),
            "current_system": observed.current_system,
            "current_generation": cur.number if cur else None,
            "rollback_available": observed.rollback_available,
            "reboot_required": observed.reboot_required,
        }


def _wrong_system(spec: PatchingSpec, o: PatchingObserved) -> Drift | None:
    if spec.target is None:
        return None
    if is_store_path(spec.target):
        if o.current_system == spec.target:
            return None
        return Drift(field="target", reason="WrongSystem", expected=spec.target,
                     actual=o.current_system or "none",
                     message=f"running {o.current_system}, baseline wants {spec.target}")
    rev = pinned_revision(spec.target)
    if rev is None or o.configuration_revision == rev:
        return None  # unpinned flake refs cannot be compared without evaluation (module doc)
    return Drift(field="target", reason="WrongSystem", expected=rev,
                 actual=o.configuration_revision or "unknown",
                 message=f"configurationRevision {o.configuration_revision or 'unset'} is not "
                 f"the revision {rev} pinned by {spec.target}")


def _stale(spec: PatchingSpec, o: PatchingObserved) -> Drift | None:
    if spec.max_generation_age_days is None:
        return None
    cur = o.running_generation()
    if cur is None:
        return None
    age_days = (o.observed_at.timestamp() - cur.created_at) / 86400.0
    if age_days <= spec.max_generation_age_days:
        return None
    # Re-switching the same store path makes no new generation (Nix keeps the
    # last one when it points at the same path), so only a flake target, which
    # may evaluate to a newer system, can remedy staleness by rebuilding.
    can_rebuild = spec.target is not None and not is_store_path(spec.target)
    return Drift(
        field="max_generation_age_days", reason="StaleGeneration",
        expected=f"<= {spec.max_generation_age_days} days", actual=f"{age_days:.1f} days",
        message=f"generation {cur.number} is {age_days:.0f} days old"
        + ("" if can_rebuild else "; publish a newer target in the baseline"),
        remedy=Remedy.remediate if can_rebuild else Remedy.alert,
    )


def _pending_rebuilds(spec: PatchingSpec, o: PatchingObserved) -> list[Trigger]:
    """Rebuild orders not yet satisfied: satisfied once the system was activated after them."""
    return [
        t for t in spec.triggers
        if t.action in REBUILD_ORDER_ACTIONS
        and (o.switched_at is None or o.switched_at < t.requested_at.timestamp())
    ]


def _link_and_mtime(host: Host, path: str) -> tuple[str | None, float | None]:
    try:
        st = host.stat(path)
    except OSError:
        return None, None
    return st.link_target, st.mtime


def _run(host: Host, argv: list[str], problems: list[str]) -> str | None:
    try:
        done = host.run(argv, timeout=TIMEOUT)
    except HostError as e:
        problems.append(f"{argv[0]}: {e}")
        return None
    if done.exit_code != 0:
        problems.append(f"{argv[0]} exited {done.exit_code}: {done.stderr.strip()[:200]}")
        return None
    return done.stdout


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None
