"""The agent's side of the privileged actuator: same `execute` API, over a unix socket.

`ActuatorClient(socket_path).execute(action)` returns the `ActionResult` the
root actuator produced, exactly like `LocalActuator.execute` does in-process,
so the reconcile loop does not care which one it holds. What can go wrong is
a small hierarchy:

* `ActuatorRefused`: the actuator's policy said no and nothing ran; `.reason`
  is CamelCase (UnitNotInBaseline, OutsideMaintenanceWindow, ...) and goes
  verbatim into evidence.
* `ActuatorUnavailable`: the socket is missing, refused the connection, or
  the actuator went away mid-request (`ActuatorWentAway`); whether the action
  ran is unknown only in the last case, and the next level-triggered pass
  observes the truth. A `NixosRebuild` is the exception: its switch may
  restart the actuator itself, and the transaction goes on (journaled,
  reconciler.actuator.rebuild), so the client reconnects and asks again for
  up to `REBUILD_REATTACH_WINDOW`; the actuator answers with that
  transaction's result once it is finished, not with a second switch.
* `ActuatorProtocolError`: the reply was not a valid reply (a bug or a
  version mismatch).

`ActuatorClient.watch_nftables()` opens a watch stream (`NoticeStream`):
change notices of the live ruleset, carrying no ruleset data.

`PrivilegedReadHost` is the `specs.host.Host` to hand the controllers in the
privilege-separated deployment: the few reads that need root (listing
nftables, the baseline-ruleset sandbox) go through the actuator, everything
else runs locally as the agent's own user.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from reconciler.actuator.backup_reads import is_backup_read
from reconciler.actuator.policy import DEVICE_READS, is_sandbox_request
from reconciler.actuator.protocol import (
    HEARTBEAT_INTERVAL,
    MAX_BACKUP_READ_TIMEOUT,
    MAX_NOTICE_BYTES,
    MAX_OBSERVE_TIMEOUT,
    MAX_REPLY_BYTES,
    ActuatorReply,
    ActuatorRequest,
    CollectFinishedRequest,
    FrameError,
    ObserveRequest,
    OfferBaselineRequest,
    Refusal,
    WatchNotice,
    WatchRequest,
    recv_frame,
    send_json,
)
from reconciler.actuator.result import ActionResult, skipped_result
from specs.actions import Action, NixosRebuild
from specs.backoff import Backoff
from specs.errors import ComplianceAgentError
from specs.host import Completed, FileStat, Host, HostError
from specs.status import Outcome

log = logging.getLogger(__name__)

# A rebuild (switch + health check + maybe rollback) can take minutes; the
# actuator bounds every command itself, so this is only a backstop.
DEFAULT_TIMEOUT = 1800.0
# Asked before every patching reconcile; root answers from its journal at once, so
# a hung actuator costs this much, not a rebuild's wait.
COLLECT_TIMEOUT = 10.0
REPLY_MARGIN = 30.0  # seconds past a read's own timeout for root to reply
# How long a rebuild request is re-sent after the actuator went away mid-request
# (the switch restarted it; systemd brings it back, and it resumes the transaction).
REBUILD_REATTACH_WINDOW = 300.0
REATTACH_BACKOFF = Backoff(base=0.5, cap=10.0)
# The actuator says "ready" once nft listens (within ~2 s); a slower answer is a failure.
WATCH_READY_TIMEOUT = 15.0
WATCH_SILENCE_TIMEOUT = 3 * HEARTBEAT_INTERVAL  # three heartbeats missed: the actuator is wedged
MAX_WATCH_REPLY_BYTES = 64 * 1024  # the first frame: "ready", or a refusal and its message


class ActuatorError(ComplianceAgentError):
    """Base of everything `ActuatorClient.execute` raises."""


class ActuatorUnavailable(ActuatorError):
    def __init__(self, socket_path: Path, detail: str) -> None:
        self.socket_path = socket_path
        super().__init__(
            f"actuator at {socket_path} unavailable: {detail} "
            "(is compliance-agent-actuator.socket running? 'systemctl status "
            "compliance-agent-actuator.socket')"
        )


class ActuatorWentAway(ActuatorUnavailable):
    """The request was sent, but no complete reply came back."""


class ActuatorRefused(ActuatorError):
    def __init__(self, reason: Refusal, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"actuator refused ({reason}): {message}")


class ActuatorProtocolError(ActuatorError):
    pass


class ActuatorClient:
    """`errors_as_results=True` makes `execute` never raise: a refusal or an
    unreachable actuator becomes a failed ActionResult (outcome `deferred` for
    OutsideMaintenanceWindow) whose error says why, which is what a reconcile
    loop records as evidence and retries with backoff."""

    def __init__(
        self,
        socket_path: Path | str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        errors_as_results: bool = False,
        reattach_window: float = REBUILD_REATTACH_WINDOW,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.errors_as_results = errors_as_results
        self.reattach_window = reattach_window
        self.monotonic = monotonic
        self.sleep = sleep

    def execute(self, action: Action, step_start: int = 1) -> ActionResult:
        if not self.errors_as_results:
            return self._execute(action, step_start)
        try:
            return self._execute(action, step_start)
        except ActuatorRefused as e:
            outcome = Outcome.deferred if e.reason is Refusal.OutsideMaintenanceWindow else None
            refused = skipped_result(action, "refused", f"{e.reason}: {e.message}", step_start)
            return refused.model_copy(update={"outcome": outcome, "error": str(e)})
        except ActuatorError as e:
            failed = skipped_result(action, "failed", str(e), step_start)
            return failed.model_copy(update={"error": str(e)})

    def collect_finished(self, action_type: str) -> ActionResult | None:
        if action_type != "NixosRebuild":  # the one action finished across restarts
            return None
        try:
            reply = self._roundtrip(CollectFinishedRequest(collect_finished=action_type),
                                    wait=COLLECT_TIMEOUT)
        except ActuatorError as e:
            log.warning("asking the actuator for a finished %s: %s", action_type, e)
            return None
        if reply.status != "ok":
            # An actuator older than this request refuses it: it has nothing to hand over.
            log.info("actuator does not hand over finished %s results (%s: %s)",
                     action_type, reply.reason, reply.message)
            return None
        if reply.result is not None:
            log.info("collected a %s that finished while the agent was away: %s",
                     action_type, "kept" if reply.result.ok else reply.result.outcome)
        return reply.result

    def _execute(self, action: Action, step_start: int) -> ActionResult:
        request = ActuatorRequest(action=action, step_start=step_start)
        try:
            reply = self._roundtrip(request)
        except ActuatorWentAway as e:
            if not isinstance(action, NixosRebuild):
                raise
            reply = self._reattach(request, e)
        if reply.status == "ok":
            if reply.result is None:
                raise ActuatorProtocolError("actuator replied ok without a result")
            return reply.result
        reason = reply.reason or Refusal.InternalError
        if reply.status == "refused":
            raise ActuatorRefused(reason, reply.message)
        raise ActuatorProtocolError(f"actuator error ({reason}): {reply.message}")

    def _reattach(self, request: ActuatorRequest, first: ActuatorWentAway) -> ActuatorReply:
        """Re-send a rebuild request until the restarted actuator answers it."""
        log.warning("actuator went away during %s (%s); asking again for its result",
                    request.action.key, first)
        deadline = self.monotonic() + self.reattach_window
        failures = 0
        while True:
            failures += 1
            self.sleep(min(REATTACH_BACKOFF.ceiling(failures),
                           max(deadline - self.monotonic(), 0.0)))
            try:
                return self._roundtrip(request)
            except ActuatorUnavailable:
                if self.monotonic() >= deadline:
                    raise

    def observe(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        """Run one allowlisted read-only command as root; ActuatorRefused if not allowlisted."""
        request = ObserveRequest(observe=list(argv), timeout=timeout)
        # Wait for the reply at least as long as root may run the command.
        reply = self._roundtrip(request, wait=max(self.timeout, timeout + REPLY_MARGIN))
        if reply.status == "ok" and reply.completed is not None:
            return reply.completed
        reason = reply.reason or Refusal.InternalError
        if reply.status == "refused":
            raise ActuatorRefused(reason, reply.message)
        raise ActuatorProtocolError(f"actuator error ({reason}): {reply.message}")

    def offer_baseline(self, envelope: bytes) -> int:
        """Hand a fetched signed baseline to the actuator, which verifies and keeps it
        if newer; the version it now holds, or ActuatorRefused (reason: why not)."""
        reply = self._roundtrip(OfferBaselineRequest(offer_baseline=envelope.decode()))
        if reply.status == "ok" and reply.baseline_version is not None:
            return reply.baseline_version
        reason = reply.reason or Refusal.InternalError
        if reply.status == "refused":
            raise ActuatorRefused(reason, reply.message)
        raise ActuatorProtocolError(f"actuator error ({reason}): {reply.message}")

    def watch_nftables(
        self, ready_timeout: float = WATCH_READY_TIMEOUT,
        silence_timeout: float = WATCH_SILENCE_TIMEOUT,
    ) -> NoticeStream:
        """Open a stream of nftables change notices; returns once the actuator's monitor
        listens. ActuatorRefused if the actuator will not (an older actuator refuses
        the request kind: `UnknownRequest`, or `MalformedRequest` before that kind
        of refusal existed; `Busy`: another stream is open), ActuatorUnavailable if
        it cannot be reached, ActuatorProtocolError for an error reply."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(ready_timeout)
            try:
                sock.connect(str(self.socket_path))
            except OSError as e:
                raise ActuatorUnavailable(self.socket_path, e.strerror or str(e)) from None
            with contextlib.suppress(OSError):  # a refusal may come before the read
                send_json(sock, WatchRequest(watch="nftables"))
            try:
                body = recv_frame(sock, MAX_WATCH_REPLY_BYTES)
            except (FrameError, OSError) as e:
                raise ActuatorWentAway(self.socket_path,
                                       f"no answer to the watch request: {e}") from None
            try:
                reply = ActuatorReply.model_validate_json(body)
            except ValidationError as e:
                raise ActuatorProtocolError(f"invalid reply from actuator: {e}") from None
            if reply.status == "ok" and reply.watching == "nftables":
                return NoticeStream(sock, self.socket_path, silence_timeout)
            reason = reply.reason or Refusal.InternalError
            if reply.status == "refused":
                raise ActuatorRefused(reason, reply.message)
            raise ActuatorProtocolError(f"actuator error ({reason}): {reply.message}")
        except BaseException:
            sock.close()
            raise

    def _roundtrip(
        self,
        request: ActuatorRequest | ObserveRequest | OfferBaselineRequest | CollectFinishedRequest,
        wait: float | None = None,
    ) -> ActuatorReply:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if wait is None else wait)
        try:
            try:
                sock.connect(str(self.socket_path))
            except OSError as e:
                raise ActuatorUnavailable(self.socket_path, e.strerror or str(e)) from None
            # The actuator may reply and hang up before reading (e.g. a refused
            # peer), so a failed send still gets a chance to read that reply.
            send_error: OSError | None = None
            try:
                send_json(sock, request)
            except OSError as e:
                send_error = e
            try:
                body = recv_frame(sock, MAX_REPLY_BYTES)
            except (FrameError, OSError) as e:  # OSError includes TimeoutError
                detail = send_error or e
                raise ActuatorWentAway(
                    self.socket_path, f"no complete reply: {detail or type(detail).__name__}"
                ) from None
        finally:
            sock.close()
        try:
            return ActuatorReply.model_validate_json(body)
        except ValidationError as e:
            raise ActuatorProtocolError(f"invalid reply from actuator: {e}") from None


class NoticeStream:
    """An open watch stream: `next()` blocks until the next notice; `interrupt()`
    (from another thread) makes a blocked `next()` raise; `close()` when done."""

    def __init__(self, sock: socket.socket, socket_path: Path, silence_timeout: float) -> None:
        # An idle actuator sends a heartbeat every HEARTBEAT_INTERVAL: a stream
        # silent for `silence_timeout` has a wedged or stopped actuator behind it.
        sock.settimeout(silence_timeout)
        self._sock = sock
        self.socket_path = socket_path
        self.silence_timeout = silence_timeout

    def next(self) -> WatchNotice:
        """The next notice; ActuatorWentAway when the stream closed without an `ended`
        notice (the actuator died, or `interrupt()`), ActuatorProtocolError for junk."""
        try:
            body = recv_frame(self._sock, MAX_NOTICE_BYTES)
        except TimeoutError:
            raise ActuatorWentAway(self.socket_path, "watch stream silent for "
                                   f"{self.silence_timeout:g} s (no heartbeat)") from None
        except (FrameError, OSError) as e:
            raise ActuatorWentAway(self.socket_path, f"watch stream closed: {e}") from None
        try:
            return WatchNotice.model_validate_json(body)
        except ValidationError as e:
            raise ActuatorProtocolError(f"invalid watch notice from actuator: {e}") from None

    def interrupt(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()


class BaselinePublisher:
    """Hands the signed baseline the agent applies to the root actuator, once per document.

    The actuator decides only from baselines it verified itself, so the agent
    offers what it fetched; a refusal (an older version than the actuator
    holds, say) is logged once, and the actuator's later refusals of actions
    say why they were not allowed. An unreachable actuator is retried on the
    next pass.
    """

    def __init__(self, client: ActuatorClient) -> None:
        self.client = client
        self._offered: bytes | None = None

    def __call__(self, envelope: bytes) -> None:
        if envelope == self._offered:
            return
        try:
            version = self.client.offer_baseline(envelope)
        except ActuatorRefused as e:
            log.warning("the actuator refused the signed baseline (%s): %s", e.reason, e.message)
        except ActuatorError as e:
            log.warning("cannot offer the signed baseline to the actuator: %s", e)
            return
        else:
            log.info("the actuator holds signed baseline version %d", version)
        self._offered = envelope


def needs_privilege(argv: Sequence[str]) -> bool:
    """Reads the unprivileged agent cannot do itself: nft needs CAP_NET_ADMIN,
    block devices are out of reach (PrivateDevices, root-only nodes), and backup
    repositories and their password files are root's."""
    args = list(argv)
    return (
        args[:3] == ["nft", "-j", "list"]
        or is_sandbox_request(args)
        or args[:-1] in DEVICE_READS
        or is_backup_read(args)
    )


class PrivilegedReadHost:
    """A Host that sends privileged reads to the actuator and runs the rest locally.

    A refused read comes back as exit code 126 with the reason on stderr (the
    controllers already report failed commands as observation problems); an
    unreachable actuator is a HostError, like a command that cannot run.
    """

    def __init__(self, local: Host, client: ActuatorClient) -> None:
        self.local = local
        self.client = client

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        if not needs_privilege(argv):
            return self.local.run(argv, timeout, stdin=stdin)
        try:
            # A backup read may take its job's time (a repository check takes
            # minutes; root caps it by its own baseline); other reads are quick.
            cap = MAX_BACKUP_READ_TIMEOUT if is_backup_read(argv) else MAX_OBSERVE_TIMEOUT
            return self.client.observe(argv, min(timeout, cap))
        except ActuatorRefused as e:
            return Completed(argv=list(argv), exit_code=126, stdout="", stderr=str(e),
                             duration=0.0)
        except ActuatorError as e:
            raise HostError(str(e)) from None

    def read_text(self, path: str) -> str:
        return self.local.read_text(path)

    def stat(self, path: str) -> FileStat:
        return self.local.stat(path)
