"""The rebuild transaction against a small in-memory model of a NixOS host.

The model keeps what the transaction reads (profile link, generations,
/run/current-system, failed units) and changes it the way nix-env and
switch-to-configuration do. The real thing runs in
tests/integration/test_patching_rollback.py.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from reconciler.actuator.protocol import ActuatorReply, ActuatorRequest, recv_frame, send_json
from reconciler.actuator.rebuild import RebuildTransactions, execute_rebuild
from reconciler.actuator.result import ActionResult
from reconciler.actuator.transaction import JOURNAL_FILE, Phase, TransactionJournal
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
        self.units: dict[str, int] = {}  # transient unit -> its command's exit code
        self.unit_logs: dict[str, str] = {}  # unit -> what its command printed (the journal)

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
        elif a[0] == "systemd-run":
            # like systemd: the command runs in its own unit, which stays loaded after it exits
            unit = next(x.removeprefix("--unit=") for x in a if x.startswith("--unit="))
            done = self.run(a[a.index("--") + 1:], timeout)
            self.units[unit] = done.exit_code
            self.unit_logs[unit] = done.stderr
        elif a[:3] == ["journalctl", "-o", "cat"]:
            out = self.unit_logs.get(a[-1], "")
        elif a[:3] == ["systemctl", "show", "-p"]:
            code_of = self.units.get(a[-1])
            out = "LoadState=not-found\nActiveState=inactive\n" if code_of is None else (
                f"LoadState=loaded\nActiveState={'active' if code_of == 0 else 'failed'}\n"
                f"SubState={'exited' if code_of == 0 else 'failed'}\nExecMainCode=1\n"
                f"ExecMainStatus={code_of}\n")
        elif a[:2] in (["systemctl", "stop"], ["systemctl", "reset-failed"]):
            self.units.pop(a[-1], None)
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
    assert [r.command[0] for r in res.records] == ["nix-env", "systemd-run", "systemctl"]
    switch = res.records[1].command
    assert switch[switch.index("--") + 1:] == [f"{GOOD}/bin/switch-to-configuration", "switch"]
    assert "--setenv=NIX_REMOTE=daemon" in switch and "--service-type=exec" in switch
    assert not host.units  # the transient units are discarded once journaled
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
    flake = res.records[0].command
    assert flake[flake.index("--") + 1:] == ["nixos-rebuild", "switch", "--flake",
                                             "github:clinic/cfg#rx"]
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


class Killed(BaseException):
    """The actuator process dying at a chosen command (SIGKILL: nothing after it runs)."""


def _dies_at(host: NixModel, prefix: list[str], nth: int = 1) -> None:
    seen = count(1)
    model_run = host.run

    def run(argv: Sequence[str], timeout: float = 30.0) -> Completed:
        if list(argv[: len(prefix)]) == prefix and next(seen) == nth:
            raise Killed
        return model_run(argv, timeout)

    host.run = run  # type: ignore[method-assign]


def _transactions(host: NixModel, journal: Path, delivery: bool = True) -> RebuildTransactions:
    return RebuildTransactions(host, TransactionJournal(journal), max_health_timeout=30,
                               confirm_delivery=delivery, monotonic=clock())


@pytest.mark.parametrize("dies_at", [
    ["systemd-run"],  # journaled, profile set, the switch not yet started
    ["systemctl", "show", "-p"],  # the switch running
    ["systemctl", "is-system-running", "--wait"],  # the health check
])
def test_killed_mid_transaction_is_resumed_and_rolled_back_once(
    tmp_path: Path, dies_at: list[str],
) -> None:
    host = NixModel()
    journal = tmp_path / "state" / "rebuild-transaction.json"
    _dies_at(host, dies_at)
    with pytest.raises(Killed):
        _transactions(host, journal).execute(NixosRebuild(target=BAD))
    assert TransactionJournal(journal).load().phase is not Phase.done  # type: ignore[union-attr]
    host.run = NixModel.run.__get__(host)  # type: ignore[method-assign]
    res = _transactions(host, journal).resume()
    assert res is not None and res.outcome is Outcome.reverted, res
    assert host.current == OLD and host.profile == 7 and not host.units
    tx = TransactionJournal(journal).load()
    assert tx is not None and tx.phase is Phase.done and tx.rollback_activations == 1
    activations = [c for c in host.calls if c[0].endswith("/switch-to-configuration")]
    assert activations.count([f"{OLD}/bin/switch-to-configuration", "switch"]) == 1
    # a second resume finds nothing open; the agent's request gets the pending result once
    assert _transactions(host, journal).resume() is None
    again = _transactions(host, journal).execute(NixosRebuild(target=BAD))
    assert again == res
    assert [c for c in host.calls if c[0].endswith("/switch-to-configuration")] == activations


def test_killed_during_rollback_does_not_roll_back_twice(tmp_path: Path) -> None:
    host = NixModel()
    journal = tmp_path / "rebuild-transaction.json"
    # the first `systemctl show` polls the switch unit, the second the rollback unit's
    # presence, the third waits for the rollback unit: die there
    _dies_at(host, ["systemctl", "show", "-p"], nth=3)
    with pytest.raises(Killed):
        _transactions(host, journal).execute(NixosRebuild(target=BAD))
    host.run = NixModel.run.__get__(host)  # type: ignore[method-assign]
    res = _transactions(host, journal).resume()
    assert res is not None and res.outcome is Outcome.reverted
    old = [f"{OLD}/bin/switch-to-configuration", "switch"]
    assert host.calls.count(old) == 1
    assert TransactionJournal(journal).load().rollback_activations == 1  # type: ignore[union-attr]


def test_delivered_result_is_not_handed_out_again(tmp_path: Path) -> None:
    host = NixModel()
    journal = tmp_path / "rebuild-transaction.json"
    first = _transactions(host, journal).execute(NixosRebuild(target=BAD))
    _transactions(host, journal).acknowledge(first)
    second = _transactions(host, journal).execute(NixosRebuild(target=BAD))
    assert second.outcome is Outcome.reverted and second != first  # a new transaction ran
    assert host.calls.count([f"{OLD}/bin/switch-to-configuration", "switch"]) == 2


def test_unreadable_journal_refuses_a_new_switch(tmp_path: Path) -> None:
    host = NixModel()
    journal = tmp_path / "rebuild-transaction.json"
    journal.write_text("{not json")
    res = _transactions(host, journal).execute(NixosRebuild(target=GOOD))
    assert res.outcome is Outcome.failed and "remove the file" in (res.error or "")
    assert host.calls == [] and host.current == OLD


def _actuator_server(tmp_path: Path, host: NixModel, target: str) -> tuple[Any, Path]:
    """The socket server as the module runs it: journaled rebuilds in its state directory."""
    from reconciler.actuator.server import bind_path_socket, build_server
    from specs.config import parse_config

    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"version": 1, "policy_version": "1",
                                    "patching": {"target": target}}))
    config = parse_config({
        "siteId": "clinic-1", "hostId": "h1", "baselinePath": str(baseline),
        "clientCertFile": "/run/secrets/c", "clientKeyFile": "/run/secrets/k",
        "signingKeyFile": "/run/secrets/s", "caCertFile": "/etc/ca.pem",
        "mcpPublicKeys": ["00" * 32], "deploymentMode": "direct",
        "stateDirectory": str(tmp_path / "agent"), "allowDisruptiveOutsideWindow": True,
        "rebuildHealthCheckTimeout": 30,
    })
    sock = tmp_path / "actuator.sock"
    server = build_server(config, bind_path_socket(sock), allowed_uids=frozenset({os.getuid()}),
                          state_directory=tmp_path / "actuator-state", host=host)
    return server, tmp_path / "actuator-state" / JOURNAL_FILE


def _request(server: Any, target: str, *, hang_up: bool = False) -> ActuatorReply | None:
    """One rebuild request, served on the server's connection thread."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(server.listener.getsockname())
        send_json(s, ActuatorRequest(action=NixosRebuild(target=target)))
        if hang_up:  # the agent restarted mid-request: nobody reads the reply
            s.close()
        assert server.serve_one(5)
        server.join(10)
        return None if hang_up else ActuatorReply.model_validate_json(recv_frame(s, 1 << 22))


def test_result_the_agent_missed_is_handed_over_once(tmp_path: Path) -> None:
    host = NixModel()
    server, journal = _actuator_server(tmp_path, host, BAD)
    old = [f"{OLD}/bin/switch-to-configuration", "switch"]
    assert _request(server, BAD, hang_up=True) is None
    tx = TransactionJournal(journal).load()
    assert tx is not None and tx.phase is Phase.done and not tx.delivered
    # the agent's next request gets that outcome, not a second switch
    reply = _request(server, BAD)
    assert reply is not None and reply.result == tx.result
    assert reply.result.outcome is Outcome.reverted and host.calls.count(old) == 1
    assert TransactionJournal(journal).load().delivered  # type: ignore[union-attr]
    # once delivered, a new request is a new transaction
    again = _request(server, BAD)
    assert again is not None and again.result is not None and again.result != tx.result
    assert host.calls.count(old) == 2
    server.listener.close()


def test_actuator_start_resumes_an_open_transaction(tmp_path: Path) -> None:
    host = NixModel()
    server, journal = _actuator_server(tmp_path, host, BAD)
    _dies_at(host, ["systemctl", "is-system-running", "--wait"])
    with pytest.raises(Killed):
        _transactions(host, journal).execute(NixosRebuild(target=BAD))
    host.run = NixModel.run.__get__(host)  # type: ignore[method-assign]
    server.resume_in_background()
    assert server.in_flight() <= 1
    server.join(10)
    tx = TransactionJournal(journal).load()
    assert tx is not None and tx.phase is Phase.done and tx.rollback_activations == 1
    assert tx.result is not None and tx.result.outcome is Outcome.reverted
    assert host.current == OLD
    server.listener.close()


def test_resumed_health_check_waits_only_until_the_journaled_deadline(tmp_path: Path) -> None:
    host = NixModel()
    journal = tmp_path / "rebuild-transaction.json"
    _dies_at(host, ["systemctl", "is-system-running", "--wait"])
    with pytest.raises(Killed):
        _transactions(host, journal).execute(NixosRebuild(target=GOOD, health_timeout=20))
    tx = TransactionJournal(journal).load()
    assert tx is not None and tx.phase is Phase.checking and tx.deadline is not None
    waits: list[float] = []
    model_run = NixModel.run.__get__(host)

    def run(argv: Sequence[str], timeout: float = 30.0) -> Completed:
        if list(argv) == ["systemctl", "is-system-running", "--wait"]:
            waits.append(timeout)
        return model_run(argv, timeout)

    host.run = run  # type: ignore[method-assign]
    for now, expected in ((tx.deadline - 12, 12.0),  # resumed 8 s in: 12 s are left
                          (tx.deadline + 60, 5.0),  # down past the deadline: one short look
                          (tx.deadline - 7200, 20.0)):  # clock set back: never past the timeout
        resumed = RebuildTransactions(host, TransactionJournal(journal), max_health_timeout=30,
                                      monotonic=clock(), clock=lambda now=now: now)
        TransactionJournal(journal).save(tx)
        assert resumed.resume() is not None
        assert waits[-1] == pytest.approx(expected)
    assert host.current == GOOD


def _flaky_actuator(path: Path, replies: list[ActuatorReply | None]) -> threading.Thread:
    """Serve one connection per entry: None reads the request and hangs up unanswered."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    listener.settimeout(10)

    def serve() -> None:
        with listener:
            for reply in replies:
                conn, _ = listener.accept()
                with conn:
                    recv_frame(conn, 1 << 20)
                    if reply is not None:
                        send_json(conn, reply)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_client_reattaches_to_a_rebuild_when_the_actuator_went_away(tmp_path: Path) -> None:
    from reconciler.actuator.client import ActuatorClient

    action = NixosRebuild(target=BAD)
    result = ActionResult(action=action, records=[], ok=False, outcome=Outcome.reverted,
                          rollback_generation=7, error="rolled back")
    sock = tmp_path / "actuator.sock"
    server = _flaky_actuator(sock, [None, None, ActuatorReply(status="ok", result=result)])
    slept: list[float] = []
    client = ActuatorClient(sock, timeout=10, sleep=slept.append)
    assert client.execute(action) == result
    server.join(10)
    assert len(slept) == 2  # asked three times: the switch restarted the actuator twice


def test_client_does_not_resend_other_actions_nor_past_the_window(tmp_path: Path) -> None:
    from reconciler.actuator.client import ActuatorClient, ActuatorUnavailable, ActuatorWentAway
    from specs.actions import StartUnit

    sock = tmp_path / "a.sock"
    server = _flaky_actuator(sock, [None])
    with pytest.raises(ActuatorWentAway):
        ActuatorClient(sock, timeout=10, sleep=lambda s: None).execute(StartUnit(unit="a.service"))
    server.join(10)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    sock2 = tmp_path / "b.sock"
    server = _flaky_actuator(sock2, [None])  # then nobody listens any more
    client = ActuatorClient(sock2, timeout=10, reattach_window=30, monotonic=lambda: now[0],
                            sleep=sleep)
    with pytest.raises(ActuatorUnavailable):
        client.execute(NixosRebuild(target=BAD))
    server.join(10)
    assert now[0] == pytest.approx(30.0)  # gave up at the window, not before


class ObservedNixModel(NixModel):
    """The model, also answering what the patching controller reads to observe."""

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        a = list(argv)
        if a[0] == "find":
            out = "".join(f"system-{n}-link\t{p}\t0\n" for n, p in self.generations.items())
            return Completed(argv=a, exit_code=0, stdout=out, stderr="", duration=0.01)
        if a == ["nixos-version", "--json"]:
            return Completed(argv=a, exit_code=0, stdout='{"nixosVersion": "26.05"}',
                             stderr="", duration=0.01)
        return super().run(argv, timeout)


def test_a_kept_rebuild_the_agent_never_heard_of_is_collected_by_its_next_reconcile(
    tmp_path: Path,
) -> None:
    """The agent died mid-rebuild; the actuator finished it (kept, healthy). On its
    return the agent sees the target running, so it plans nothing and would never
    ask for that rebuild again: its steps stayed only in the actuator's journal.
    The next patching reconcile collects them (once) into its result."""
    from controllers.patching import PatchingController
    from reconciler.actuator.client import ActuatorClient
    from reconciler.service import new_agent
    from specs.kinds.patching import PatchingSpec
    from tests.unit.conftest import make_config, write_baseline

    host = ObservedNixModel()
    server, journal = _actuator_server(tmp_path, host, GOOD)
    assert _request(server, GOOD, hang_up=True) is None
    tx = TransactionJournal(journal).load()
    assert tx is not None and tx.result is not None and tx.result.ok and not tx.delivered
    assert host.current == GOOD

    agent_dir = tmp_path / "agent-home"
    agent_dir.mkdir()
    write_baseline(agent_dir, {"patching": {"target": GOOD}})
    agent = new_agent(
        make_config(agent_dir), host=host,
        actuator=ActuatorClient(Path(server.listener.getsockname())),
        controllers={"patching": PatchingController()},
    )
    spec = PatchingSpec(target=GOOD)

    served = threading.Thread(target=lambda: (server.serve_one(5), server.join(10)))
    served.start()
    res = agent.reconcile("patching", spec)
    served.join(15)
    assert res.drifts == [] and res.planned == []
    assert res.executed == [tx.result]
    assert res.verdicts == [[]]  # paired with its result: no guard judged it in this pass
    assert [r.step for r in res.action_records] == [r.step for r in tx.result.records]
    assert TransactionJournal(journal).load().delivered  # type: ignore[union-attr]

    # collected once: the next reconcile finds nothing more
    served = threading.Thread(target=lambda: (server.serve_one(5), server.join(10)))
    served.start()
    again = agent.reconcile("patching", spec)
    served.join(15)
    assert again.executed == [] and again.results == []
    server.listener.close()


def _raw(server: Any, body: bytes) -> ActuatorReply:
    from reconciler.actuator.protocol import encode_frame

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(server.listener.getsockname())
        s.sendall(encode_frame(body))
        assert server.serve_one(5)
        server.join(10)
        return ActuatorReply.model_validate_json(recv_frame(s, 1 << 22))


def test_collect_finished_hands_over_nothing_else(tmp_path: Path) -> None:
    from reconciler.actuator.protocol import Refusal

    host = NixModel()
    server, journal = _actuator_server(tmp_path, host, BAD)
    # nothing finished: ok, no result
    empty = _raw(server, b'{"collect_finished": "NixosRebuild"}')
    assert empty.status == "ok" and empty.result is None
    # only the journaled action, and nothing more in the request
    for body in (b'{"collect_finished": "RestartUnit"}',
                 b'{"collect_finished": "NixosRebuild", "target": "/nix/store/x"}'):
        bad = _raw(server, body)
        assert bad.status == "refused" and bad.reason is Refusal.InvalidParams
    # a delivered result is not handed out again
    _request(server, BAD)
    assert TransactionJournal(journal).load().delivered  # type: ignore[union-attr]
    assert _raw(server, b'{"collect_finished": "NixosRebuild"}').result is None
    server.listener.close()


def test_asking_a_hung_actuator_for_finished_results_does_not_hold_the_reconcile(
    tmp_path: Path,
) -> None:
    """The patching reconcile asks first; an actuator that accepts and never answers
    must cost seconds (the request is a journal read), not the 30 minutes a
    rebuild request may wait."""
    from reconciler.actuator.client import ActuatorClient

    path = tmp_path / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    got: list[object] = []
    asker = threading.Thread(
        target=lambda: got.append(ActuatorClient(path).collect_finished("NixosRebuild")),
        daemon=True)
    asker.start()
    asker.join(60)  # a bound for the test only; the old code waited 1800 s here
    listener.close()
    assert not asker.is_alive(), "collect_finished waited on a hung actuator"
    assert got == [None]
