"""Clock sanity (guardrail 6): the `time` kind.

The module is called clock.py so it never shadows the standard library's
`time`; the baseline field and the controller kind are both `time`.
"""

from __future__ import annotations

from pydantic import Field

from specs.resource import ResourceSpec


class TimeSpec(ResourceSpec):
    """The clock must be NTP-synchronized and within `max_skew_ms` of its reference.

    Drifts are alert-only: the agent never sets the clock. The measured offset is
    recorded as `ntp_offset_ms`, and the runtime's clock guard skips disruptive
    actions while it exceeds the agent's `ntpMaxSkewMs`.
    """

    max_skew_ms: int = Field(
        5000, gt=0, description="Largest acceptable |offset| to the time source, in ms "
        "(the agent's ntpMaxSkewMs is the usual value)."
    )
    require_synchronized: bool = Field(
        True, description="Alert when no time daemon reports a synchronized clock."
    )
