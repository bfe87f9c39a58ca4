"""parse_request on anything a hostile agent can send: never raises, always a stable reason."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.actuator.protocol import (
    KNOWN_ACTIONS,
    ActuatorRequest,
    ObserveRequest,
    OfferBaselineRequest,
    PolicyDecision,
    Refusal,
    WatchRequest,
    parse_request,
)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=15)
actions = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(KNOWN_ACTIONS)) | st.text(max_size=12)},
    optional={k: values for k in ("unit", "elements", "table", "set_name", "target", "path",
                                  "sha256", "disruptive", "family")},
)
requests = (st.builds(lambda a, s: {"action": a, "step_start": s}, actions, values)
            | st.builds(lambda o, t: {"observe": o, "timeout": t}, values, values)
            | st.builds(lambda b: {"offer_baseline": b}, values)
            | st.builds(lambda w: {"watch": w}, st.just("nftables") | values)
            | values)


def _check(body: bytes) -> None:
    out = parse_request(body)
    if isinstance(out, PolicyDecision):
        assert isinstance(out.reason, Refusal) and out.message
    else:
        assert isinstance(out, ActuatorRequest | ObserveRequest | OfferBaselineRequest
                          | WatchRequest)


@settings(max_examples=400, deadline=None)
@given(requests)
def test_any_json_request_parses_or_is_refused_with_a_reason(request: object) -> None:
    _check(json.dumps(request, allow_nan=True).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_parse_or_are_refused_with_a_reason(body: bytes) -> None:
    _check(body)


def test_json_nested_past_the_parsers_depth_is_malformed() -> None:
    out = parse_request(b"[" * 100_000 + b"]" * 100_000)
    assert isinstance(out, PolicyDecision) and out.reason is Refusal.MalformedRequest
