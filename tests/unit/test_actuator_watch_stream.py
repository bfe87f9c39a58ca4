"""The actuator's watch streams without root: a stand-in monitor process (a real
child, printing a line per line written to a FIFO, exiting when the FIFO
closes) in place of `nft monitor`, real sockets, the real server and client.
The real nft in a network namespace is tests/integration/test_nft_watch_actuator.py."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.actuator import server as server_module
from reconciler.actuator.client import ActuatorClient, ActuatorRefused
from reconciler.actuator.protocol import (
    ActuatorReply,
    ObserveRequest,
    OfferBaselineRequest,
    PolicyDecision,
    Refusal,
    WatchNotice,
    WatchRequest,
    encode_frame,
    parse_request,
    recv_frame,
)
from reconciler.actuator.server import ActuatorServer, bind_path_socket
from reconciler.actuator.watch_stream import WatchStreams, monitor_subscribed
from reconciler.runtime.actuator_nft_watch import ActuatorNftWatch
from specs.watch import WatchTargets
from tests.harness.wait import wait_for as wait_until
from tests.unit.test_actuator_server import Env

DEADLINE = 10.0
NOTICE = {"changed": "ruleset", "ended": None, "message": ""}
# Prints each line of the FIFO at argv[1] (a "change"); exits 0 when the writer closes it.
ECHO_FIFO = ("import sys\n"
             "with open(sys.argv[1]) as f:\n"
             "    for line in f:\n"
             "        sys.stdout.write(line); sys.stdout.flush()\n")



def wait_for(cond: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    return wait_until(cond, timeout)


def children_running(marker: str, count: int = 1) -> list[int]:
    """Our child processes whose command line names `marker`, once there are `count`
    (a child just spawned may not show its command line yet; a zombie never does:
    `reaped` checks a known pid)."""
    found: list[int] = []

    def look() -> bool:
        found[:] = _children(marker)
        return len(found) == count

    wait_for(look)
    return found


def _children(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b") ", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and marker.encode() in cmdline:
            found.append(int(entry))
    return found


def reaped(pid: int) -> bool:
    """Gone from the process table: killed *and* waited for (a zombie still shows)."""
    return not os.path.exists(f"/proc/{pid}")


class Rig:
    """WatchStreams over a socketpair: `serve` on a thread, the test is the client."""

    def __init__(self, tmp: Path, *, argv: list[str] | None = None, limit: int = 1,
                 heartbeat: float = 30.0) -> None:
        self.fifo = tmp / "changes.fifo"
        os.mkfifo(self.fifo)
        self.streams = WatchStreams(
            argv=argv or [sys.executable, "-c", ECHO_FIFO, str(self.fifo)],
            limit=limit, subscribed=lambda _pid: True, heartbeat=heartbeat)
        self.ends: list[str] = []
        self._writer: int | None = None

    def open(self, *, send_timeout: float = 10.0, send_buffer: int | None = None
             ) -> socket.socket:
        """A client connection; `send_timeout` is the server's connection timeout, a
        small `send_buffer` (the server's) fills after a few notices."""
        ours, theirs = socket.socketpair()
        theirs.settimeout(send_timeout)
        if send_buffer is not None:
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        ours.settimeout(DEADLINE)

        def run() -> None:
            with theirs:
                self.ends.append(self.streams.serve(theirs))

        threading.Thread(target=run, daemon=True).start()
        return ours

    def change(self, lines: int = 1) -> None:
        if self._writer is None:
            self._writer = os.open(self.fifo, os.O_WRONLY)  # the monitor has it open
        os.write(self._writer, b"{\"add\": {\"table\": {\"name\": \"secret\"}}}\n" * lines)

    def monitor_exits(self) -> None:
        if self._writer is None:
            self._writer = os.open(self.fifo, os.O_WRONLY)
        os.close(self._writer)
        self._writer = None


def frame(sock: socket.socket, timeout: float = DEADLINE) -> dict[str, Any] | None:
    sock.settimeout(timeout)
    try:
        return json.loads(recv_frame(sock, 1 << 16))  # type: ignore[no-any-return]
    except TimeoutError:
        return None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.streams.stop()


def test_ready_then_data_free_coalesced_notices_then_the_monitors_exit(rig: Rig) -> None:
    sock = rig.open()
    first = frame(sock)
    assert first is not None and first["status"] == "ok" and first["watching"] == "nftables"
    started = time.monotonic()
    for _ in range(20):
        rig.change(lines=50)
    notices = []
    while (got := frame(sock, 0.5)) is not None:
        notices.append(got)
        last = time.monotonic()
    assert notices and all(n == NOTICE for n in notices), notices
    # 1000 lines: at most one notice per 100 ms of the span they took
    assert len(notices) <= (last - started) / 0.1 + 1, (len(notices), last - started)
    [child] = children_running(str(rig.fifo))
    rig.monitor_exits()
    assert frame(sock) == {"changed": None, "ended": "MonitorExited",
                           "message": "nft monitor exited with 0"}
    assert wait_for(lambda: rig.ends == ["MonitorExited"])
    assert reaped(child)


def test_a_client_that_hangs_up_ends_the_stream_and_its_monitor_at_once(rig: Rig) -> None:
    sock = rig.open()
    assert frame(sock) is not None
    [child] = children_running(str(rig.fifo))
    sock.close()  # nothing changes in the ruleset: the hang-up alone must end it
    assert wait_for(lambda: rig.ends == ["ClientGone"])
    assert reaped(child)
    assert rig.streams.open_streams() == 0


def test_a_client_that_talks_after_its_request_is_cut_off(rig: Rig) -> None:
    sock = rig.open()
    assert frame(sock) is not None
    [child] = children_running(str(rig.fifo))
    sock.sendall(b"more")
    assert wait_for(lambda: rig.ends == ["ClientSentData"])
    assert reaped(child)


def test_a_client_that_stops_reading_is_cut_off_and_its_monitor_reaped(rig: Rig) -> None:
    """Slowloris on the stream: the client reads "ready" and then nothing while the
    ruleset keeps changing. Once the notices fill the socket, a notice that cannot be
    sent within the connection's timeout ends the stream; nothing piles up in root."""
    sock = rig.open(send_timeout=1.0, send_buffer=4096)
    assert frame(sock) is not None
    [child] = children_running(str(rig.fifo))
    deadline = time.monotonic() + DEADLINE * 3
    while not rig.ends and time.monotonic() < deadline:
        try:
            rig.change()
        except BrokenPipeError:  # the monitor was just killed: the stream is ending
            break
        time.sleep(0.02)
    assert wait_for(lambda: rig.ends == ["ClientGone"]), rig.ends
    assert wait_for(lambda: reaped(child))
    assert rig.streams.open_streams() == 0
    sock.close()


def test_a_stream_beyond_the_limit_is_refused_and_starts_nothing(rig: Rig) -> None:
    first = rig.open()
    assert frame(first) is not None
    second = rig.open()
    refused = frame(second)
    assert refused is not None and refused["status"] == "refused"
    assert refused["reason"] == "Busy" and "1 watch stream(s) already open" in refused["message"]
    assert wait_for(lambda: rig.ends == ["Busy"])
    assert len(_children(str(rig.fifo))) == 1
    first.close()
    assert wait_for(lambda: rig.streams.open_streams() == 0)
    third = rig.open()
    got = frame(third)
    assert got is not None and got["watching"] == "nftables", "the slot came back"


def test_stop_ends_every_stream_and_reaps_its_monitor(tmp_path: Path) -> None:
    rig = Rig(tmp_path, limit=2)
    socks = [rig.open(), rig.open()]
    for s in socks:
        assert frame(s) is not None
    children = children_running(str(rig.fifo), count=2)
    assert len(children) == 2
    rig.streams.stop()  # returns once both ended
    assert rig.streams.open_streams() == 0
    assert wait_for(lambda: sorted(rig.ends) == ["ActuatorStopping", "ActuatorStopping"])
    for s in socks:
        assert frame(s) == {"changed": None, "ended": "ActuatorStopping", "message": ""}
    assert all(reaped(c) for c in children)
    late = rig.open()
    got = frame(late)
    assert got is not None and got["reason"] == "Busy" and "stopping" in got["message"]


def test_stop_reaps_the_monitor_of_a_stream_stuck_in_a_send(rig: Rig) -> None:
    """SIGTERM while the client has stopped reading: the stream's thread is stuck in a
    send (up to the connection's timeout), and `stop` still kills and reaps its
    monitor after its own wait, so root leaves no nft behind when it exits."""
    sock = rig.open(send_timeout=60.0, send_buffer=4096)
    assert frame(sock) is not None
    [child] = children_running(str(rig.fifo))
    until = time.monotonic() + 3.0  # notices until the server's small buffer is full
    while time.monotonic() < until:
        rig.change()
        time.sleep(0.02)
    rig.streams.stop(timeout=0.5)
    assert rig.streams.open_streams() == 1, "the stream is still stuck in its send"
    assert wait_for(lambda: reaped(child))
    sock.close()  # the send fails; the stream's thread ends
    assert wait_for(lambda: rig.streams.open_streams() == 0)


@pytest.mark.parametrize(("argv", "says"), [
    (["false"], "exited with 1 before it was listening"),
    (["/nonexistent/nft"], "cannot start"),
])
def test_a_monitor_that_cannot_listen_is_an_error_reply(
    tmp_path: Path, argv: list[str], says: str
) -> None:
    rig = Rig(tmp_path, argv=argv)
    rig.streams = WatchStreams(argv=argv, subscribed=lambda _pid: False, ready_timeout=5.0)
    sock = rig.open()
    got = frame(sock)
    assert got is not None and got["status"] == "error"
    assert got["reason"] == "WatchUnavailable" and says in got["message"], got
    assert wait_for(lambda: rig.ends == ["MonitorFailed"])


def test_monitor_subscribed_reads_the_netlink_table_of_a_process() -> None:
    # This process holds no netfilter socket in the nftables group.
    assert monitor_subscribed(os.getpid()) is False
    assert monitor_subscribed(2**22 + 1) is False  # no such process


# -- the request on the wire ---------------------------------------------------------------
def test_the_watch_request_parses_and_unknown_kinds_are_named() -> None:
    assert parse_request(b'{"watch": "nftables"}') == WatchRequest(watch="nftables")
    bad = parse_request(b'{"watch": "conntrack"}')
    assert isinstance(bad, PolicyDecision) and bad.reason is Refusal.InvalidParams
    newer = parse_request(b'{"subscribe": {"what": "units"}}')
    assert isinstance(newer, PolicyDecision) and newer.reason is Refusal.UnknownRequest
    assert "'subscribe'" in newer.message and "older than the agent" in newer.message
    assert isinstance(parse_request(b'{"observe": ["nft"]}'), ObserveRequest)
    assert isinstance(parse_request(b'{"offer_baseline": "{}"}'), OfferBaselineRequest)
    # two unknown keys: not one request of an unknown kind, just malformed
    two = parse_request(b'{"a": 1, "b": 2}')
    assert isinstance(two, PolicyDecision) and two.reason is Refusal.MalformedRequest


# -- through the server: a stream holds no request slot --------------------------------------
def test_an_open_stream_leaves_the_request_slots_to_requests(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """...and outlives the request timeout: a quiet ruleset is not a slow client."""
    monkeypatch.setattr(server_module, "CONNECTION_TIMEOUT", 0.3)
    fifo = tmp_path / "changes.fifo"
    os.mkfifo(fifo)
    handler = env.server().handler
    server = ActuatorServer(
        bind_path_socket(env.socket), handler, max_connections=1,
        streams=WatchStreams(argv=[sys.executable, "-c", ECHO_FIFO, str(fifo)],
                             subscribed=lambda _pid: True))
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            server.serve_one(0.1)

    threading.Thread(target=loop, daemon=True).start()
    client = ActuatorClient(env.socket, timeout=DEADLINE)
    stream = client.watch_nftables()
    try:
        for _ in range(3):  # one request slot only, and the stream is open
            # (the previous request's thread gives its slot back just after replying)
            assert wait_for(lambda: server.in_flight() == 1), "only the stream is in flight"
            assert client.observe(["nft", "-j", "list", "ruleset"]).exit_code == 0
        time.sleep(1.0)  # bounded: more than three request timeouts of quiet
        writer = os.open(fifo, os.O_WRONLY)
        os.write(writer, b"change\n")
        assert stream.next() == WatchNotice(changed="ruleset")
        with pytest.raises(ActuatorRefused) as busy:
            client.watch_nftables()
        assert busy.value.reason is Refusal.Busy
        os.close(writer)
        assert stream.next().ended == "MonitorExited"
    finally:
        stream.close()
        stop.set()
        server.streams.stop()
        server.join(5)
        server.listener.close()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# -- the agent's watch against an actuator that predates watch streams ----------------------
OLD_REFUSAL = (b'{"status":"refused","reason":"MalformedRequest","message":"request must be '
               b'{\\"action\\": {...}}, {\\"observe\\": [...]} or {\\"offer_baseline\\": ...}",'
               b'"result":null,"completed":null,"baseline_version":null}')


def test_an_actuator_without_watch_streams_makes_the_watch_unavailable_at_the_cap(
    tmp_path: Path,
) -> None:
    """What the actuator before watch streams answered, byte for byte."""
    assert ActuatorReply.model_validate_json(OLD_REFUSAL).reason is Refusal.MalformedRequest
    path = tmp_path / "old.sock"
    listener = bind_path_socket(path)
    asked: list[bytes] = []

    def old_actuator() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                asked.append(recv_frame(conn, 1 << 16))
                conn.sendall(encode_frame(OLD_REFUSAL))

    threading.Thread(target=old_actuator, daemon=True).start()
    hints: list[str] = []
    watch = ActuatorNftWatch(hints.append, client=ActuatorClient(path))
    watch.set_targets({"firewall": WatchTargets.of(nftables=True)})
    watch.start()
    try:
        assert wait_for(lambda: watch.health().failures == 1)
        health = watch.health()
        assert not health.up and health.reason == "Unavailable"
        assert "does not offer nftables watches (MalformedRequest" in health.message
        time.sleep(1.0)  # bounded look: the next try is at the cap (>= 30 s), not at 1 s
        assert asked == [b'{"watch":"nftables"}'] and hints == []
    finally:
        watch.stop()
        listener.close()


def test_a_stream_admitted_as_stop_runs_is_waited_for(rig: Rig) -> None:
    """SIGTERM's `stop` racing a stream being admitted: `stop` must not return (and
    the actuator exit) before that stream is counted, or its monitor (a new
    session) would outlive the actuator. The race is forced: `stop` starts from
    inside the admission, where the old code checked "stopping" before it and
    counted the stream after it."""
    real = rig.streams._slots
    stop_returned_early: list[bool] = []

    class RacingSlots:
        def acquire(self, blocking: bool = True) -> bool:
            stopper = threading.Thread(target=rig.streams.stop, daemon=True)
            stopper.start()
            stopper.join(0.5)  # time enough for a stop that does not wait for us
            stop_returned_early.append(not stopper.is_alive())
            return real.acquire(blocking)

        def release(self) -> None:
            real.release()

    rig.streams._slots = RacingSlots()  # type: ignore[assignment]
    client = rig.open()
    try:
        assert wait_for(lambda: bool(stop_returned_early))
        assert stop_returned_early == [False], "stop returned before the stream was counted"
        assert wait_for(lambda: rig.ends != [])
        assert rig.streams.open_streams() == 0
        assert _children(str(rig.fifo)) == []
    finally:
        client.close()


HEARTBEAT = {"changed": None, "ended": None, "message": ""}


def test_an_idle_stream_sends_heartbeats_and_changes_still_come_first(tmp_path: Path) -> None:
    """Nothing changes for a while: the actuator says it is still there (a frame with
    neither change nor end), so a client can tell a quiet ruleset from a wedged
    actuator. A heartbeat is never a change."""
    rig = Rig(tmp_path, heartbeat=0.3)
    try:
        sock = rig.open()
        first = frame(sock)
        assert first is not None and first["watching"] == "nftables"
        assert [frame(sock, 5.0) for _ in range(3)] == [HEARTBEAT] * 3
        rig.change()
        got = frame(sock, 5.0)
        while got == HEARTBEAT:
            got = frame(sock, 5.0)
        assert got == NOTICE
    finally:
        rig.streams.stop()


def test_a_silent_actuator_takes_the_watch_down_instead_of_leaving_it_live(
    tmp_path: Path,
) -> None:
    """An actuator that opened the stream and then says nothing, not even heartbeats
    (wedged, stopped): the watch goes down (polling covers it) and tries again."""
    path = tmp_path / "wedged.sock"
    listener = bind_path_socket(path)
    held: list[socket.socket] = []

    def wedged_actuator() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            recv_frame(conn, 1 << 16)
            conn.sendall(encode_frame(b'{"status":"ok","watching":"nftables"}'))
            held.append(conn)  # open, silent

    threading.Thread(target=wedged_actuator, daemon=True).start()
    watch = ActuatorNftWatch(lambda _k: None, client=ActuatorClient(path), silence_timeout=0.5)
    watch.set_targets({"firewall": WatchTargets.of(nftables=True)})
    watch.start()
    try:
        assert wait_for(lambda: watch.health().up)
        assert wait_for(lambda: watch.health().failures >= 1), watch.health()
        health = watch.health()
        assert not health.up and health.reason == "Lost" and "silent" in health.message, health
    finally:
        watch.stop()
        listener.close()
        for c in held:
            c.close()
