"""The nftables watch behind the root actuator, with real parts: the actuator
process runs as root inside a throwaway network namespace (so its `nft` is the
namespace's), on a unix socket in a temporary directory; the agent side is
the daemon wired by `reconciler.service` with `actuatorSocket` set, as under
the NixOS module, where the agent cannot run `nft monitor` itself."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.actuator.client import ActuatorClient, ActuatorRefused
from reconciler.actuator.protocol import Refusal, encode_frame, recv_frame
from reconciler.actuator.watch_stream import monitor_subscribed
from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.actuator_nft_watch import ActuatorNftWatch
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.service import new_agent, watch_factories
from specs.config import parse_config
from specs.watch import WatchTargets
from tests.harness.actuator_process import (
    ActuatorProcess,
    nft_children,
    settled,
    thread_count,
    write_config,
)
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool, unavailable
from tests.harness.unprivileged import run_as
from tests.harness.wait import wait_for
from tests.support.nft_repair import assert_flush_repaired_on_the_notice

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "nft"
DEADLINE = 20.0
# main just before watch streams: its actuator refuses {"watch": ...} as malformed
OLD_ACTUATOR_COMMIT = "fc9bf4d"


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Outside pytest's 0700 tmp tree, so uid 65534 can reach the socket.
    d = Path(tempfile.mkdtemp(prefix="nft-watch-act-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ns() -> Iterator[NetNamespace]:
    require_root()
    require_tool("nft")
    require_tool("ip")
    with NetNamespace("nft-act") as n:
        yield n


def test_a_flushed_ruleset_is_repaired_through_the_actuator_long_before_the_next_pass(
    ns: NetNamespace, workdir: Path
) -> None:
    ruleset = workdir / "nftables.rules"
    shutil.copy(FIX / "baseline.nft", ruleset)
    config_path = write_config(workdir, {"firewall": {
        "ruleset_path": str(ruleset),
        "ruleset_sha256": hashlib.sha256(ruleset.read_bytes()).hexdigest()}},
        allowDisruptiveOutsideWindow=True)
    actuator = ActuatorProcess(ns, workdir, config_path)
    actuator.start()
    cfg = parse_config(json.loads(config_path.read_text()))
    applied: list[float] = []
    # The agent as the service builds it with actuatorSocket: nft reads and the
    # apply go through the actuator, and so must the nftables watch.
    agent = new_agent(cfg, listeners=(lambda r: applied.extend(time.monotonic()
                                                               for _ in r.executed),))
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2),
                    notifier=Notifier(environ={}), watches=watch_factories(cfg))
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()

    def nft_watch_up() -> bool:
        return any(h.name == "nftables" and h.up for h in daemon.watch_hub.health())

    try:
        assert_flush_repaired_on_the_notice(daemon, applied, ns, nft_watch_up)
    finally:
        daemon.stop()
        runner.join(10)
        actuator.stop()
        print(actuator.log())


# -- the stream itself ---------------------------------------------------------------------
FW_RULESET = "table inet w_fw {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n"
TARGETS = {"firewall": WatchTargets.of(paths=["/x"], nftables=True),
           "egress": WatchTargets.of(nftables=True),
           "services": WatchTargets.of(units=["a.service"])}


@pytest.fixture
def actuator(ns: NetNamespace, workdir: Path) -> Iterator[ActuatorProcess]:
    ruleset = workdir / "baseline.nft"
    ruleset.write_text(FW_RULESET)
    config = write_config(workdir, {"firewall": {
        "ruleset_path": str(ruleset),
        "ruleset_sha256": hashlib.sha256(FW_RULESET.encode()).hexdigest()}})
    act = ActuatorProcess(ns, workdir, config)
    act.start()
    try:
        yield act
    finally:
        act.stop()
        print(act.log())  # the per-request lines, shown when a test fails


class RawStream:
    """A watch stream read frame by frame, as a compromised agent would see it."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(DEADLINE)
        self.sock.connect(str(path))
        self.sock.sendall(encode_frame(json.dumps({"watch": "nftables"}).encode()))
        self.first = json.loads(recv_frame(self.sock, 1 << 16))
        self.raw: list[bytes] = []

    def frame(self, timeout: float) -> dict[str, Any] | None:
        self.sock.settimeout(timeout)
        try:
            body = recv_frame(self.sock, 1 << 16)
        except TimeoutError:
            return None
        self.raw.append(body)
        return json.loads(body)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()


def test_a_change_is_a_notice_without_ruleset_data_and_notices_are_coalesced(
    actuator: ActuatorProcess, ns: NetNamespace
) -> None:
    stream = RawStream(actuator.socket)
    try:
        assert stream.first["status"] == "ok" and stream.first["watching"] == "nftables"
        ns.check(["nft", "add", "table", "inet", "secret_tbl_4711"])
        ns.check(["nft", "add", "chain", "inet", "secret_tbl_4711", "c"])
        ns.check(["nft", "add", "rule", "inet", "secret_tbl_4711", "c", "ip", "saddr",
                  "198.51.100.77", "counter", "accept"])
        notice = stream.frame(DEADLINE)
        assert notice == {"changed": "ruleset", "ended": None, "message": ""}

        # A burst of 200 separate changes, timed from the first change to the last
        # notice: the actuator sends at most one notice per 100 ms of that span.
        batch = "".join(f"add rule inet secret_tbl_4711 c tcp dport {1000 + i} accept\n"
                        for i in range(200))
        (actuator.workdir / "burst.nft").write_text(batch)
        started = time.monotonic()
        for _ in range(5):
            ns.check(["nft", "-f", str(actuator.workdir / "burst.nft")])
        notices = 0
        while (frame := stream.frame(1.0)) is not None:
            assert frame == {"changed": "ruleset", "ended": None, "message": ""}
            notices += 1
            last = time.monotonic()
        assert notices >= 1
        assert notices <= (last - started) / 0.1 + 1, (notices, last - started)
        # byte for byte the one notice there is: nothing of the ruleset in any frame
        assert set(stream.raw) == {b'{"changed":"ruleset","ended":null,"message":""}'}
    finally:
        stream.close()


def test_notices_hint_the_nftables_kinds_of_the_agent(
    actuator: ActuatorProcess, ns: NetNamespace
) -> None:
    hints: list[str] = []
    watch = ActuatorNftWatch(hints.append, client=ActuatorClient(actuator.socket))
    watch.set_targets(TARGETS)
    watch.start()
    try:
        assert wait_for(lambda: watch.health().up), watch.health()
        assert sorted(hints) == ["egress", "firewall"]  # the resync when it went live
        hints.clear()
        ns.check(["nft", "add", "table", "inet", "intruder"])
        assert wait_for(lambda: {"firewall", "egress"} <= set(hints))
        hints.clear()
        ns.check(["nft", "flush", "ruleset"])
        assert wait_for(lambda: {"firewall", "egress"} <= set(hints))
        assert "services" not in hints
    finally:
        watch.stop()
    assert watch.health().reason == "Stopped"
    assert wait_for(lambda: nft_children(actuator.pid) == []), "stopping the watch ends it"


def test_a_client_that_goes_away_leaves_no_nft_and_no_thread(
    actuator: ActuatorProcess,
) -> None:
    idle_threads = settled(lambda: thread_count(actuator.pid))
    for _ in range(3):
        stream = RawStream(actuator.socket)
        assert stream.first["watching"] == "nftables", stream.first
        monitors = nft_children(actuator.pid)
        assert len(monitors) == 1, monitors
        assert thread_count(actuator.pid) == idle_threads + 1
        stream.close()  # no goodbye: the actuator must notice the closed socket itself
        assert wait_for(lambda: nft_children(actuator.pid) == []), "nft killed and reaped"
        assert wait_for(lambda: thread_count(actuator.pid) == idle_threads)
        assert not Path(f"/proc/{monitors[0]}").exists()
    assert "end=ClientGone" in actuator.log()


def test_a_second_stream_is_refused_while_requests_are_still_served(
    actuator: ActuatorProcess, ns: NetNamespace
) -> None:
    client = ActuatorClient(actuator.socket, timeout=30)
    first = RawStream(actuator.socket)
    try:
        assert first.first["watching"] == "nftables"
        second = RawStream(actuator.socket)
        second.close()
        assert second.first["status"] == "refused" and second.first["reason"] == "Busy"
        assert "watch stream" in second.first["message"]
        assert len(nft_children(actuator.pid)) == 1, "the refused stream started no monitor"
        with pytest.raises(ActuatorRefused) as refused:
            client.watch_nftables()
        assert refused.value.reason is Refusal.Busy
        # the open stream holds none of the request slots: more than their number
        # of requests in a row, each answered
        for _ in range(10):
            done = client.observe(["nft", "-j", "list", "ruleset"])
            assert done.exit_code == 0
        ns.check(["nft", "add", "table", "inet", "still_watched"])
        assert first.frame(DEADLINE) == {"changed": "ruleset", "ended": None, "message": ""}
    finally:
        first.close()
    # the slot is free again once the first stream is gone
    assert wait_for(lambda: nft_children(actuator.pid) == [])
    again = client.watch_nftables()
    again.close()


def test_a_stranger_uid_gets_no_stream_and_starts_nothing(
    actuator: ActuatorProcess,
) -> None:
    os.chmod(actuator.socket, 0o666)  # let the stranger reach the actuator's own check
    stranger = 4242

    def ask() -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(DEADLINE)
            s.connect(str(actuator.socket))
            with contextlib.suppress(OSError):
                s.sendall(encode_frame(json.dumps({"watch": "nftables"}).encode()))
            first = json.loads(recv_frame(s, 1 << 16))
            s.settimeout(1.0)
            try:
                more = s.recv(1)
            except TimeoutError:
                more = b"(still open)"
            except ConnectionResetError:  # its request left unread: a reset is a close
                more = b""
            return {"first": first, "more": more.decode()}

    out = run_as(stranger, ask)
    assert out["first"]["status"] == "refused"
    assert out["first"]["reason"] == "PeerNotAllowed"
    assert out["more"] == "", "the actuator hung up after the refusal"
    assert nft_children(actuator.pid) == []
    assert f"peer_uid={stranger}" in actuator.log()
    assert "watch ended" not in actuator.log()


def test_a_killed_monitor_ends_the_stream_and_the_agent_watch_recovers(
    actuator: ActuatorProcess, ns: NetNamespace
) -> None:
    hints: list[str] = []
    watch = ActuatorNftWatch(hints.append, client=ActuatorClient(actuator.socket))
    watch.set_targets(TARGETS)
    watch.start()
    try:
        assert wait_for(lambda: watch.health().up), watch.health()
        resyncs = watch.health().resyncs
        (monitor,) = nft_children(actuator.pid)
        os.kill(monitor, signal.SIGKILL)
        assert wait_for(lambda: not watch.health().up)
        health = watch.health()
        assert health.reason == "Lost" and "MonitorExited" in health.message, health
        assert wait_for(lambda: watch.health().up), watch.health()
        assert watch.health().resyncs == resyncs + 1, "recovered: every kind queued again"
        assert nft_children(actuator.pid) != [monitor]
        hints.clear()
        ns.check(["nft", "add", "table", "inet", "after_recovery"])
        assert wait_for(lambda: {"firewall", "egress"} <= set(hints))
    finally:
        watch.stop()
    assert "end=MonitorExited" in actuator.log()


def test_stopping_the_actuator_ends_the_stream_and_its_monitor(
    actuator: ActuatorProcess,
) -> None:
    stream = RawStream(actuator.socket)
    try:
        assert stream.first["watching"] == "nftables"
        (monitor,) = nft_children(actuator.pid)
        assert actuator.proc is not None
        actuator.proc.send_signal(signal.SIGTERM)
        assert stream.frame(DEADLINE) == {"changed": None, "ended": "ActuatorStopping",
                                          "message": ""}
        assert actuator.proc.wait(DEADLINE) == -signal.SIGTERM, "it dies of the signal"
        assert wait_for(lambda: not Path(f"/proc/{monitor}").exists()), "no orphaned nft"
    finally:
        stream.close()


def test_an_older_actuator_without_watches_shows_the_watch_down_and_backs_off(
    ns: NetNamespace, workdir: Path
) -> None:
    """The actuator of the last release before watch streams, from the history."""
    git = require_tool("git")
    old = workdir / "old-actuator"
    old.mkdir()
    archive = subprocess.run([git, "-C", str(REPO), "archive", OLD_ACTUATOR_COMMIT,
                              "reconciler", "specs", "controllers"],
                             capture_output=True, timeout=60, check=False)
    if archive.returncode != 0:
        # CI runs on a full clone: a missing commit there must fail, not skip
        unavailable(f"the history has no {OLD_ACTUATOR_COMMIT} (a shallow clone?): "
                    f"{archive.stderr.decode()[:200]}")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True,
                   timeout=60)
    ruleset = workdir / "baseline.nft"
    ruleset.write_text(FW_RULESET)
    config = write_config(workdir, {"firewall": {
        "ruleset_path": str(ruleset),
        "ruleset_sha256": hashlib.sha256(FW_RULESET.encode()).hexdigest()}})
    act = ActuatorProcess(ns, workdir, config, code=old)
    act.start()
    hints: list[str] = []
    watch = ActuatorNftWatch(hints.append, client=ActuatorClient(act.socket))
    watch.set_targets(TARGETS)
    watch.start()
    try:
        assert wait_for(lambda: watch.health().failures >= 1), watch.health()
        health = watch.health()
        assert not health.up and health.reason == "Unavailable", health
        assert "MalformedRequest" in health.message and "does not offer" in health.message
        # bounded look: at the backoff's cap the next try is >= 30 s away, not 1 s
        time.sleep(2.5)
        assert watch.health().failures == 1, watch.health()
        assert act.log().count("verdict=refused:MalformedRequest") == 1, act.log()
        assert hints == []
        # the old actuator still serves everything else
        assert ActuatorClient(act.socket).observe(["nft", "-j", "list", "ruleset"]) \
            .exit_code == 0
    finally:
        watch.stop()
        act.stop()
        print(act.log())


def test_the_ready_check_sees_real_nft_join_the_nftables_group(ns: NetNamespace) -> None:
    """"Ready" waits for this (not for a fixed time): a real `nft monitor` in the
    namespace joins the group within the deadline; a process that never listens does not."""
    idle = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "60"])
    monitor = subprocess.Popen(["ip", "netns", "exec", ns.name, "nft", "-j", "monitor",
                                "ruleset"], stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: monitor_subscribed(monitor.pid))
        assert not monitor_subscribed(idle.pid)
    finally:
        for proc in (idle, monitor):
            proc.kill()
            proc.wait(10)
