"""A compromised agent against the real root actuator (docs/threat-model.md, position 3).

The actuator runs as root, socket-activated the way systemd does it
(`systemd-socket-activate` hands it the listening socket as fd 3), inside a
private network namespace loaded with the module's egress table, so the
ruleset it could damage is a real one. Its socket sits in a root-owned
directory, like the module's. Every attacker is a forked child that dropped
to uid 65534 (the "agent" here): what SO_PEERCRED reports is what the
actuator decides on. Every attack must be refused with a stable reason, be
logged, and leave the host as it was: the nft ruleset text, the actuator's
high-water mark, and (for reads) nothing run on a file the attacker chose.

`test_hostile_agent_under_real_systemd` repeats the attacks that touch units
and generations under a real systemd 252 (nspawn), with the module's own
socket and service units (socket activation by systemd, the root-owned socket
directory from the module's tmpfiles rule, its StateDirectory) and the agent's
exact sandbox, and checks real unit invocation IDs and profile links.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.harness.unprivileged import NOBODY, run_as

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

RULESET = "table inet h_fw {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n"
OLD_TARGET = "/nix/store/" + "a" * 32 + "-nixos-system-h1-24.05"
TARGET = "/nix/store/" + "b" * 32 + "-nixos-system-h1-24.11"
JOURNALD = "h-hostile-journald.service"


def _window_excluding_now() -> str:
    start = datetime.now(UTC) + timedelta(hours=3)
    return f"{start:%H:%M}-{start + timedelta(hours=1):%H:%M}"


def _sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout.strip()


class Rig:
    """The actuator (root, in `ns`, socket-activated) and what it must protect."""

    def __init__(self, ns: NetNamespace, work: Path, luks_device: str) -> None:
        self.ns = ns
        self.work = work
        self.key = SigningKey.generate()
        run_dir = work / "run"  # like /run/compliance-agent-actuator: root:agent 0750
        run_dir.mkdir(mode=0o750)
        os.chown(run_dir, 0, NOBODY)
        self.socket = run_dir / "actuator.sock"
        self.state = work / "actuator-state"
        self.ruleset = work / "baseline.nft"
        self.ruleset.write_text(RULESET)
        self.ruleset_sha = hashlib.sha256(RULESET.encode()).hexdigest()
        self.luks_device = luks_device
        self.baseline = work / "baseline.json"
        self.baseline.write_text(json.dumps({
            "version": 3, "policy_version": "3",
            "firewall": {"ruleset_path": str(self.ruleset), "ruleset_sha256": self.ruleset_sha},
            "services": {"units": [{"name": "dummy-workload.service"}]},
            # The journal unit is made up: should the actuator ever admit the restart,
            # this machine's own journald is not what it hits (the container test
            # in this file attacks the real one).
            "logging": {"journald_unit": JOURNALD},
            "patching": {"target": TARGET},
            "encryption": {"devices": [luks_device]},
        }))
        self.config = work / "config.json"
        self.config.write_text(json.dumps({
            "siteId": "clinic-1", "hostId": "h1", "deploymentMode": "direct",
            "baselinePath": str(self.baseline),
            "clientCertFile": "/run/secrets/c", "clientKeyFile": "/run/secrets/k",
            "signingKeyFile": "/run/secrets/s", "caCertFile": "/etc/ca.pem",
            "mcpPublicKeys": [self.key.verify_key.encode().hex()],
            "stateDirectory": str(work / "agent-state"),
            "maintenanceWindow": _window_excluding_now(),
            "mcpUrl": "https://localhost", "allowedHosts": ["localhost", "192.0.2.10"],
        }))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        activate = require_tool("systemd-socket-activate")
        # `compliance-agent actuator`, the module's ExecStart, via the CLI's entry point
        argv = [activate, "-l", str(self.socket), sys.executable, "-m",
                "reconciler.cli", "actuator", "--config", str(self.config),
                "--allow-user", "nobody", "--state-directory", str(self.state)]
        # The log goes to a file: a pipe nobody reads would fill up and block the
        # actuator's logging (and with it the request) after ~64 KiB of log lines.
        self.log = open(self.work / "actuator.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns.name, *argv], cwd=REPO,
            stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 15
        while not self.socket.exists():
            assert self.proc.poll() is None, (self.work / "actuator.log").read_text()
            assert time.monotonic() < deadline, "socket did not appear"
            time.sleep(0.02)  # polling for a file, with a deadline
        os.chown(self.socket, 0, NOBODY)  # like SocketUser=root SocketGroup=agent
        os.chmod(self.socket, 0o660)

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None
        self.log.close()
        return (self.work / "actuator.log").read_text(errors="replace")

    def host_state(self) -> dict[str, Any]:
        """Everything an attack must not change."""
        mark = self.state / "baseline-high-water-mark"
        return {
            "ruleset": self.ns.check(["nft", "list", "ruleset"]).stdout,
            "high_water_mark": mark.read_text() if mark.exists() else None,
        }

    def signed(self, version: int, *, key: SigningKey | None = None, **over: Any) -> bytes:
        from reconciler.trust.dsse import Signer, envelope_bytes
        from specs.baseline import BASELINE_PAYLOAD_TYPE

        body: dict[str, Any] = {"version": version, "policy_version": str(version),
                                "site_id": "clinic-1", "host_id": "h1",
                                "services": {"units": [{"name": "evil.service"}]},
                                "patching": {"target": OLD_TARGET}}
        body.update(over)
        body = {k: v for k, v in body.items() if v is not None}
        return envelope_bytes(Signer(key or self.key).sign_envelope(
            json.dumps(body).encode(), BASELINE_PAYLOAD_TYPE))


def as_agent(call: Callable[[], Any], uid: int = NOBODY) -> Any:
    """`call` as the compromised agent (uid 65534 unless told otherwise)."""
    return run_as(uid, call)


def send(path: Path, body: bytes | None, *, header: bytes | None = None,
         timeout: float = 60) -> dict[str, Any]:
    """One raw exchange; the reply as a dict, or {"closed": ...} if none came."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        with contextlib.suppress(OSError):
            s.sendall((header if header is not None else struct.pack(">I", len(body or b"")))
                      + (body or b""))
            s.shutdown(socket.SHUT_WR)  # a truncated frame is seen as such at once
        try:
            head = _exact(s, 4)
            return json.loads(_exact(s, struct.unpack(">I", head)[0]))  # type: ignore[no-any-return]
        except (OSError, ValueError) as e:
            return {"closed": str(e)}


def _exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ValueError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def action(kind: str, **fields: Any) -> bytes:
    return json.dumps({"action": {"type": kind, **fields}}).encode()


@pytest.fixture
def luks_device() -> Iterator[str]:
    require_root()
    for tool in ("losetup", "cryptsetup", "nft", "ip"):
        require_tool(tool)
    work = Path(tempfile.mkdtemp(prefix="h-luks-"))
    devices: list[str] = []
    try:
        for name in ("named", "other"):
            backing = work / f"{name}.img"
            with open(backing, "wb") as f:
                f.truncate(32 * 1024 * 1024)
            devices.append(_sh("losetup", "-f", "--show", str(backing)))
        key = work / "key"
        key.write_bytes(b"k" * 32)
        for dev in devices:
            _sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf",
                "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", str(key), dev)
        yield ",".join(devices)
    finally:
        for dev in devices:
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30, check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def rig(luks_device: str) -> Iterator[Rig]:
    named, _ = luks_device.split(",")
    # Outside pytest's 0700 tmp tree, so uid 65534 can reach the socket directory.
    work = Path(tempfile.mkdtemp(prefix="h-hostile-", dir="/tmp"))
    work.chmod(0o755)
    try:
        with NetNamespace("h-hostile") as ns:
            ns.check(["nft", "-f", str(REPO / "examples" / "egress-table.nft")])
            r = Rig(ns, work, named)
            r.start()
            try:
                yield r
            finally:
                print(r.stop())  # the per-request log lines, shown when a test fails
    finally:
        shutil.rmtree(work, ignore_errors=True)


def refused_with(reply: dict[str, Any], reason: str) -> bool:
    return reply.get("status") == "refused" and reply.get("reason") == reason


# --- the attacks ----------------------------------------------------------------------------

EGRESS = {"table": "compliance_egress", "set_name": "allowed_v4"}
ATTACKS: list[tuple[str, bytes, str]] = [
    ("egress: the whole IPv4 internet", action("UpdateEgressSet", **EGRESS,
                                               elements=["0.0.0.0/0"]), "InvalidParams"),
    ("egress: the whole IPv6 internet", action("UpdateEgressSet", table="compliance_egress",
                                               set_name="allowed_v6", elements=["::/0"]),
     "InvalidParams"),
    ("egress: nft script injection through an IPv6 scope",
     action("UpdateEgressSet", table="compliance_egress", set_name="allowed_v6",
            elements=["fe80::1%x }; flush ruleset; add table inet pwned {"]), "InvalidParams"),
    ("egress: an address no allowed host resolves to",
     action("UpdateEgressSet", **EGRESS, elements=["127.0.0.1", "203.0.113.66"]),
     "EgressElementNotAllowed"),
    ("egress: a flood of addresses", action("UpdateEgressSet", **EGRESS, elements=[
        f"10.{i // 256}.{i % 256}.1" for i in range(2000)]), "InvalidParams"),
    ("egress: another table", action("UpdateEgressSet", table="filter", set_name="allowed_v4",
                                     elements=[]), "EgressTableMismatch"),
    ("rollback outside a rebuild transaction", action("Rollback", disruptive=True),
     "UnknownAction"),
    ("journald restart claimed non-disruptive, outside the window",
     action("RestartUnit", unit=JOURNALD, disruptive=False),
     "OutsideMaintenanceWindow"),
    ("rebuild to a system the baseline does not name", action("NixosRebuild",
                                                               target=OLD_TARGET),
     "RebuildTargetNotInBaseline"),
    ("a unit outside the baseline", action("StartUnit", unit="evil.service"),
     "UnitNotInBaseline"),
    ("a unit name with a trailing newline", action("StartUnit", unit="dummy-workload.service\n"),
     "InvalidParams"),
    ("a ruleset file that is not the baseline's", action(
        "ApplyNftRuleset", path="/etc/passwd", sha256="0" * 64), "RulesetNotInBaseline"),
    ("observe: a file in /dev/shm", json.dumps(
        {"observe": ["cryptsetup", "luksDump", "/dev/shm/h-hostile-file"]}).encode(),
     "ObservationNotAllowed"),
    ("observe: a FIFO that would block root", json.dumps(
        {"observe": ["blkid", "-p", "-o", "export", "/dev/shm/h-hostile-fifo"]}).encode(),
     "ObservationNotAllowed"),
    ("observe: a symlink to a block device the spec does not name", json.dumps(
        {"observe": ["cryptsetup", "luksDump", "/dev/shm/h-hostile-link"]}).encode(),
     "ObservationNotAllowed"),
    ("observe: a long timeout", json.dumps(
        {"observe": ["nft", "-j", "list", "ruleset"], "timeout": 120}).encode(),
     "InvalidParams"),
    ("observe: another command", json.dumps({"observe": ["nft", "flush", "ruleset"]}).encode(),
     "ObservationNotAllowed"),
    ("not JSON", b"{\"action\": ", "MalformedRequest"),
    ("JSON nested past the parser's depth", b"[" * 100_000 + b"]" * 100_000,
     "MalformedRequest"),
    ("an action type that does not exist", action("RunShell", argv=["id"]), "UnknownAction"),
]


@pytest.mark.parametrize(("what", "body", "reason"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_each_attack_is_refused_logged_and_changes_nothing(
    rig: Rig, luks_device: str, what: str, body: bytes, reason: str
) -> None:
    _, other = luks_device.split(",")
    shm = Path("/dev/shm")
    (shm / "h-hostile-file").write_bytes(b"\0" * 4096)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(shm / "h-hostile-fifo")
    with contextlib.suppress(FileExistsError):
        os.symlink(other, shm / "h-hostile-link")
    try:
        before = rig.host_state()
        reply = as_agent(lambda: send(rig.socket, body))
        assert refused_with(reply, reason), (what, reply)
        assert rig.host_state() == before, what
    finally:
        for name in ("h-hostile-file", "h-hostile-fifo", "h-hostile-link"):
            with contextlib.suppress(FileNotFoundError):
                (shm / name).unlink()
    log = rig.stop()
    assert f"peer_uid={NOBODY}" in log and f"refused:{reason}" in log, log


def test_the_named_block_device_is_read_under_its_kernel_name(rig: Rig) -> None:
    link = Path("/dev/shm/h-hostile-named")
    link.symlink_to(rig.luks_device)
    try:
        via_link = as_agent(lambda: send(rig.socket, json.dumps(
            {"observe": ["cryptsetup", "isLuks", str(link)]}).encode()))
        direct = as_agent(lambda: send(rig.socket, json.dumps(
            {"observe": ["cryptsetup", "luksDump", rig.luks_device]}).encode()))
    finally:
        link.unlink()
    assert via_link["status"] == "ok" and via_link["completed"]["exit_code"] == 0, via_link
    assert direct["status"] == "ok" and "LUKS header information" in direct["completed"]["stdout"]


def test_signed_baseline_attacks(rig: Rig) -> None:
    from reconciler.store.database import open_store

    # The agent's own database says a generous signed baseline applies: never read.
    (rig.work / "agent-state").mkdir()
    agent_db = open_store(rig.work / "agent-state" / "state.db")
    with agent_db.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("INSERT INTO remote_baseline (id, version, envelope, fetched_at)"
                          " VALUES (1, 99, :e, 0)"), {"e": rig.signed(99)})
    agent_db.close()
    start_evil = action("StartUnit", unit="evil.service")
    assert refused_with(as_agent(lambda: send(rig.socket, start_evil)), "UnitNotInBaseline")

    offer = lambda env: json.dumps({"offer_baseline": env.decode()}).encode()  # noqa: E731
    good = rig.signed(5, services={"units": [{"name": "dummy-workload.service"}]},
                      patching={"target": TARGET})
    accepted = as_agent(lambda: send(rig.socket, offer(good)))
    assert accepted["status"] == "ok" and accepted["baseline_version"] == 5, accepted
    before = rig.host_state()
    assert before["high_water_mark"] == "5\n"
    for envelope, reason in [
        (rig.signed(4), "BaselineRollback"),  # older, and it re-allowed evil.service
        (rig.signed(5), "BaselineRollback"),  # same version, other content
        (rig.signed(9, host_id="h2"), "BaselineWrongHost"),
        (rig.signed(9, site_id="clinic-2"), "BaselineWrongSite"),
        (rig.signed(9, host_id=None), "InvalidBaseline"),
        (rig.signed(9, key=SigningKey.generate()), "UnknownKey"),
        (_corrupt_signature(good), "BadSignature"),
    ]:
        reply = as_agent(lambda envelope=envelope: send(rig.socket, offer(envelope)))
        assert refused_with(reply, reason), (reason, reply)
        assert rig.host_state() == before
    assert refused_with(as_agent(lambda: send(rig.socket, start_evil)), "UnitNotInBaseline")


def _corrupt_signature(envelope: bytes) -> bytes:
    import base64

    doc = json.loads(envelope)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[0] ^= 0xFF
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(doc).encode()


def test_slow_peers_do_not_stop_the_actuator(rig: Rig) -> None:
    """Peers that connect and never send hold a slot each (until the 10 s read
    timeout), never the actuator: the last free slot still serves, and beyond the
    cap a peer is told Busy at once instead of queueing behind them."""

    def attack() -> dict[str, Any]:
        idle = []
        for _ in range(7):  # all but one of the 8 slots
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(rig.socket))
            idle.append(s)
        # The reply must come within the client's 5 s, i.e. before the idle peers time out.
        served = send(rig.socket, json.dumps({"observe": ["nft", "-j", "list", "ruleset"]})
                      .encode(), timeout=5)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(rig.socket))
        idle.append(s)
        deadline = time.monotonic() + 5
        busy: dict[str, Any] = {}
        while time.monotonic() < deadline and busy.get("reason") != "Busy":
            # the 8th idle peer is accepted asynchronously: poll until the cap shows
            busy = send(rig.socket, action("StartUnit", unit="evil.service"), timeout=5)
        for s in idle:
            s.close()
        return {"served": served, "busy": busy}

    out = as_agent(attack)
    assert out["served"]["status"] == "ok", out
    assert refused_with(out["busy"], "Busy"), out


def test_oversized_and_truncated_frames(rig: Rig) -> None:
    big = as_agent(lambda: send(rig.socket, None, header=struct.pack(">I", 64 * 1024 * 1024)))
    assert refused_with(big, "RequestTooLarge"), big
    cut = as_agent(lambda: send(rig.socket, None, header=struct.pack(">I", 100) + b"{"))
    assert refused_with(cut, "MalformedRequest"), cut


def test_another_uid_is_refused_without_being_read(rig: Rig) -> None:
    # uid 65533 is not the agent: opened up here so it can connect; it is never served
    os.chmod(rig.socket.parent, 0o755)
    os.chmod(rig.socket, 0o666)
    reply = as_agent(lambda: send(rig.socket, action("StartUnit", unit="dummy-workload.service")),
                     uid=65533)
    assert refused_with(reply, "PeerNotAllowed"), reply


def test_the_agent_cannot_replace_the_socket(rig: Rig) -> None:
    def attack() -> list[str]:
        outcomes = []
        for name, op in [
            ("unlink", lambda: os.unlink(rig.socket)),
            ("symlink", lambda: os.symlink("/tmp/evil.sock", rig.socket.with_name("x.sock"))),
            ("rename", lambda: os.rename(rig.socket, rig.socket.with_name("old.sock"))),
        ]:
            try:
                op()
                outcomes.append(f"{name}: done")
            except PermissionError:
                outcomes.append(f"{name}: refused")
        return outcomes

    assert as_agent(attack) == ["unlink: refused", "symlink: refused", "rename: refused"]
    assert rig.socket.exists()


def test_fuzzed_requests_never_change_the_host(rig: Rig) -> None:
    """Hypothesis plays the agent: arbitrary frames and near-valid requests."""
    before = rig.host_state()
    # Loaded here: the dropped uid cannot read this interpreter's stdlib (under /root).
    import gzip  # noqa: F401

    import hypothesis.extra

    # The child drops to uid 65534, which may not read the checkout or its venv (a CI
    # clone can live in a 0700 directory): import before the fork what the fuzz
    # would otherwise import lazily in the child.
    import hypothesis.internal.conjecture.optimiser
    import hypothesis.internal.conjecture.shrinker
    import hypothesis.strategies  # noqa: F401

    import reconciler.actuator.protocol  # noqa: F401

    out = as_agent(lambda: _fuzz(rig.socket))
    assert out["examples"] >= 200, out
    assert out["bad"] == [], out["bad"][:5]
    assert rig.host_state() == before
    # still serving after all that
    alive = as_agent(lambda: send(rig.socket, json.dumps(
        {"observe": ["nft", "-j", "list", "ruleset"]}).encode()))
    assert alive["status"] == "ok"


def _empties_egress(body: bytes) -> bool:
    """Flushing an egress set only ever closes egress: the one write the fuzzer may get."""
    try:
        a = json.loads(body)["action"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(a, dict) and a.get("type") == "UpdateEgressSet" and a.get("elements") == []


def _fuzz(path: Path) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from reconciler.actuator.protocol import KNOWN_ACTIONS, ActuatorReply

    # (no baseline unit names: an admitted StartUnit would really run systemctl here)
    hostile_text = st.sampled_from([
        "evil.service", "sshd.service", "0.0.0.0/0",
        "::/0", "fe80::1%x }; flush ruleset", "/dev/shm/x", "../../etc/shadow", "-rf", "\n",
        OLD_TARGET, "compliance_egress", "allowed_v4", "x" * 300,
    ]) | st.text(max_size=40)
    scalar = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | hostile_text
    json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(hostile_text, inner, max_size=4), max_leaves=12)
    action_dict = st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(KNOWN_ACTIONS)) | hostile_text},
        optional={k: json_value for k in ("unit", "disruptive", "elements", "table", "set_name",
                                          "target", "path", "sha256", "family", "argv")},
    )
    request = (
        st.builds(lambda a, s: {"action": a, "step_start": s}, action_dict, json_value)
        | st.builds(lambda o, t: {"observe": o, "timeout": t},
                    st.lists(hostile_text, max_size=6), json_value)
        | st.builds(lambda b: {"offer_baseline": b}, json_value)
        | st.builds(lambda w: {"watch": w}, st.just("nftables") | json_value)
        | st.dictionaries(hostile_text, json_value, max_size=3)
    )
    frame = st.builds(lambda r: json.dumps(r, allow_nan=True).encode(), request) | st.binary(
        max_size=256)
    seen = {"examples": 0, "bad": []}

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frame)
    def one(body: bytes) -> None:
        seen["examples"] += 1
        reply = send(path, body, timeout=30)
        try:
            parsed = ActuatorReply.model_validate(reply)
        except Exception as e:
            seen["bad"].append(f"invalid reply {reply!r} ({e}) to {body[:200]!r}")
            return
        # an opened watch stream changes nothing (the fuzzer hangs up, which ends it)
        if (parsed.status == "ok" and parsed.completed is None and parsed.watching is None
                and not _empties_egress(body)):
            seen["bad"].append(f"admitted {body[:300]!r}: {reply!r}")
        if parsed.status != "ok" and parsed.reason is None:
            seen["bad"].append(f"no reason for {body[:200]!r}")

    one()
    return seen


# --- under a real systemd 252, with the module's units and the agent's sandbox ---------------

HOSTILE_AGENT = r"""
import json, os, socket, struct, sys
PATH = "/run/compliance-agent-actuator/actuator.sock"

def send(body):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(PATH)
        s.sendall(struct.pack(">I", len(body)) + body)
        size = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
        return json.loads(s.recv(size, socket.MSG_WAITALL))

for name, body in json.load(open(sys.argv[1])):
    reply = send(json.dumps(body).encode())
    print("ATTACK %s %s %s" % (name, reply["status"], reply.get("reason")), flush=True)

def attempt(name, op):
    try:
        op()
        print("FS %s done" % name, flush=True)
    except PermissionError:
        print("FS %s refused" % name, flush=True)

attempt("unlink", lambda: os.unlink(PATH))
attempt("rename", lambda: os.rename(PATH, PATH + ".old"))
attempt("symlink", lambda: os.symlink("/tmp/evil.sock", PATH + ".evil"))
def impersonate():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(PATH.replace("actuator.sock", "fake.sock"))
attempt("bind", impersonate)
"""

BOX_ATTACKS = [
    ("journald-non-disruptive", {"action": {"type": "RestartUnit",
                                            "unit": "systemd-journald.service",
                                            "disruptive": False}}),
    ("rollback", {"action": {"type": "Rollback", "disruptive": True}}),
    ("old-generation", {"action": {"type": "NixosRebuild", "target": OLD_TARGET}}),
    ("unit-outside-baseline", {"action": {"type": "RestartUnit", "unit": "dbus.service"}}),
    ("egress-open", {"action": {"type": "UpdateEgressSet", "table": "compliance_egress",
                                "set_name": "allowed_v4", "elements": ["0.0.0.0/0"]}}),
]
BOX_EXPECTED = {
    "journald-non-disruptive": "refused OutsideMaintenanceWindow",
    "rollback": "refused UnknownAction",
    "old-generation": "refused RebuildTargetNotInBaseline",
    "unit-outside-baseline": "refused UnitNotInBaseline",
    "egress-open": "refused InvalidParams",
}


def _sign(key: SigningKey, version: int, config: dict[str, Any]) -> bytes:
    from reconciler.trust.dsse import Signer, envelope_bytes
    from specs.baseline import BASELINE_PAYLOAD_TYPE

    body = {"version": version, "policy_version": str(version), "site_id": config["siteId"],
            "host_id": "*", "services": {"units": [{"name": "dummy-workload.service"}]},
            "logging": {}, "patching": {"target": TARGET}}
    return envelope_bytes(Signer(key).sign_envelope(json.dumps(body).encode(),
                                                    BASELINE_PAYLOAD_TYPE))


def test_hostile_agent_under_real_systemd(systemd_rootfs: Path, tmp_path: Path) -> None:
    from tests.harness.sdbox import Bind, SystemdContainer
    from tests.integration.test_unit_hardening import (
        PY_IN_BOX,
        PYENV,
        REPO_IN_BOX,
        SITE_IN_BOX,
        _boxed_service,
        _python_in_box,
        evaluate,
        render_unit,
    )

    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    binds = [Bind(PYENV, PY_IN_BOX), Bind(site, SITE_IN_BOX),
             *(Bind(REPO / pkg, f"{REPO_IN_BOX}/{pkg}")
               for pkg in ("specs", "controllers", "reconciler"))]
    with SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs, binds=binds) as box:
        evaluated = evaluate()
        services = evaluated["systemd"]["services"]
        box.check(["useradd", "--system", "--user-group", "--no-create-home",
                   "--home-dir", "/var/lib/compliance-agent", "compliance-agent"])
        box.write_file("/etc/compliance-agent/baseline.json", json.dumps({
            "version": 1, "policy_version": "1",
            "services": {"units": [{"name": "dummy-workload.service"}]},
            "logging": {},  # the real systemd-journald.service is a baseline unit
            "patching": {"target": TARGET},
        }))
        config = json.loads(evaluated["configText"])
        key = SigningKey.generate()
        config.update(baselinePath="/etc/compliance-agent/baseline.json",
                      maintenanceWindow=_window_excluding_now(),
                      mcpPublicKeys=[key.verify_key.encode().hex()])
        box.write_file("/etc/compliance-agent/config.json", json.dumps(config))
        box.write_file("/etc/tmpfiles.d/compliance-agent.conf",
                       "\n".join(evaluated["systemd"]["tmpfiles"]) + "\n")
        box.check(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/compliance-agent.conf"])
        # A system profile with an older generation a rollback would go back to.
        box.check(["mkdir", "-p", "/nix/var/nix/profiles"])
        for link, target in (("system-1-link", OLD_TARGET), ("system-2-link", TARGET),
                             ("system", "system-2-link")):
            box.check(["ln", "-sfn", target, f"/nix/var/nix/profiles/{link}"])

        py = _python_in_box()
        box.install_unit("dummy-workload.service", "[Service]\nExecStart=/bin/sleep infinity\n")
        box.install_unit("compliance-agent-actuator.socket", render_unit(
            "socket", evaluated["systemd"]["sockets"]["compliance-agent-actuator"]))
        box.install_unit("compliance-agent-actuator.service", _boxed_service(
            services["compliance-agent-actuator"],
            f"{py} -m reconciler.actuator.server --config /etc/compliance-agent/config.json "
            "--allow-user compliance-agent --idle-exit 600"))
        box.write_file("/etc/compliance-agent/hostile.py", HOSTILE_AGENT)
        # The honest offer first (the module's StateDirectory keeps it), then an older one.
        offers = [
            ("offer-signed-v5", {"offer_baseline": _sign(key, 5, config).decode()}),
            ("offer-older-v4", {"offer_baseline": _sign(key, 4, config).decode()}),
        ]
        box.write_file("/etc/compliance-agent/attacks.json", json.dumps(offers + BOX_ATTACKS))
        box.install_unit("hostile-agent.service", _boxed_service(
            services["compliance-agent"],
            f"{py} /etc/compliance-agent/hostile.py /etc/compliance-agent/attacks.json",
            Type="oneshot", WatchdogSec="0", NotifyAccess="none", Restart="no"))
        box.check(["systemctl", "start", "dummy-workload.service",
                   "compliance-agent-actuator.socket"])

        def host_state() -> dict[str, str]:
            ids = {u: box.check(["systemctl", "show", "-p", "InvocationID", "--value", u])
                   .stdout.strip() for u in ("systemd-journald.service",
                                             "dummy-workload.service", "dbus.service")}
            links = box.check(["sh", "-c", "for l in /nix/var/nix/profiles/*; do "
                               "echo $l $(readlink $l); done"]).stdout
            sock = box.check(["stat", "-c", "%U %G %a %F",
                              "/run/compliance-agent-actuator",
                              "/run/compliance-agent-actuator/actuator.sock"]).stdout
            return {**ids, "profile": links, "socket": sock}

        def actuator_state() -> str:
            return box.check(["sh", "-c", "stat -c '%U %a' /var/lib/compliance-agent-actuator; "
                              "cat /var/lib/compliance-agent-actuator/baseline-high-water-mark"]
                             ).stdout

        before = host_state()
        box.check(["systemctl", "start", "hostile-agent.service"], timeout=180)
        journal = box.check(["journalctl", "--no-pager", "-o", "cat", "-u",
                             "hostile-agent.service", "-u",
                             "compliance-agent-actuator.service"]).stdout
        after = host_state()
        kept = actuator_state()

    assert kept.split() == ["root", "700", "5"], kept
    seen = {line.split()[1]: " ".join(line.split()[2:]) for line in journal.splitlines()
            if line.startswith("ATTACK ")}
    assert seen == {"offer-signed-v5": "ok None", "offer-older-v4": "refused BaselineRollback",
                    **BOX_EXPECTED}, journal
    fs = [line for line in journal.splitlines() if line.startswith("FS ")]
    assert fs == ["FS unlink refused", "FS rename refused", "FS symlink refused",
                  "FS bind refused"], journal
    assert after == before, (before, after)
    assert "refused:OutsideMaintenanceWindow" in journal and "peer_uid=" in journal
