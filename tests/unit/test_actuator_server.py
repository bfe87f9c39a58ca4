"""The root actuator over a real unix socket, with a recording host instead of root tools.

Every refusal must come back to the client with a CamelCase reason and must
leave the host untouched; an admitted action must really reach the host.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from reconciler.actuator.client import (
    ActuatorClient,
    ActuatorRefused,
    ActuatorUnavailable,
)
from reconciler.actuator.devices import BlockDevices
from reconciler.actuator.local import LocalActuator
from reconciler.actuator.protocol import (
    MAX_REQUEST_BYTES,
    ActuatorReply,
    Refusal,
    encode_frame,
    recv_frame,
)
from reconciler.actuator.server import (
    ActuatorServer,
    bind_path_socket,
    build_server,
    listen_fd_socket,
)
from specs.actions import (
    ApplyNftRuleset,
    NixosRebuild,
    RestartUnit,
    StartUnit,
    UpdateEgressSet,
)
from specs.config import AgentConfig, parse_config
from specs.host import Completed, FileStat

RULESET = "table inet filter { chain input { type filter hook input priority 0; } }\n"
IN_WINDOW = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
OUT_OF_WINDOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class RecordingHost:
    """Pretends every command succeeds and remembers it."""

    def __init__(self) -> None:
        self.ran: list[list[str]] = []
        self.stdin: list[bytes | None] = []

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        self.ran.append(list(argv))
        self.stdin.append(stdin)
        return Completed(argv=list(argv), exit_code=0, stdout="", stderr="", duration=0.01)

    def read_text(self, path: str) -> str:
        return Path(path).read_text()

    def stat(self, path: str) -> FileStat:
        raise FileNotFoundError(path)


class FakeResolver:
    """The actuator's DNS view, fixed (the real one is getaddrinfo)."""

    def __init__(self, answers: dict[str, set[str]]) -> None:
        self.answers = answers

    def addresses(self, names: list[str], version: int) -> set[str]:
        import ipaddress

        found = set().union(*(self.answers.get(n, set()) for n in names))
        return {a for a in found if ipaddress.ip_address(a).version == version}


class NamedDevices(BlockDevices):
    """Block devices as if every path the encryption spec names were one (no /dev here)."""

    def allowed(self, spec: Any) -> set[int]:
        return set(range(len(spec.devices))) if spec is not None else set()

    def canonical(self, path: str, allowed: set[int]) -> str | None:
        return path if path in self.names and self.names.index(path) in allowed else None

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ruleset = tmp / "ruleset.nft"
        self.ruleset.write_text(RULESET)
        self.sha = hashlib.sha256(RULESET.encode()).hexdigest()
        self.baseline = tmp / "baseline.json"
        self.write_baseline(["sshd.service", "clamav-daemon.service"])
        self.signing_key = SigningKey.generate()
        self.host = RecordingHost()
        self.now = OUT_OF_WINDOW
        self.socket = tmp / "actuator.sock"
        self.resolver = FakeResolver({"mcp.local": {"192.0.2.10", "2001:db8::10"}})
        self.devices = BlockDevices()

    def write_baseline(self, units: list[str], encryption: list[str] | None = None) -> None:
        body: dict[str, Any] = {
            "version": 1,
            "policy_version": "1.0",
            "firewall": {"ruleset_path": str(self.ruleset), "ruleset_sha256": self.sha},
            "services": {"units": [{"name": u} for u in units]},
        }
        if encryption is not None:
            body["encryption"] = {"devices": encryption}
        self.baseline.write_text(json.dumps(body))

    def config(self, **over: Any) -> AgentConfig:
        data: dict[str, Any] = {
            "siteId": "clinic-1",
            "hostId": "h1",
            "baselinePath": str(self.baseline),
            "clientCertFile": "/run/secrets/cert.pem",
            "clientKeyFile": "/run/secrets/key.pem",
            "signingKeyFile": "/run/secrets/signing.key",
            "caCertFile": "/etc/ca.pem",
            "mcpPublicKeys": [self.signing_key.verify_key.encode().hex()],
            "deploymentMode": "direct",
            "stateDirectory": str(self.tmp / "state"),
        }
        data.update(over)
        return parse_config(data)

    def server(self, allowed_uids: frozenset[int] | None = None, **over: Any) -> ActuatorServer:
        return build_server(
            self.config(**over),
            bind_path_socket(self.socket),
            allowed_uids=frozenset({os.getuid()}) if allowed_uids is None else allowed_uids,
            state_directory=self.tmp / "actuator-state",
            host=self.host,
            actuator=LocalActuator(self.host),
            resolver=self.resolver,
            devices=self.devices,
            clock=lambda: self.now,
        )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield Env(tmp_path)


def serve(server: ActuatorServer, call: Callable[[], Any]) -> Any:
    """Serve exactly one connection in a thread while `call` talks to it."""
    t = threading.Thread(target=server.serve_one, args=(5.0,), daemon=True)
    t.start()
    try:
        return call()
    finally:
        t.join(timeout=10)
        server.listener.close()
        assert not t.is_alive()


def refused(server: ActuatorServer, client: ActuatorClient, action: Any) -> ActuatorRefused:
    def call() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            client.execute(action)
        return info.value

    return serve(server, call)  # type: ignore[no-any-return]


def raw_request(path: Path, body: bytes) -> ActuatorReply:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(encode_frame(body))
        return ActuatorReply.model_validate_json(recv_frame(s, 1 << 20))


def test_allowed_unit_action_runs_on_the_host(env: Env) -> None:
    client = ActuatorClient(env.socket)
    action = StartUnit(unit="sshd.service")
    result = serve(env.server(), lambda: client.execute(action, 3))
    assert result.ok
    assert env.host.ran == action.commands()
    assert any(argv[:2] == ["systemctl", "start"] for argv in env.host.ran)
    assert [r.step for r in result.records] == list(range(3, 3 + len(env.host.ran)))


def test_unknown_action_type_is_refused(env: Env) -> None:
    server = env.server()
    body = json.dumps({"action": {"type": "RunShell", "argv": ["sh", "-c", "id"]}}).encode()
    reply = serve(server, lambda: raw_request(env.socket, body))
    assert reply.status == "refused" and reply.reason is Refusal.UnknownAction
    assert "RunShell" in reply.message
    assert env.host.ran == []


@pytest.mark.parametrize(
    "action",
    [
        {"type": "StartUnit", "unit": "--root=/ sshd.service"},
        {"type": "StartUnit"},
        {"type": "StartUnit", "unit": "sshd.service", "argv": ["rm"]},
        {"type": "ApplyNftRuleset", "path": "/x", "sha256": "zz"},
        {"type": "UpdateEgressSet", "table": "compliance_egress", "set_name": "allowed_v4",
         "elements": ["1.2.3.4 }; flush ruleset; add element inet x y { 5.6.7.8"]},
    ],
)
def test_bad_params_are_refused(env: Env, action: dict[str, Any]) -> None:
    server = env.server()
    reply = serve(server, lambda: raw_request(env.socket, json.dumps({"action": action}).encode()))
    assert reply.status == "refused" and reply.reason is Refusal.InvalidParams
    assert env.host.ran == []


def test_malformed_and_oversized_requests_are_refused(env: Env) -> None:
    reply = serve(env.server(), lambda: raw_request(env.socket, b"{not json"))
    assert reply.reason is Refusal.MalformedRequest

    def oversized() -> ActuatorReply:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(env.socket))
            s.sendall((MAX_REQUEST_BYTES + 1).to_bytes(4, "big"))  # header only
            return ActuatorReply.model_validate_json(recv_frame(s, 1 << 20))

    reply = serve(env.server(), oversized)
    assert reply.reason is Refusal.RequestTooLarge
    assert env.host.ran == []


def test_peer_not_allowed_is_refused_without_running(env: Env) -> None:
    server = env.server(allowed_uids=frozenset({os.getuid() + 4242}))
    err = refused(server, ActuatorClient(env.socket), StartUnit(unit="sshd.service"))
    assert err.reason is Refusal.PeerNotAllowed
    assert str(os.getuid()) in err.message
    assert env.host.ran == []


def test_unit_not_in_baseline_is_refused(env: Env) -> None:
    err = refused(env.server(), ActuatorClient(env.socket), StartUnit(unit="evil.service"))
    assert err.reason is Refusal.UnitNotInBaseline
    assert "evil.service" in err.message


def test_disruptive_action_outside_window_is_refused(env: Env) -> None:
    action = RestartUnit(unit="sshd.service", disruptive=True)
    err = refused(env.server(), ActuatorClient(env.socket), action)
    assert err.reason is Refusal.OutsideMaintenanceWindow
    assert "02:00-04:00" in err.message
    assert env.host.ran == []

    env.now = IN_WINDOW
    result = serve(env.server(), lambda: ActuatorClient(env.socket).execute(action))
    assert result.ok and env.host.ran[-1] == ["systemctl", "restart", "sshd.service"]


def test_allow_disruptive_outside_window(env: Env) -> None:
    action = RestartUnit(unit="sshd.service", disruptive=True)
    server = env.server(allowDisruptiveOutsideWindow=True)
    assert serve(server, lambda: ActuatorClient(env.socket).execute(action)).ok


def test_ruleset_must_match_the_baseline_file_and_hash(env: Env) -> None:
    wrong = ApplyNftRuleset(path=str(env.ruleset), sha256="0" * 64)
    err = refused(env.server(), ActuatorClient(env.socket), wrong)
    assert err.reason is Refusal.RulesetNotInBaseline

    right = ApplyNftRuleset(path=str(env.ruleset), sha256=env.sha)
    result = serve(env.server(), lambda: ActuatorClient(env.socket).execute(right))
    # nft reads the bytes that were hashed from its stdin, never the agent-visible path
    assert result.ok and env.host.ran == [["nft", "-f", "-"]]
    assert env.host.stdin == [RULESET.encode()]


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"table": "filter"}, Refusal.EgressTableMismatch),
        ({"family": "ip"}, Refusal.EgressTableMismatch),
        ({"set_name": "other"}, Refusal.EgressTableMismatch),
        ({"elements": ["2001:db8::1"]}, Refusal.InvalidParams),  # v6 in the v4 set
        ({"elements": ["192.0.2.1-2001:db8::1"]}, Refusal.InvalidParams),
        ({"elements": ["192.0.2.99"]}, Refusal.EgressElementNotAllowed),
    ],
)
def test_egress_updates_are_confined_to_the_egress_table(
    env: Env, over: dict[str, Any], reason: Refusal
) -> None:
    fields: dict[str, Any] = {
        "table": "compliance_egress", "set_name": "allowed_v4", "elements": ["192.0.2.10"],
    }
    fields.update(over)
    server = env.server()
    body = json.dumps({"action": {"type": "UpdateEgressSet", **fields}}).encode()
    err = serve(server, lambda: raw_request(env.socket, body))
    assert err.reason is reason
    assert env.host.ran == []


def test_egress_update_runs_one_nft_transaction(env: Env) -> None:
    action = UpdateEgressSet(
        table="compliance_egress", set_name="allowed_v6", elements=["2001:db8::10"]
    )
    assert serve(env.server(), lambda: ActuatorClient(env.socket).execute(action)).ok
    assert len(env.host.ran) == 1 and env.host.ran[0][0] == "nft"


def test_rebuild_target_must_be_named_by_the_baseline(env: Env) -> None:
    env.now = IN_WINDOW
    action = NixosRebuild(target="/nix/store/" + "a" * 32 + "-nixos-system-evil")
    err = refused(env.server(), ActuatorClient(env.socket), action)
    assert err.reason is Refusal.RebuildTargetNotInBaseline


def test_rebuild_to_the_baseline_target_is_admitted_in_the_window(env: Env) -> None:
    from reconciler.actuator.policy import ActuatorPolicy
    from specs.baseline import parse_baseline
    from specs.window import MaintenanceWindow

    target = "/nix/store/" + "a" * 32 + "-nixos-system-h1-24.11"
    baseline = parse_baseline(
        {"version": 1, "policy_version": "1", "patching": {"target": target}}
    )
    policy = ActuatorPolicy(
        egress_table="compliance_egress", allowed_hosts=["mcp.local"],
        window=MaintenanceWindow.parse("02:00-04:00"),
        allow_disruptive_outside_window=False, clock=lambda: IN_WINDOW,
        resolver=env.resolver, devices=env.devices,
    )
    assert policy.check(NixosRebuild(target=target), baseline) is None
    other = NixosRebuild(target=target.replace("h1", "h2"))
    verdict = policy.check(other, baseline)
    assert verdict is not None and verdict.reason is Refusal.RebuildTargetNotInBaseline


def test_no_baseline_refuses_everything(env: Env) -> None:
    env.baseline.unlink()
    err = refused(env.server(), ActuatorClient(env.socket), StartUnit(unit="sshd.service"))
    assert err.reason is Refusal.BaselineUnavailable
    assert "baselinePath" in err.message


def _persist_remote_baseline(env: Env, envelope: dict[str, Any]) -> None:
    (env.tmp / "state").mkdir(exist_ok=True)
    with sqlite3.connect(env.tmp / "state" / "state.db") as db:
        db.execute(
            "CREATE TABLE remote_baseline (id INTEGER PRIMARY KEY, version INTEGER, "
            "envelope BLOB, etag TEXT, fetched_at REAL, rejected_etag TEXT, last_rejection TEXT)"
        )
        db.execute(
            "INSERT INTO remote_baseline (id, version, envelope, fetched_at) VALUES (1, 2, ?, 0)",
            (json.dumps(envelope).encode(),),
        )


def _signed_baseline(key: SigningKey, units: list[str]) -> dict[str, Any]:
    from reconciler.trust.dsse import Signer
    from specs.baseline import BASELINE_PAYLOAD_TYPE

    payload = json.dumps({
        "version": 2, "policy_version": "1.1",
        "services": {"units": [{"name": u} for u in units]},
    }).encode()
    return Signer(key).sign_envelope(payload, BASELINE_PAYLOAD_TYPE)


def test_client_reports_a_missing_socket_as_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ActuatorUnavailable) as info:
        ActuatorClient(tmp_path / "nope.sock").execute(StartUnit(unit="sshd.service"))
    assert "compliance-agent-actuator.socket" in str(info.value)


def test_listen_fds_meant_for_another_process_are_ignored() -> None:
    assert listen_fd_socket({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}) is None
    assert listen_fd_socket({}) is None


# --- privileged reads ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["nft", "-j", "list", "set", "inet", "compliance_egress", "allowed_v4"],
        ["nft", "-j", "list", "ruleset"],
        ["cryptsetup", "luksDump", "/dev/nvme0n1p2"],
        ["blkid", "-p", "-o", "export", "/dev/mapper/vg-root"],
    ],
)
def test_allowlisted_privileged_read_runs_and_keeps_the_requested_argv(
    env: Env, argv: list[str]
) -> None:
    env.write_baseline(["sshd.service"], encryption=["/dev/nvme0n1p2", "/dev/mapper/vg-root"])
    env.devices = NamedDevices(["/dev/nvme0n1p2", "/dev/mapper/vg-root"])
    done = serve(env.server(), lambda: ActuatorClient(env.socket).observe(argv))
    assert done.exit_code == 0 and done.argv == argv
    assert env.host.ran == [argv]


@pytest.mark.parametrize(
    "argv",
    [
        ["cat", "/etc/shadow"],
        ["nft", "-j", "list", "set", "inet", "other_table", "allowed_v4"],
        ["nft", "flush", "ruleset"],
        ["nft", "-j", "list", "ruleset", "extra"],
        ["cryptsetup", "luksDump", "/dev/../etc/shadow"],
        ["cryptsetup", "luksDump", "/etc/shadow"],
        ["cryptsetup", "luksHeaderBackup", "/dev/sda2"],
        ["cryptsetup", "luksDump", "/dev/sdb"],  # a device the encryption spec does not name
        ["cryptsetup", "luksDump", "/dev/sda2\n"],
        ["blkid", "-p", "-o", "export", "-c", "/dev/sda"],
    ],
)
def test_other_reads_are_refused(env: Env, argv: list[str]) -> None:
    env.write_baseline(["sshd.service"], encryption=["/dev/sda2"])
    env.devices = NamedDevices(["/dev/sda2"])
    def call() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            ActuatorClient(env.socket).observe(argv)
        return info.value

    err = serve(env.server(), call)
    assert err.reason is Refusal.ObservationNotAllowed
    assert env.host.ran == []


def test_ruleset_sandbox_runs_with_the_actuators_interpreter(env: Env) -> None:
    import sys

    argv = ["/tmp/evil-python", "-m", "reconciler.actuator.nft_sandbox", "--sha256", env.sha,
            str(env.ruleset)]
    done = serve(env.server(), lambda: ActuatorClient(env.socket).observe(argv))
    assert done.argv == argv
    from reconciler.actuator import nft_sandbox

    sandbox = str(Path(nft_sandbox.__file__).resolve())
    assert env.host.ran == [[sys.executable, "-I", sandbox, "--sha256", env.sha,
                             str(env.ruleset)]]

    wrong = [*argv[:4], "0" * 64, argv[5]]

    def call() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            ActuatorClient(env.socket).observe(wrong)
        return info.value

    assert serve(env.server(), call).reason is Refusal.ObservationNotAllowed


def test_privileged_read_host_routes_only_privileged_reads(env: Env) -> None:
    from reconciler.actuator.client import PrivilegedReadHost

    local = RecordingHost()
    host = PrivilegedReadHost(local, ActuatorClient(env.socket))
    local_done = host.run(["systemctl", "show", "sshd.service"])
    assert local_done.exit_code == 0 and local.ran == [["systemctl", "show", "sshd.service"]]

    argv = ["nft", "-j", "list", "ruleset"]
    done = serve(env.server(), lambda: host.run(argv))
    assert done.exit_code == 0 and env.host.ran == [argv] and local.ran[-1] != argv

    refused_argv = ["nft", "-j", "list", "table", "ip", "nat"]
    refused_done = serve(env.server(), lambda: host.run(refused_argv))
    assert refused_done.exit_code == 126 and "ObservationNotAllowed" in refused_done.stderr


def test_privileged_read_host_reports_a_missing_actuator_as_host_error(tmp_path: Path) -> None:
    from reconciler.actuator.client import PrivilegedReadHost
    from specs.host import HostError

    host = PrivilegedReadHost(RecordingHost(), ActuatorClient(tmp_path / "absent.sock"))
    with pytest.raises(HostError):
        host.run(["nft", "-j", "list", "ruleset"])


def test_errors_as_results_turn_refusals_into_recorded_failures(env: Env) -> None:
    from specs.status import Outcome

    client = ActuatorClient(env.socket, errors_as_results=True)
    action = RestartUnit(unit="sshd.service", disruptive=True)
    result = serve(env.server(), lambda: client.execute(action, 5))
    assert not result.ok and result.outcome is Outcome.deferred
    assert result.records[0].result == "refused" and result.records[0].step == 5
    assert "OutsideMaintenanceWindow" in (result.error or "")

    other = serve(env.server(), lambda: client.execute(StartUnit(unit="evil.service")))
    assert not other.ok and other.outcome is None and "UnitNotInBaseline" in (other.error or "")

    gone = ActuatorClient(env.tmp / "absent.sock", errors_as_results=True)
    down = gone.execute(StartUnit(unit="sshd.service"))
    assert not down.ok and down.records[0].result == "failed" and "unavailable" in (down.error or "")


def test_ruleset_sandbox_as_the_firewall_controller_starts_it(env: Env) -> None:
    """The controller runs the sandbox as a script (`python -I .../nft_sandbox.py`):
    that read must go to the actuator, and the actuator runs its own copy."""
    import sys

    from reconciler.actuator import nft_sandbox
    from reconciler.actuator.client import needs_privilege

    argv = [*nft_sandbox.script_argv(), "--sha256", env.sha, str(env.ruleset)]
    assert needs_privilege(argv)
    done = serve(env.server(), lambda: ActuatorClient(env.socket).observe(argv))
    assert done.exit_code == 0 and done.argv == argv
    sandbox = str(Path(nft_sandbox.__file__).resolve())
    assert env.host.ran == [[sys.executable, "-I", sandbox, "--sha256", env.sha,
                             str(env.ruleset)]]
    # another script that merely ends in the same arguments is not the sandbox
    evil = ["/tmp/python", "-I", "/tmp/evil.py", "--sha256", env.sha, str(env.ruleset)]
    assert not needs_privilege(evil)
