"""Watch streams of the root actuator: change notices of the live nftables ruleset.

The unprivileged agent cannot listen to nftables (that needs CAP_NET_ADMIN),
so for a `{"watch": "nftables"}` request the actuator runs `nft -j monitor
ruleset` (fixed argv, no shell, found on PATH like every other command the
actuator runs) for that connection only, and turns its output into frames
that carry **no ruleset data**: nft's lines are read and dropped unparsed, and
the agent is told only `{"changed": "ruleset"}`. What changed it learns the
way it always does, through the allowlisted reads (the controllers list the
ruleset again). The stream:

* says "ready" (`ActuatorReply` with `watching`) only once nft's netlink socket
  has joined the nftables multicast group (read from `/proc/PID/net/netlink`;
  after `READY_TIMEOUT` a still-running nft is taken as listening), so a
  change after "ready" is never missed; the agent resyncs on it;
* coalesces: at most one notice per `NOTICE_INTERVAL` (a flush of a thousand
  rules is one or two notices), so the agent's wake-ups are bounded whatever
  happens to the ruleset;
* ends when the client goes away (its end of the socket is watched next to
  nft's output, so a vanished agent ends the stream at once, not at the next
  change), when the client sends anything (it has nothing more to say), when
  a notice cannot be sent within the connection's timeout (a client that
  stopped reading), when nft exits (last frame `ended: MonitorExited`), or
  when the actuator stops (`ended: ActuatorStopping`). In every case nft is
  killed and reaped before the stream's thread returns.

At most `MAX_WATCH_STREAMS` streams run at once, counted apart from the
server's request slots: an open stream never holds a slot a request needs,
and a second stream is refused (`Busy`) instead of spawning more monitors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from reconciler.actuator.host import command_env
from reconciler.actuator.protocol import (
    HEARTBEAT_INTERVAL,
    NOTICE_INTERVAL,
    ActuatorReply,
    PolicyDecision,
    Refusal,
    WatchEnd,
    WatchNotice,
    refused,
    send_json,
)

log = logging.getLogger("compliance_agent.actuator")

NFT_MONITOR_ARGV = ("nft", "-j", "monitor", "ruleset")
MAX_WATCH_STREAMS = 1  # one agent, one stream; a restarted agent's old one ends at once
READY_TIMEOUT = 2.0  # seconds to wait for nft to subscribe before saying ready anyway
REAP_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0  # how long `stop` waits for the streams to end
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES_MASK = 1 << (7 - 1)  # group 7, as the first word of /proc's Groups column


def monitor_subscribed(pid: int) -> bool:
    """Whether process `pid` holds a netfilter netlink socket that joined the nftables
    group: the moment `nft monitor` starts hearing changes."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        sockets = set()
        for fd in fds:
            with contextlib.suppress(OSError):
                sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        with open(f"/proc/{pid}/net/netlink") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        cols = row.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if (len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER)
                and int(cols[3], 16) & NFNLGRP_NFTABLES_MASK
                and f"socket:[{cols[9]}]" in sockets):
            return True
    return False


class WatchStreams:
    """The actuator's watch streams: each runs on the thread of its connection
    (`serve` blocks until the stream ends); `stop` ends them all."""

    def __init__(
        self,
        *,
        argv: Sequence[str] = NFT_MONITOR_ARGV,
        env: Mapping[str, str] | None = None,
        limit: int = MAX_WATCH_STREAMS,
        interval: float = NOTICE_INTERVAL,
        heartbeat: float = HEARTBEAT_INTERVAL,
        ready_timeout: float = READY_TIMEOUT,
        subscribed: Callable[[int], bool] = monitor_subscribed,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._argv = list(argv)
        self._env = command_env(env)
        self._limit = limit
        self._interval = interval
        self._heartbeat = heartbeat
        self._ready_timeout = ready_timeout
        self._subscribed = subscribed
        self._monotonic = monotonic
        self._slots = threading.BoundedSemaphore(limit)
        self._stopping = threading.Event()
        # stop() writes one byte and nobody reads it: every stream's select wakes for good
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Condition()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._open = 0

    def open_streams(self) -> int:
        with self._lock:
            return self._open

    def serve(self, conn: socket.socket) -> str:
        """Run one stream on `conn` (an admitted watch request) until it ends; the
        end's reason, for the actuator's log."""
        # The stop check and the count under one lock: a stream admitted just as
        # `stop` runs is counted before `stop` waits, so its monitor is reaped too.
        with self._lock:
            stopping = self._stopping.is_set()
            admitted = not stopping and self._slots.acquire(blocking=False)
            if admitted:
                self._open += 1
        if stopping:
            _send(conn, refused(PolicyDecision(Refusal.Busy, "the actuator is stopping")))
            return "Stopping"
        if not admitted:
            _send(conn, refused(PolicyDecision(
                Refusal.Busy, f"{self._limit} watch stream(s) already open; retry later")))
            return "Busy"
        try:
            return self._run(conn)
        finally:
            self._slots.release()  # before the count: "none open" means a slot is free
            with self._lock:
                self._open -= 1
                self._lock.notify_all()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End every stream (`ended: ActuatorStopping`) and wait for their monitors to
        be reaped; refuse new ones."""
        with self._lock:
            self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        with self._lock:
            self._lock.wait_for(lambda: self._open == 0, timeout)
            left = list(self._procs)
        for proc in left:  # a stream stuck in a send: its monitor goes anyway
            _kill(proc)

    # -- one stream ---------------------------------------------------------------------
    def _run(self, conn: socket.socket) -> str:
        try:
            proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    env=self._env, close_fds=True, start_new_session=True)
        except OSError as e:  # no nft on PATH, not executable
            _send(conn, _unavailable(f"{self._argv[0]}: cannot start ({e.strerror or e})"))
            return "MonitorFailed"
        with self._lock:
            self._procs.add(proc)
        try:
            if not self._await_listening(proc):
                _send(conn, _unavailable(
                    f"{self._argv[0]} monitor exited with {proc.wait(REAP_TIMEOUT)} "
                    "before it was listening"))
                return "MonitorFailed"
            if not _send(conn, ActuatorReply(status="ok", watching="nftables")):
                return "ClientGone"
            return self._pump(conn, proc)
        finally:
            _kill(proc)
            with self._lock:
                self._procs.discard(proc)

    def _await_listening(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once nft subscribed (or still runs after `ready_timeout`); False if it exited."""
        deadline = self._monotonic() + self._ready_timeout
        while proc.poll() is None:
            if self._subscribed(proc.pid) or self._monotonic() >= deadline \
                    or self._stopping.is_set():
                return proc.poll() is None
            time.sleep(0.01)  # nft subscribes within milliseconds of starting
        return False

    def _pump(self, conn: socket.socket, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        out = proc.stdout.fileno()
        pending = False
        last_sent = float("-inf")
        last_frame = self._monotonic()  # any frame, heartbeats included
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            sel.register(conn, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                due = last_frame + self._heartbeat
                if pending:
                    due = min(due, last_sent + self._interval)
                ready = {key.fd for key, _ in sel.select(max(0.0, due - self._monotonic()))}
                if self._stopping.is_set():
                    _send(conn, WatchNotice(ended=WatchEnd.ActuatorStopping))
                    return "ActuatorStopping"
                if conn.fileno() in ready:
                    try:
                        data = conn.recv(64)
                    except OSError:
                        data = b""
                    return "ClientSentData" if data else "ClientGone"
                if out in ready:
                    if os.read(out, 65536):  # dropped unread: a notice, never data
                        pending = True
                    else:
                        code = _kill(proc)
                        _send(conn, WatchNotice(ended=WatchEnd.MonitorExited,
                                                message=f"nft monitor exited with {code}"))
                        return "MonitorExited"
                if pending and self._monotonic() - last_sent >= self._interval:
                    if not _send(conn, WatchNotice(changed="ruleset")):
                        return "ClientGone"
                    last_sent = last_frame = self._monotonic()
                    pending = False
                elif self._monotonic() - last_frame >= self._heartbeat:
                    if not _send(conn, WatchNotice()):  # alive, nothing changed
                        return "ClientGone"
                    last_frame = self._monotonic()


def _unavailable(message: str) -> ActuatorReply:
    return ActuatorReply(status="error", reason=Refusal.WatchUnavailable, message=message)


def _send(conn: socket.socket, frame: ActuatorReply | WatchNotice) -> bool:
    try:
        send_json(conn, frame)
    except OSError:  # gone, or not reading within the connection's timeout
        return False
    return True


def _kill(proc: subprocess.Popen[bytes]) -> int | None:
    """Kill and reap the monitor (it never exits by itself while the ruleset is quiet)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    try:
        code = proc.wait(REAP_TIMEOUT)
    except subprocess.TimeoutExpired:  # a SIGKILLed process: only if the kernel is stuck
        log.error("nft monitor %d did not exit after SIGKILL", proc.pid)
        return None
    if proc.stdout is not None:
        proc.stdout.close()
    return code
