"""Replies of this actuator still parse in the agent of the release before it.

During a `nixos-rebuild switch` the new actuator starts while the old agent
still runs: the old agent re-sends its rebuild request (the reattach window)
and reads the result from the new actuator. Its reply model forbids unknown
fields, so a field added to replies since (`watching`, null in every reply
but a watch's) made each reply invalid there: the rebuild's result was lost
to it although the actuator recorded it as delivered.
"""

from __future__ import annotations

import socket
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from reconciler.actuator.protocol import (
    ActuatorReply,
    PolicyDecision,
    Refusal,
    recv_frame,
    refused,
    send_json,
)
from reconciler.actuator.result import ActionResult
from specs.actions import StartUnit
from specs.host import Completed


class ReleasedActuatorReply(BaseModel):
    """ActuatorReply as the last release's agent has it."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "refused", "error"]
    reason: Refusal | None = None
    message: str = ""
    result: ActionResult | None = None
    completed: Completed | None = None
    baseline_version: int | None = None


REPLIES = [
    ActuatorReply(status="ok", result=ActionResult(action=StartUnit(unit="a.service"),
                                                   records=[], ok=True)),
    ActuatorReply(status="ok", completed=Completed(argv=["nft", "-j", "list", "ruleset"],
                                                   exit_code=0, stdout="{}", stderr="",
                                                   duration=0.01)),
    ActuatorReply(status="ok", baseline_version=7),
    refused(PolicyDecision(Refusal.Busy, "8 requests in progress; retry shortly")),
]


@pytest.mark.parametrize("reply", REPLIES, ids=["result", "completed", "baseline", "refused"])
def test_the_released_agent_parses_every_reply_but_a_watchs(reply: ActuatorReply) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        send_json(theirs, reply)
        body = recv_frame(ours, 1 << 20)
    old = ReleasedActuatorReply.model_validate_json(body)
    assert old.model_dump() == reply.model_dump(exclude={"watching"})
    assert ActuatorReply.model_validate_json(body) == reply


def test_a_watch_reply_still_says_watching() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        send_json(theirs, ActuatorReply(status="ok", watching="nftables"))
        body = recv_frame(ours, 1 << 20)
    assert ActuatorReply.model_validate_json(body).watching == "nftables"
