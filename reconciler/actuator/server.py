"""The root actuator: runs typed actions for the unprivileged agent, over a unix socket.

The network-facing agent runs as an unprivileged user; if it is compromised,
all it can ask of root is one of the typed actions in `specs.actions`, for a
target the current baseline names, at a time the maintenance window allows.
This process is that gate. Per connection it:

1. checks the peer with SO_PEERCRED (root or the agent's user only);
2. reads ONE length-prefixed JSON request (size-capped, see
   `reconciler.actuator.protocol`) and parses it;
3. decides from its own root-owned inputs only (`ActuatorBaselines`: the
   local baseline and the newest signed baseline it verified itself;
   `ActuatorPolicy`: its own disruptive table, its own DNS resolution of the
   egress allowlist, the block devices the encryption spec names);
4. runs an admitted action through `reconciler.actuator.local.LocalActuator`
   (fixed argv, no shell) and replies with the `ActionResult`, or with a
   refusal and its stable reason.

A `{"watch": "nftables"}` request turns its connection into a stream of
change notices (reconciler.actuator.watch_stream): the connection gives its
request slot back and holds one of the few watch slots instead, and is not
subject to the request timeout; SIGTERM ends the streams (their `nft monitor`
children killed and reaped) before the process exits.

A NixosRebuild is a journaled transaction (reconciler.actuator.rebuild): when
the actuator starts, it resumes one an earlier process left open (the switch
restarted this unit, or it was killed) in the background while it serves; a
rebuild result is marked delivered once its reply was written to the socket.

Each connection is served on its own thread (at most `MAX_CONNECTIONS`, the
rest get `Busy` at once), so a slow read never blocks the others; host
changes still never interleave (one lock around `execute`). Every request is
logged with the peer's uid, what was asked and the verdict.

The listening socket comes from systemd socket activation (LISTEN_FDS /
LISTEN_PID, fd 3) or, for tests and manual runs, from `--socket PATH`. In the
NixOS module it lives in a root-owned directory the agent cannot write
(`/run/compliance-agent-actuator`), so the agent can neither replace it with
a symlink nor put its own socket in its place.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.actuator import nft_sandbox
from reconciler.actuator.backup_reads import is_repository_check
from reconciler.actuator.baselines import ActuatorBaselines, BaselineOfferRefused
from reconciler.actuator.devices import BlockDevices
from reconciler.actuator.local import LocalActuator
from reconciler.actuator.policy import ActuatorPolicy, Resolver, SystemResolver
from reconciler.actuator.protocol import (
    MAX_OBSERVE_TIMEOUT,
    MAX_REQUEST_BYTES,
    ActuatorReply,
    CollectFinishedRequest,
    FrameError,
    ObserveRequest,
    OfferBaselineRequest,
    PolicyDecision,
    Refusal,
    WatchRequest,
    parse_request,
    recv_frame,
    refused,
    send_json,
)
from reconciler.actuator.rebuild import RebuildTransactions
from reconciler.actuator.result import Actuator
from reconciler.actuator.transaction import JOURNAL_FILE, TransactionJournal
from reconciler.actuator.watch_stream import WatchStreams
from specs.baseline import Baseline
from specs.config import AgentConfig
from specs.host import Host, HostError
from specs.window import MaintenanceWindow

log = logging.getLogger("compliance_agent.actuator")

SD_LISTEN_FDS_START = 3
DEFAULT_AGENT_USER = "compliance-agent"
DEFAULT_STATE_DIRECTORY = Path("/var/lib/compliance-agent-actuator")
CONNECTION_TIMEOUT = 10.0  # seconds a peer has to send its whole request
MAX_CONNECTIONS = 8  # served at once; more get an immediate Busy refusal


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_credentials(conn: socket.socket) -> Peer:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


class RequestHandler:
    """Decides and executes one request; no socket I/O here. Thread-safe: host
    changes take `change_lock`, so two never interleave, while reads and
    baseline offers proceed next to a long rebuild."""

    def __init__(
        self,
        *,
        policy: ActuatorPolicy,
        baselines: ActuatorBaselines,
        actuator: Actuator,
        observer: Host,
        allowed_uids: frozenset[int],
        rebuilds: RebuildTransactions | None = None,
    ) -> None:
        self.policy = policy
        self.baselines = baselines
        self.actuator = actuator
        self.observer = observer  # runs the allowlisted privileged reads
        self.allowed_uids = allowed_uids
        self.rebuilds = rebuilds  # the journaled rebuild transactions `actuator` runs
        self.change_lock = threading.Lock()
        # Reads longer than the short cap (backup reads) run one at a time per lane,
        # so a compromised agent cannot hold every connection slot with them; a
        # repository check (up to its job's hour) has its own lane, so the snapshot
        # listing of an agent restarted meanwhile is not Busy until it ends.
        self.long_reads = {lane: threading.BoundedSemaphore(1) for lane in ("check", "read")}

    def resume(self) -> None:
        """Finish a rebuild transaction an earlier actuator process left open (a
        switch that restarted this unit, a crash); host changes wait for it."""
        if self.rebuilds is None:
            return
        try:
            with self.change_lock:
                self.rebuilds.resume()
        except Exception:  # logged; the next rebuild request resumes it again
            log.exception("resuming the rebuild transaction failed")

    def sent(self, reply: ActuatorReply) -> None:
        """`reply` was written to the agent's socket: its rebuild result is delivered."""
        if self.rebuilds is not None and reply.result is not None:
            try:
                self.rebuilds.acknowledge(reply.result)
            except Exception:
                log.exception("recording the rebuild result as delivered failed")

    def handle(
        self, peer: Peer, body: bytes | None, frame_error: FrameError | None
    ) -> ActuatorReply:
        reply, what = self._decide(peer, body, frame_error)
        log.info(
            "request peer_uid=%d peer_pid=%d action=%s verdict=%s%s",
            peer.uid, peer.pid, _one_line(what),
            reply.status if reply.reason is None else f"{reply.status}:{reply.reason}",
            f" ({_one_line(reply.message)})" if reply.status != "ok" else "",
        )
        return reply

    def _decide(
        self, peer: Peer, body: bytes | None, frame_error: FrameError | None
    ) -> tuple[ActuatorReply, str]:
        """The reply, and what was asked (for the log line)."""
        if peer.uid not in self.allowed_uids:
            return refused(
                PolicyDecision(Refusal.PeerNotAllowed, f"uid {peer.uid} may not use the actuator")
            ), "-"
        if frame_error is not None or body is None:
            reason = frame_error.reason if frame_error else Refusal.MalformedRequest
            return refused(PolicyDecision(reason, str(frame_error or "no request"))), "-"
        request = parse_request(body)
        if isinstance(request, PolicyDecision):
            return refused(request), "-"
        try:
            if isinstance(request, OfferBaselineRequest):
                return self._offer(request), "offer_baseline"
            if isinstance(request, CollectFinishedRequest):
                # the agent's own past action's outcome: no baseline needed to hand it back
                found = self.rebuilds.undelivered() if self.rebuilds is not None else None
                return ActuatorReply(status="ok", result=found), "collect_finished"
            if isinstance(request, WatchRequest):  # admitted; the server runs the stream
                return ActuatorReply(status="ok", watching=request.watch), \
                    f"watch:{request.watch}"
            baseline = self.baselines.applicable()
            what = (
                "observe:" + " ".join(request.observe)[:120]
                if isinstance(request, ObserveRequest) else request.action.key
            )
            if baseline is None:
                return refused(
                    PolicyDecision(
                        Refusal.BaselineUnavailable,
                        "no valid baseline (check baselinePath); nothing is allowed without one",
                    )
                ), what
            if isinstance(request, ObserveRequest):
                return self._observe(request, baseline), what
            decision = self.policy.check(request.action, baseline)
            if decision is not None:
                return refused(decision), what
            with self.change_lock:
                result = self.actuator.execute(request.action, request.step_start)
        except Exception as e:  # a bug must not kill root's gate; the agent sees an error
            log.exception("handling a request failed")
            return ActuatorReply(status="error", reason=Refusal.InternalError,
                                 message=type(e).__name__), "-"
        return ActuatorReply(status="ok", result=result), what

    def _offer(self, request: OfferBaselineRequest) -> ActuatorReply:
        try:
            version = self.baselines.offer(request.offer_baseline.encode())
        except BaselineOfferRefused as e:
            reason = Refusal(e.reason) if e.reason in Refusal.__members__ else Refusal.Malformed
            return refused(PolicyDecision(reason, e.message[:500]))
        return ActuatorReply(status="ok", baseline_version=version)

    def _observe(self, request: ObserveRequest, baseline: Baseline) -> ActuatorReply:
        argv = self.policy.check_observe(request.observe, baseline, nft_sandbox.script_argv())
        if isinstance(argv, PolicyDecision):
            return refused(argv)
        timeout = self.policy.observe_timeout(request.observe, request.timeout, baseline)
        if isinstance(timeout, PolicyDecision):
            return refused(timeout)
        lane = None
        if timeout > MAX_OBSERVE_TIMEOUT:
            # admitted above as exactly one of the baseline's backup reads
            check = is_repository_check(request.observe, baseline.backup)
            lane = self.long_reads["check" if check else "read"]
            if not lane.acquire(blocking=False):
                return refused(PolicyDecision(
                    Refusal.Busy, "another long backup read of this kind (a repository "
                    "check, or a listing or restore test) is running; retry when it has "
                    "finished"))
        try:
            done = self.observer.run(argv, timeout=timeout)
        except HostError as e:  # timeout or missing tool: the agent sees it as a host error
            return ActuatorReply(status="error", reason=Refusal.InternalError, message=str(e))
        finally:
            if lane is not None:
                lane.release()
        # Report the argv the agent asked for, so its parsers and evidence stay unchanged.
        shown = done.model_copy(update={"argv": request.observe})
        return ActuatorReply(status="ok", completed=shown)


def _one_line(text: str) -> str:
    """Peer-supplied text as one log line: a newline in it must not forge a record."""
    return text.encode("unicode_escape").decode("ascii")


# --- the socket server -------------------------------------------------------------------


def listen_fd_socket(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The socket systemd passed (sd_listen_fds semantics), or None if not activated."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None  # meant for another process (or absent)
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count != 1:
        raise SystemExit(
            f"expected exactly one socket from systemd, got LISTEN_FDS={count}; "
            "check compliance-agent-actuator.socket"
        )
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # so children don't think they were activated
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def bind_path_socket(path: Path, mode: int = 0o660) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, mode)
    sock.listen(16)
    return sock


class ActuatorServer:
    """Accepts connections and serves each on its own thread, at most
    `max_connections` at once: a slow read (a hung device, a peer that never
    sends) never stops the actuator from answering the others."""

    def __init__(
        self, listener: socket.socket, handler: RequestHandler,
        max_connections: int = MAX_CONNECTIONS, streams: WatchStreams | None = None,
    ) -> None:
        self.listener = listener
        self.handler = handler
        self.streams = streams or WatchStreams()
        self._max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()

    def serve_one(self, timeout: float | None = None) -> bool:
        """Accept one connection and start serving it; False if none arrived in `timeout`."""
        self.listener.settimeout(timeout)
        try:
            conn, _ = self.listener.accept()
        except TimeoutError:
            return False
        conn.settimeout(CONNECTION_TIMEOUT)
        if not self._slots.acquire(blocking=False):
            with conn:
                peer = peer_credentials(conn)
                busy = PolicyDecision(Refusal.Busy, f"{self._max_connections} requests in "
                                      "progress; retry shortly")
                self._reply(conn, self.handler.handle(peer, None, FrameError(busy.reason,
                                                                             busy.message)))
            return True
        thread = threading.Thread(target=self._serve, args=(conn,), name="actuator-conn",
                                  daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()
        return True

    def _serve(self, conn: socket.socket) -> None:
        holds_slot = True
        try:
            with conn:
                peer = peer_credentials(conn)
                body: bytes | None = None
                frame_error: FrameError | None = None
                if peer.uid in self.handler.allowed_uids:  # never read a stranger's bytes
                    try:
                        body = recv_frame(conn, MAX_REQUEST_BYTES,
                                          deadline=time.monotonic() + CONNECTION_TIMEOUT)
                    except FrameError as e:
                        frame_error = e
                    except (TimeoutError, OSError) as e:
                        frame_error = FrameError(Refusal.MalformedRequest,
                                                 f"reading request: {e}")
                    conn.settimeout(CONNECTION_TIMEOUT)  # for the reply, and a stream's sends
                reply = self.handler.handle(peer, body, frame_error)
                if reply.status == "ok" and reply.watching is not None:
                    self._slots.release()  # a stream never holds a request's slot
                    holds_slot = False
                    end = self.streams.serve(conn)
                    log.info("watch ended peer_uid=%d peer_pid=%d end=%s",
                             peer.uid, peer.pid, end)
                elif self._reply(conn, reply):
                    self.handler.sent(reply)
        finally:
            if holds_slot:
                self._slots.release()
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    @staticmethod
    def _reply(conn: socket.socket, reply: ActuatorReply) -> bool:
        try:
            send_json(conn, reply)
        except OSError:  # the peer may have gone; nothing to tell it
            return False
        return True

    def resume_in_background(self) -> None:
        """Resume an open rebuild transaction while serving (counted as in flight,
        so an idle exit waits for it)."""
        thread = threading.Thread(target=self._resume, name="actuator-resume", daemon=True)
        with self._threads_lock:
            self._threads.add(thread)
        thread.start()

    def _resume(self) -> None:
        try:
            self.handler.resume()
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def in_flight(self) -> int:
        with self._threads_lock:
            return len(self._threads)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the connections being served to finish."""
        with self._threads_lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    def serve_forever(self, idle_exit: float | None = None) -> None:
        """Serve until idle for `idle_exit` seconds with nothing in flight (socket
        activation starts us again on the next connection)."""
        while self.serve_one(idle_exit) or self.in_flight():
            pass
        self.join()


def stop_on_signals(server: ActuatorServer) -> None:
    """On SIGTERM/SIGINT, end the watch streams (their nft monitors killed and reaped:
    an orphaned monitor would live on until the next ruleset change), then die of
    the signal as before, so systemd sees the same exit as without streams."""

    def on_signal(signum: int, _frame: object) -> None:
        server.streams.stop()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


def allowed_uids_for(user: str | None) -> frozenset[int]:
    uids = {0}
    if user:
        try:
            uids.add(pwd.getpwnam(user).pw_uid)
        except KeyError:
            log.warning("user %r does not exist; only root may use the actuator", user)
    return frozenset(uids)


def build_server(
    config: AgentConfig,
    listener: socket.socket,
    *,
    allowed_uids: frozenset[int],
    state_directory: Path = DEFAULT_STATE_DIRECTORY,
    host: Host | None = None,
    actuator: Actuator | None = None,
    resolver: Resolver | None = None,
    devices: BlockDevices | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ActuatorServer:
    policy = ActuatorPolicy(
        egress_table=config.egress_table,
        allowed_hosts=config.allowed_hosts,
        window=MaintenanceWindow.parse(config.maintenance_window),
        allow_disruptive_outside_window=config.allow_disruptive_outside_window,
        clock=clock,
        resolver=resolver or SystemResolver(),
        devices=devices or BlockDevices(),
    )
    baselines = ActuatorBaselines(
        config.baseline_path, state_directory, config.mcp_public_keys,
        site_id=config.site_id, host_id=config.host_id,
    )
    if host is None:
        from reconciler.actuator.host import LocalHost

        host = LocalHost()
    rebuilds: RebuildTransactions | None = None
    if actuator is None:
        rebuilds = RebuildTransactions(
            host, TransactionJournal(state_directory / JOURNAL_FILE),
            max_health_timeout=float(config.rebuild_health_check_timeout),
            confirm_delivery=True,
        )
        actuator = LocalActuator(host, rebuilds=rebuilds)
    handler = RequestHandler(
        policy=policy, baselines=baselines, actuator=actuator, observer=host,
        allowed_uids=allowed_uids, rebuilds=rebuilds,
    )
    return ActuatorServer(listener, handler)


# --- command line ------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `actuator` to the agent's CLI (`subparsers` from add_subparsers())."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "actuator",
        help="run the privileged actuator (root) behind a unix socket",
        description="Serve typed actions for the unprivileged agent over a unix socket "
        "(socket-activated by systemd, or --socket PATH).",
    )
    p.add_argument("--config", type=Path, required=True, help="agent JSON config file")
    p.add_argument("--socket", type=Path, default=None,
                   help="bind this path instead of using the systemd-activated socket")
    p.add_argument("--allow-user", default=DEFAULT_AGENT_USER,
                   help="besides root, the only user whose connections are served")
    p.add_argument("--state-directory", type=Path,
                   default=Path(os.environ.get("STATE_DIRECTORY", DEFAULT_STATE_DIRECTORY)),
                   help="root-only directory for the accepted signed baseline and its "
                   "high-water mark (default: $STATE_DIRECTORY from systemd, else "
                   f"{DEFAULT_STATE_DIRECTORY})")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after this long without a connection (socket activation)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from specs.config import ConfigError, load_config

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    listener = listen_fd_socket()
    if listener is None:
        if args.socket is None:
            log.error(
                "not socket-activated and no --socket given: start "
                "compliance-agent-actuator.socket, or pass --socket PATH"
            )
            return 2
        listener = bind_path_socket(args.socket)
    server = build_server(config, listener, allowed_uids=allowed_uids_for(args.allow_user),
                          state_directory=args.state_directory)
    log.info("actuator ready (egress table %s, window %s)",
             config.egress_table, config.maintenance_window)
    stop_on_signals(server)
    server.resume_in_background()
    started = time.monotonic()
    server.serve_forever(args.idle_exit)
    log.info("actuator idle, exiting after %.0fs", time.monotonic() - started)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compliance-agent")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(["actuator", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
