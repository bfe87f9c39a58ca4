"""The rebuild transaction against a small in-memory model of a NixOS host.

The model keeps what the transaction reads (profile link, generations,
/run/current-system, failed units) and changes it the way nix-env and
switch-to-configuration do. The real thing runs in
tests/integration/test_patching_rollback.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import count

from reconciler.actuator.rebuild import execute_rebuild
from reconciler.actuator.result import ActionResult
from specs.actions import NixosRebuild
from specs.host import CommandTimeout, Completed, FileStat
from specs.status import Outcome

PROFILE = "/nix/var/nix/profiles/system"
GOOD = "/nix/store/" + "1" * 32 + "-nixos-system-good"
BAD = "/nix/store/" + "2" * 32 + "-nixos-system-bad"
EXIT4 = "/nix/store/" + "3" * 32 + "-nixos-system-exit4"
HANG = "/nix/store/" + "4" * 32 + "-nixos-system-hang"
OLD = "/nix/store/" + "0" * 32 + "-nixos-system-old"


class NixModel:
    def __init__(self) -> None:
        self.generations = {7: OLD}
        self.profile = 7
        self.current = OLD
        self.failed: set[str] = set()
        self.preexisting_failed: set[str] = set()
        self.calls: list[list[str]] = []
        self.flake_builds = BAD  # what `nixos-rebuild switch --flake` activates

    # behaviour of each system when activated: (exit code, failed units after)
    BEHAVIOUR = {
        OLD: (0, set()),
        GOOD: (0, set()),
        BAD: (0, {"broken.service"}),
        EXIT4: (4, {"exit4.service"}),
        HANG: (0, set()),
    }

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        a = list(argv)
        self.calls.append(a)
        out, code = "", 0
        if a[:3] == ["nix-env", "-p", PROFILE] and a[3] == "--set":
            n = max(self.generations) + 1
            self.generations[n] = a[4]
            self.profile = n
        elif a[:3] == ["nix-env", "-p", PROFILE] and a[3] == "--switch-generation":
            self.profile = int(a[4])
        elif a[0].endswith("/bin/switch-to-configuration"):
            code = self._activate(a[0].removesuffix("/bin/switch-to-configuration"))
        elif a[:3] == ["nixos-rebuild", "switch", "--flake"]:
            n = max(self.generations) + 1
            self.generations[n] = self.flake_builds
            self.profile = n
            code = 1 if self._activate(self.flake_builds) else 0
        elif a == ["systemctl", "is-system-running", "--wait"]:
            if self.current == HANG:
                raise CommandTimeout(a, timeout)
            out = "degraded\n" if self.failed else "running\n"
            code = 1 if self.failed else 0
        elif a == ["systemctl", "is-system-running"]:
            out = "degraded\n" if self.failed else "running\n"
        elif a[:2] == ["systemctl", "list-units"]:
            out = "".join(f"{u} loaded failed failed x\n" for u in sorted(self.failed))
        else:
            raise AssertionError(f"unexpected command {a}")
        return Completed(argv=a, exit_code=code, stdout=out, stderr="", duration=0.01)

    def _activate(self, system: str) -> int:
        code, failed = self.BEHAVIOUR[system]
        self.current = system
        self.failed = set(self.preexisting_failed) | failed
        return code

    def read_text(self, path: str) -> str:
        raise FileNotFoundError(path)

    def stat(self, path: str) -> FileStat:
        if path == PROFILE:
            target = f"system-{self.profile}-link"
        elif path == "/run/current-system":
            target = self.current
        elif path.startswith(PROFILE + "-") and path.endswith("-link"):
            n = int(path[len(PROFILE) + 1: -len("-link")])
            if n not in self.generations:
                raise FileNotFoundError(path)
            target = self.generations[n]
        else:
            raise FileNotFoundError(path)
        return FileStat(mode=0o120777, uid=0, gid=0, size=1, mtime=0.0, is_dir=False,
                        is_symlink=True, link_target=target)


def clock() -> Callable[[], float]:
    c = count()
    return lambda: float(next(c))


def rebuild(host: NixModel, target: str, step_start: int = 1) -> ActionResult:
    return execute_rebuild(host, NixosRebuild(target=target), health_timeout=30,
                           step_start=step_start, monotonic=clock())


def test_good_generation_switches() -> None:
    host = NixModel()
    res = rebuild(host, GOOD, step_start=5)
    assert res.ok and res.outcome is None and res.error is None
    assert host.current == GOOD and host.profile == 8
    assert [r.step for r in res.records] == [5, 6, 7]
    assert [r.command[0] for r in res.records] == [
        "nix-env", f"{GOOD}/bin/switch-to-configuration", "systemctl"]
    assert all(r.result == "ok" for r in res.records)


def test_degraded_after_switch_rolls_back() -> None:
    host = NixModel()
    res = rebuild(host, BAD)
    assert not res.ok
    assert res.outcome is Outcome.reverted
    assert res.rollback_generation == 7
    assert host.current == OLD and host.profile == 7 and not host.failed
    health = [r for r in res.records if r.action == "HealthCheck"]
    assert [h.result for h in health] == ["failed", "ok"]
    assert "broken.service" in health[0].detail
    assert ["nix-env", "-p", PROFILE, "--switch-generation", "7"] in host.calls
    assert [f"{OLD}/bin/switch-to-configuration", "switch"] in host.calls
    assert "degraded" in (res.error or "")


def test_switch_exit_4_rolls_back_without_waiting_for_health() -> None:
    host = NixModel()
    res = rebuild(host, EXIT4)
    assert res.outcome is Outcome.reverted and res.rollback_generation == 7
    assert host.current == OLD
    switch = res.records[1]
    assert switch.exit_code == 4 and switch.result == "failed"
    assert "exit code 4" in (res.error or "")


def test_health_timeout_rolls_back() -> None:
    host = NixModel()
    res = rebuild(host, HANG)
    assert res.outcome is Outcome.reverted
    assert any(r.result == "timeout" for r in res.records)
    assert host.current == OLD


def test_rollback_that_stays_unhealthy_is_failed() -> None:
    host = NixModel()
    NixModel.BEHAVIOUR = {**NixModel.BEHAVIOUR, OLD: (0, {"old-broken.service"})}
    try:
        res = rebuild(host, BAD)
    finally:
        NixModel.BEHAVIOUR = {**NixModel.BEHAVIOUR, OLD: (0, set())}
    assert res.outcome is Outcome.failed
    assert res.rollback_generation == 7
    assert "did not recover" in (res.error or "")


def test_preexisting_failed_unit_does_not_force_rollback() -> None:
    host = NixModel()
    host.preexisting_failed = {"unrelated.service"}
    host.failed = {"unrelated.service"}
    res = rebuild(host, GOOD)
    assert res.ok, res.error
    assert "new failed units: none" in res.records[-1].detail
    res = rebuild(host, BAD)
    assert res.outcome is Outcome.reverted


def test_flake_failure_after_activation_rolls_back() -> None:
    host = NixModel()
    res = rebuild(host, "github:clinic/cfg#rx")
    assert res.records[0].command == ["nixos-rebuild", "switch", "--flake", "github:clinic/cfg#rx"]
    assert res.outcome is Outcome.reverted and host.current == OLD and host.profile == 7


def test_flake_build_failure_changes_nothing() -> None:
    host = NixModel()

    def failing(argv: Sequence[str], timeout: float = 30.0) -> Completed:
        if argv[0] == "nixos-rebuild":
            host.calls.append(list(argv))
            return Completed(argv=list(argv), exit_code=1, stdout="",
                             stderr="error: attribute 'rx' missing", duration=0.5)
        return NixModel.run(host, argv, timeout)

    host.run = failing  # type: ignore[method-assign]
    res = rebuild(host, "github:clinic/cfg#rx")
    assert res.outcome is Outcome.failed
    assert "not changed" in (res.error or "")
    assert "attribute 'rx' missing" in res.records[0].detail
    assert not any(c[:1] == ["nix-env"] for c in host.calls)


def test_no_previous_generation_cannot_roll_back() -> None:
    host = NixModel()
    host.generations = {}
    host.profile = 0
    orig_stat = host.stat

    def stat(path: str) -> FileStat:
        if path == PROFILE and host.profile == 0:
            raise FileNotFoundError(path)
        return orig_stat(path)

    host.stat = stat  # type: ignore[method-assign]
    host.generations = {0: OLD}
    res = rebuild(host, BAD)
    assert res.outcome is Outcome.failed
    assert "cannot roll back" in (res.error or "")
