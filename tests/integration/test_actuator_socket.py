"""The real root actuator process, reached over its unix socket by another uid.

The server runs as root inside a private network namespace (so real `nft`
changes only that namespace), loaded with the module's egress table
(examples/egress-table.nft). Clients are forked children that drop to uid
65534 before connecting: what the kernel reports through SO_PEERCRED is
what the server decides on. Also run once under `systemd-socket-activate`,
which hands the listening socket over as fd 3 the way systemd does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.actuator.client import ActuatorClient, ActuatorRefused
from reconciler.actuator.protocol import Refusal
from specs.actions import Action, ApplyNftRuleset, RestartUnit, StartUnit, UpdateEgressSet
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.harness.unprivileged import run_as

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
FW_RULESET = "table inet h6_baseline_fw {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n"


def _window_excluding_now() -> str:
    start = datetime.now(UTC) + timedelta(hours=3)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


class Actuator:
    """An actuator process (root, in `ns`) on a socket a uid-65534 client may reach."""

    def __init__(self, ns: NetNamespace, workdir: Path, allow_user: str | None) -> None:
        self.ns = ns
        self.workdir = workdir
        self.socket = workdir / "actuator.sock"
        self.ruleset = workdir / "baseline.nft"
        self.ruleset.write_text(FW_RULESET)
        self.ruleset_sha = hashlib.sha256(FW_RULESET.encode()).hexdigest()
        baseline = workdir / "baseline.json"
        baseline.write_text(json.dumps({
            "version": 1, "policy_version": "1",
            "firewall": {"ruleset_path": str(self.ruleset), "ruleset_sha256": self.ruleset_sha},
            "services": {"units": [{"name": "dummy-workload.service"}]},
        }))
        self.config = workdir / "config.json"
        self.config.write_text(json.dumps({
            "siteId": "s", "hostId": "h", "deploymentMode": "direct",
            "baselinePath": str(baseline),
            "clientCertFile": "/run/secrets/c", "clientKeyFile": "/run/secrets/k",
            "signingKeyFile": "/run/secrets/s", "caCertFile": "/etc/ca.pem",
            "mcpPublicKeys": ["ab" * 32],
            "stateDirectory": str(workdir / "state"),
            "maintenanceWindow": _window_excluding_now(),
            # "localhost": the actuator's own getaddrinfo (NSS, /etc/hosts) vouches for it
            "mcpUrl": "https://localhost", "allowedHosts": ["localhost", "192.0.2.10",
                                                            "2001:db8::10"],
        }))
        self.allow_user = allow_user
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self, *extra: str) -> list[str]:
        args = [sys.executable, "-m", "reconciler.actuator.server", "--config", str(self.config)]
        args += ["--allow-user", self.allow_user or ""]
        args += ["--state-directory", str(self.workdir / "actuator-state")]
        return [*args, *extra]

    def start(self, wrapper: list[str] | None = None) -> None:
        cmd = wrapper + self.argv() if wrapper else self.argv("--socket", str(self.socket))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *cmd],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        _poll(lambda: self.socket.exists(), what=f"{self.socket} to appear", proc=self.proc)
        # Like the module's socket unit: root:<agent group> 0660.
        os.chown(self.socket, 0, NOBODY)
        os.chmod(self.socket, 0o660)

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        return err.decode(errors="replace")


def _poll(ok: Callable[[], bool], *, what: str, proc: subprocess.Popen[bytes],
          deadline: float = 15.0) -> None:
    import time

    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if ok():
            return
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"actuator exited {proc.returncode} while waiting for {what}: {err}")
        time.sleep(0.02)  # polling a file with a deadline, not waiting for a fixed time
    pytest.fail(f"timed out waiting for {what}")


def as_uid(uid: int, call: Callable[[], Any]) -> dict[str, Any]:
    """Run `call` as `uid`; its outcome (result, refusal or error) as a dict."""

    def outcome() -> dict[str, Any]:
        try:
            return {"ok": True, "result": call().model_dump(mode="json")}
        except ActuatorRefused as e:
            return {"ok": False, "reason": str(e.reason), "message": e.message}
        except Exception as e:
            return {"ok": False, "error": f"{type(e).__name__}: {e}"}

    return run_as(uid, outcome)  # type: ignore[no-any-return]


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    require_root()
    require_tool("nft")
    require_tool("ip")
    with NetNamespace("h6-act") as n:
        n.check(["nft", "-f", str(REPO / "examples" / "egress-table.nft")])
        yield n


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Outside pytest's 0700 tmp tree, so uid 65534 can reach the socket.
    d = Path(tempfile.mkdtemp(prefix="h6-actuator-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def running(ns: NetNamespace, workdir: Path, allow_user: str | None) -> Iterator[Actuator]:
    act = Actuator(ns, workdir, allow_user)
    act.start()
    try:
        yield act
    finally:
        log = act.stop()
        print(log)  # the per-request log lines, shown when a test fails


def _set_elements(ns: NetNamespace, set_name: str) -> list[Any]:
    doc = json.loads(ns.check(["nft", "-j", "list", "set", "inet", "compliance_egress",
                               set_name]).stdout)
    sets = [i["set"] for i in doc["nftables"] if "set" in i]
    elements: list[Any] = sets[0].get("elem", [])
    return elements


def test_unprivileged_agent_uid_updates_the_egress_set_through_root(
    ns: NetNamespace, workdir: Path
) -> None:
    with running(ns, workdir, "nobody") as act:
        client = ActuatorClient(act.socket, timeout=30)
        action = UpdateEgressSet(table="compliance_egress", set_name="allowed_v4",
                                 elements=["127.0.0.1", "192.0.2.10"])
        out = as_uid(NOBODY, lambda: client.execute(action))
    assert out["ok"], out
    assert out["result"]["ok"], out
    elements = json.dumps(_set_elements(ns, "allowed_v4"))
    assert "192.0.2.10" in elements and "127.0.0.1" in elements


def test_wrong_peer_is_refused_and_nothing_changes(ns: NetNamespace, workdir: Path) -> None:
    with running(ns, workdir, "root") as act:  # only root may talk to it
        client = ActuatorClient(act.socket, timeout=30)
        action = UpdateEgressSet(table="compliance_egress", set_name="allowed_v4",
                                 elements=["192.0.2.66"])
        out = as_uid(NOBODY, lambda: client.execute(action))
        log = act.stop()
    assert out == {"ok": False, "reason": "PeerNotAllowed",
                   "message": f"uid {NOBODY} may not use the actuator"}
    assert _set_elements(ns, "allowed_v4") == []
    assert f"peer_uid={NOBODY}" in log and "refused:PeerNotAllowed" in log


def test_policy_refusals_reach_the_client_with_reasons(ns: NetNamespace, workdir: Path) -> None:
    with running(ns, workdir, "nobody") as act:
        client = ActuatorClient(act.socket, timeout=30)
        cases: list[tuple[Action, Refusal]] = [
            (StartUnit(unit="sshd.service"), Refusal.UnitNotInBaseline),
            (RestartUnit(unit="dummy-workload.service", disruptive=True),
             Refusal.OutsideMaintenanceWindow),
            (UpdateEgressSet(table="filter", set_name="allowed_v4", elements=[]),
             Refusal.EgressTableMismatch),
            (ApplyNftRuleset(path=str(act.ruleset), sha256="0" * 64),
             Refusal.RulesetNotInBaseline),
        ]
        for action, reason in cases:
            out = as_uid(NOBODY, functools.partial(client.execute, action))
            assert out["ok"] is False and out["reason"] == reason, (action, out)

        # Raw requests a typed client cannot even build.
        def raw(body: dict[str, Any]) -> dict[str, Any]:
            from reconciler.actuator.protocol import encode_frame, recv_frame

            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(act.socket))
                s.sendall(encode_frame(json.dumps(body).encode()))
                return json.loads(recv_frame(s, 1 << 20))  # type: ignore[no-any-return]

        unknown = raw({"action": {"type": "RunShell", "argv": ["id"]}})
        assert unknown["status"] == "refused" and unknown["reason"] == "UnknownAction"
        bad = raw({"action": {"type": "StartUnit", "unit": "../../etc/passwd"}})
        assert bad["status"] == "refused" and bad["reason"] == "InvalidParams"
    assert _set_elements(ns, "allowed_v4") == []


def test_baseline_ruleset_is_applied_and_a_swapped_file_is_not(
    ns: NetNamespace, workdir: Path
) -> None:
    with running(ns, workdir, "nobody") as act:
        client = ActuatorClient(act.socket, timeout=30)
        action = ApplyNftRuleset(path=str(act.ruleset), sha256=act.ruleset_sha)
        out = as_uid(NOBODY, lambda: client.execute(action))
        assert out["ok"] and out["result"]["ok"], out
        ns.check(["nft", "list", "table", "inet", "h6_baseline_fw"])

        ns.check(["nft", "delete", "table", "inet", "h6_baseline_fw"])
        act.ruleset.write_text(FW_RULESET.replace("accept", "drop"))  # swapped after planning
        out = as_uid(NOBODY, lambda: client.execute(action))
        assert out["ok"] and out["result"]["ok"] is False, out
        assert "sha256" in out["result"]["records"][0]["detail"]
    assert ns.run(["nft", "list", "table", "inet", "h6_baseline_fw"]).exit_code != 0


def test_socket_activation_hands_over_fd_3(ns: NetNamespace, workdir: Path) -> None:
    activate = require_tool("systemd-socket-activate")
    act = Actuator(ns, workdir, "nobody")
    act.start(wrapper=[activate, "-l", str(act.socket)])
    try:
        client = ActuatorClient(act.socket, timeout=30)
        action = UpdateEgressSet(table="compliance_egress", set_name="allowed_v6",
                                 elements=["2001:db8::10"])
        out = as_uid(NOBODY, lambda: client.execute(action))
    finally:
        act.stop()
    assert out["ok"] and out["result"]["ok"], out
    assert "2001:db8::10" in json.dumps(_set_elements(ns, "allowed_v6"))


def test_unprivileged_uid_reads_nft_only_through_the_actuator(
    ns: NetNamespace, workdir: Path
) -> None:
    ns.check(["nft", "add", "element", "inet", "compliance_egress", "allowed_v4",
              "{ 203.0.113.7 }"])
    argv = ["nft", "-j", "list", "set", "inet", "compliance_egress", "allowed_v4"]

    def direct() -> dict[str, Any]:  # uid 65534 on its own: nft needs CAP_NET_ADMIN
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                # (read-only, and in this process's own netns: it only shows nft's refusal)
                done = subprocess.run(["nft", "-j", "list", "ruleset"],
                                      capture_output=True, timeout=30)
                os.write(write_fd, json.dumps({"rc": done.returncode}).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as r:
            data = r.read()
        os.waitpid(pid, 0)
        return json.loads(data)  # type: ignore[no-any-return]

    assert direct()["rc"] != 0

    from reconciler.actuator.client import PrivilegedReadHost
    from reconciler.actuator.host import LocalHost

    with running(ns, workdir, "nobody") as act:
        host = PrivilegedReadHost(LocalHost(), ActuatorClient(act.socket, timeout=30))

        def call() -> Any:
            class Wrapped:  # as_uid wants a pydantic result
                def __init__(self, done: Any) -> None:
                    self.done = done

                def model_dump(self, mode: str) -> Any:
                    return self.done.model_dump(mode=mode)

            return Wrapped(host.run(argv))

        out = as_uid(NOBODY, call)
    assert out["ok"], out
    assert out["result"]["exit_code"] == 0 and "203.0.113.7" in out["result"]["stdout"]
