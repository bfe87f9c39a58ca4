"""The root actuator: runs typed actions for the unprivileged agent, over a unix socket.

The network-facing agent runs as an unprivileged user; if it is compromised,
all it can ask of root is one of the typed actions in `specs.actions`, for a
target the current baseline names, at a time the maintenance window allows.
This process is that gate. Per connection it:

1. checks the peer with SO_PEERCRED (root or the agent's user only);
2. reads ONE length-prefixed JSON request (size-capped, see
   `reconciler.actuator.protocol`), parses it into a typed action;
3. asks `ActuatorPolicy` whether the baseline allows it now;
4. runs it through `reconciler.actuator.local.LocalActuator` (fixed argv, no shell)
   and replies with the `ActionResult`, or with a refusal and its reason.

Connections are served one at a time on purpose: two host changes (an nft
transaction and a rebuild, say) never interleave. Every request is logged
with the peer's uid, the action and the verdict.

The listening socket comes from systemd socket activation (LISTEN_FDS /
LISTEN_PID, fd 3) or, for tests and manual runs, from `--socket PATH`.

What is admitted is decided in `reconciler.actuator.protocol` (parse_request,
ActuatorPolicy), kept free of sockets so it is tested without any.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pwd
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.actuator import nft_sandbox
from reconciler.actuator.local import LocalActuator
from reconciler.actuator.protocol import (
    MAX_REQUEST_BYTES,
    ActuatorPolicy,
    ActuatorReply,
    FrameError,
    ObserveRequest,
    Refusal,
    Verdict,
    parse_request,
    recv_frame,
    send_json,
)
from reconciler.actuator.result import Actuator
from specs.baseline import (
    BASELINE_PAYLOAD_TYPE,
    Baseline,
    BaselineError,
    load_baseline,
    parse_baseline,
)
from specs.config import AgentConfig
from specs.host import Host, HostError
from specs.window import MaintenanceWindow

log = logging.getLogger("compliance_agent.actuator")

SD_LISTEN_FDS_START = 3
DEFAULT_AGENT_USER = "compliance-agent"
CONNECTION_TIMEOUT = 10.0  # seconds a peer has to send its request

# --- baselines ---------------------------------------------------------------------------


class BaselineSource:
    """The baselines the agent may currently be enforcing.

    The local file (`baselinePath`) always counts. The last good signed
    baseline the agent persisted counts too, but only after its DSSE
    signature is verified again here: the agent's state database is written
    by the unprivileged process, so its content is not trusted as such.
    Read on every request: the files are small and a stale policy is worse.
    """

    def __init__(self, baseline_path: Path, database_path: Path | None, trusted_keys: list[str]):
        self.baseline_path = baseline_path
        self.database_path = database_path
        self.trusted_keys = trusted_keys

    def load(self) -> list[Baseline]:
        out: list[Baseline] = []
        try:
            out.append(load_baseline(self.baseline_path))
        except BaselineError as e:
            log.warning("local baseline unusable: %s", e)
        remote = self._remote()
        if remote is not None:
            out.append(remote)
        return out

    def _remote(self) -> Baseline | None:
        if self.database_path is None or not self.database_path.exists():
            return None
        import sqlite3  # only when a DB exists (keeps the actuator's start cheap)

        from reconciler.trust.dsse import TrustError, verify_envelope

        try:
            uri = f"file:{self.database_path}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=2.0)) as db:
                row = db.execute("SELECT envelope FROM remote_baseline WHERE id = 1").fetchone()
        except sqlite3.Error:
            return None  # no signed baseline persisted (yet): the local file governs
        if row is None:
            return None
        raw = row[0] if isinstance(row[0], bytes) else str(row[0]).encode()
        try:
            payload = verify_envelope(raw, BASELINE_PAYLOAD_TYPE, self.trusted_keys)
            return parse_baseline(json.loads(payload), "remote baseline")
        except (TrustError, BaselineError, ValueError) as e:
            log.warning("persisted signed baseline ignored: %s", e)
            return None


# --- requests ----------------------------------------------------------------------------


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
    """Decides and executes one request; no socket I/O here."""

    def __init__(
        self,
        *,
        policy: ActuatorPolicy,
        baselines: Callable[[], list[Baseline]],
        actuator: Actuator,
        observer: Host,
        allowed_uids: frozenset[int],
    ) -> None:
        self.policy = policy
        self.baselines = baselines
        self.actuator = actuator
        self.observer = observer  # runs the allowlisted privileged reads
        self.allowed_uids = allowed_uids

    def handle(
        self, peer: Peer, body: bytes | None, frame_error: FrameError | None
    ) -> ActuatorReply:
        reply, what = self._decide(peer, body, frame_error)
        log.info(
            "request peer_uid=%d peer_pid=%d action=%s verdict=%s%s",
            peer.uid, peer.pid, what,
            reply.status if reply.reason is None else f"{reply.status}:{reply.reason}",
            f" ({reply.message})" if reply.status != "ok" else "",
        )
        return reply

    def _decide(
        self, peer: Peer, body: bytes | None, frame_error: FrameError | None
    ) -> tuple[ActuatorReply, str]:
        """The reply, and what was asked (for the log line)."""
        if peer.uid not in self.allowed_uids:
            return _refused(
                Verdict(Refusal.PeerNotAllowed, f"uid {peer.uid} may not use the actuator")
            ), "-"
        if frame_error is not None or body is None:
            reason = frame_error.reason if frame_error else Refusal.MalformedRequest
            return _refused(Verdict(reason, str(frame_error or "no request"))), "-"
        request, verdict = parse_request(body)
        if verdict is not None or request is None:
            return _refused(verdict or Verdict(Refusal.MalformedRequest, "no request")), "-"
        baselines = self.baselines()
        what = (
            "observe:" + " ".join(request.observe)[:120]
            if isinstance(request, ObserveRequest) else request.action.key
        )
        if not baselines:
            return _refused(
                Verdict(
                    Refusal.BaselineUnavailable,
                    "no valid baseline (check baselinePath); nothing is allowed without one",
                )
            ), what
        try:
            if isinstance(request, ObserveRequest):
                return self._observe(request, baselines), what
            verdict = self.policy.check(request.action, baselines)
            if verdict is not None:
                return _refused(verdict), what
            result = self.actuator.execute(request.action, request.step_start)
        except Exception as e:  # a bug must not kill root's gate; the agent sees an error
            log.exception("handling %s failed", what)
            return ActuatorReply(status="error", reason=Refusal.InternalError, message=str(e)), what
        return ActuatorReply(status="ok", result=result), what

    def _observe(self, request: ObserveRequest, baselines: list[Baseline]) -> ActuatorReply:
        argv, verdict = self.policy.check_observe(
            request.observe, baselines, nft_sandbox.script_argv())
        if verdict is not None or argv is None:
            return _refused(verdict or Verdict(Refusal.ObservationNotAllowed, "not allowed"))
        try:
            done = self.observer.run(argv, timeout=request.timeout)
        except HostError as e:  # timeout or missing tool: the agent sees it as a host error
            return ActuatorReply(status="error", reason=Refusal.InternalError, message=str(e))
        # Report the argv the agent asked for, so its parsers and evidence stay unchanged.
        shown = done.model_copy(update={"argv": request.observe})
        return ActuatorReply(status="ok", completed=shown)


def _refused(verdict: Verdict) -> ActuatorReply:
    return ActuatorReply(status="refused", reason=verdict.reason, message=verdict.message)


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
    def __init__(self, listener: socket.socket, handler: RequestHandler) -> None:
        self.listener = listener
        self.handler = handler

    def serve_one(self, timeout: float | None = None) -> bool:
        """Serve one connection; False if none arrived within `timeout` seconds."""
        self.listener.settimeout(timeout)
        try:
            conn, _ = self.listener.accept()
        except TimeoutError:
            return False
        with conn:
            conn.settimeout(CONNECTION_TIMEOUT)
            peer = peer_credentials(conn)
            body: bytes | None = None
            frame_error: FrameError | None = None
            if peer.uid in self.handler.allowed_uids:  # never read a stranger's bytes
                try:
                    body = recv_frame(conn, MAX_REQUEST_BYTES)
                except FrameError as e:
                    frame_error = e
                except (TimeoutError, OSError) as e:
                    frame_error = FrameError(Refusal.MalformedRequest, f"reading request: {e}")
            reply = self.handler.handle(peer, body, frame_error)
            with contextlib.suppress(OSError):  # the peer may have gone; nothing to tell it
                send_json(conn, reply)
        return True

    def serve_forever(self, idle_exit: float | None = None) -> None:
        """Serve until idle for `idle_exit` seconds (socket activation restarts us)."""
        while self.serve_one(idle_exit):
            pass


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
    allow_user: str | None = DEFAULT_AGENT_USER,
    host: Host | None = None,
    actuator: Actuator | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ActuatorServer:
    policy = ActuatorPolicy(
        egress_table=config.egress_table,
        window=MaintenanceWindow.parse(config.maintenance_window),
        allow_disruptive_outside_window=config.allow_disruptive_outside_window,
        clock=clock,
    )
    source = BaselineSource(config.baseline_path, config.database_path, config.mcp_public_keys)
    if host is None:
        from reconciler.actuator.host import LocalHost

        host = LocalHost()
    if actuator is None:
        actuator = LocalActuator(
            host, rebuild_health_timeout=float(config.rebuild_health_check_timeout)
        )
    handler = RequestHandler(
        policy=policy, baselines=source.load, actuator=actuator, observer=host,
        allowed_uids=allowed_uids_for(allow_user),
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
    server = build_server(config, listener, allow_user=args.allow_user)
    log.info("actuator ready (egress table %s, window %s)",
             config.egress_table, config.maintenance_window)
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
