"""The agent's side of the privileged actuator: same `execute` API, over a unix socket.

`ActuatorClient(socket_path).execute(action)` returns the `ActionResult` the
root actuator produced, exactly like `LocalActuator.execute` does in-process,
so the reconcile loop does not care which one it holds. What can go wrong is
a small hierarchy:

* `ActuatorRefused`: the actuator's policy said no and nothing ran; `.reason`
  is CamelCase (UnitNotInBaseline, OutsideMaintenanceWindow, ...) and goes
  verbatim into evidence.
* `ActuatorUnavailable`: the socket is missing, refused the connection, or
  the actuator went away mid-request; whether the action ran is unknown only
  in the last case, and the next level-triggered pass observes the truth.
* `ActuatorProtocolError`: the reply was not a valid reply (a bug or a
  version mismatch).
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import ValidationError

from reconciler.actuator import ActionResult
from reconciler.actuator_protocol import (
    MAX_REPLY_BYTES,
    ActuatorReply,
    ActuatorRequest,
    FrameError,
    Refusal,
    recv_frame,
    send_json,
)
from specs.actions import Action

# A rebuild (switch + health check + maybe rollback) can take minutes; the
# actuator bounds every command itself, so this is only a backstop.
DEFAULT_TIMEOUT = 1800.0


class ActuatorError(Exception):
    """Base of everything `ActuatorClient.execute` raises."""


class ActuatorUnavailable(ActuatorError):
    def __init__(self, socket_path: Path, detail: str) -> None:
        self.socket_path = socket_path
        super().__init__(
            f"actuator at {socket_path} unavailable: {detail} "
            "(is compliance-agent-actuator.socket running? 'systemctl status "
            "compliance-agent-actuator.socket')"
        )


class ActuatorRefused(ActuatorError):
    def __init__(self, reason: Refusal, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"actuator refused ({reason}): {message}")


class ActuatorProtocolError(ActuatorError):
    pass


class ActuatorClient:
    def __init__(self, socket_path: Path | str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout

    def execute(self, action: Action, step_start: int = 1) -> ActionResult:
        reply = self._roundtrip(ActuatorRequest(action=action, step_start=step_start))
        if reply.status == "ok":
            if reply.result is None:
                raise ActuatorProtocolError("actuator replied ok without a result")
            return reply.result
        reason = reply.reason or Refusal.InternalError
        if reply.status == "refused":
            raise ActuatorRefused(reason, reply.message)
        raise ActuatorProtocolError(f"actuator error ({reason}): {reply.message}")

    def _roundtrip(self, request: ActuatorRequest) -> ActuatorReply:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
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
                raise ActuatorUnavailable(
                    self.socket_path, f"no complete reply: {detail or type(detail).__name__}"
                ) from None
        finally:
            sock.close()
        try:
            return ActuatorReply.model_validate_json(body)
        except ValidationError as e:
            raise ActuatorProtocolError(f"invalid reply from actuator: {e}") from None
