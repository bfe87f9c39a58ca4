"""Clock sanity (guardrail 6): the `time` kind.

The module is called time_.py so it never shadows the standard library's
`time`; the baseline field and the controller kind are both `time`.
"""

from __future__ import annotations

from pydantic import Field

from specs.resource import ResourceSpec


class TimeSpec(ResourceSpec):
    """The clock must be NTP-synchronized and within `max_skew_ms` of its reference.

    Drifts are alert-only: the agent never sets the clock. The measured offset is
    recorded as `ntp_offset_ms`.

    One threshold: the agent's `ntpMaxSkewMs` decides both when disruptive
    actions are skipped (the runtime's clock guard) and when this resource
    reports `ClockSkewed`, because `max_skew_ms` left unset is filled from it
    (`with_config_defaults`). A baseline may still set `max_skew_ms` to alert
    at a tighter limit than the one that holds disruptive actions; it never
    changes what the guard allows.
    """

    max_skew_ms: int | None = Field(
        None, gt=0, description="Largest acceptable |offset| to the time source, in ms, before "
        "the resource reports ClockSkewed. Unset: the agent's ntpMaxSkewMs, the limit above "
        "which disruptive actions are skipped (one threshold)."
    )
    require_synchronized: bool = Field(
        True, description="Alert when no time daemon reports a synchronized clock."
    )

    def with_config_defaults(self, ntp_max_skew_ms: int) -> TimeSpec:
        """The effective spec: config `ntpMaxSkewMs` when `max_skew_ms` is unset."""
        if self.max_skew_ms is not None:
            return self
        return self.model_copy(update={"max_skew_ms": ntp_max_skew_ms})
