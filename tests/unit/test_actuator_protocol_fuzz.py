"""parse_request on anything a hostile agent can send: never raises, always a stable reason."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.actuator.protocol import (
    KNOWN_ACTIONS,
    MAX_REQUEST_BYTES,
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


def test_a_request_of_many_small_containers_is_refused_before_it_is_parsed() -> None:
    """2 MiB of `{},` would parse into ~700,000 dicts (~50 MiB of root's memory per
    connection, eight connections at once); no real request has more than a few
    hundred containers, so such a frame is refused unparsed."""
    body = b'{"observe": [' + b"{}," * 690_000 + b'{}], "timeout": 1}'
    assert len(body) <= MAX_REQUEST_BYTES
    decision = parse_request(body)
    assert isinstance(decision, PolicyDecision)
    assert decision.reason is Refusal.MalformedRequest
    assert "containers" in decision.message


def test_a_large_signed_baseline_offer_still_parses() -> None:
    """The largest real request: a DSSE envelope of a ~1.4 MiB baseline, as one string."""
    import base64

    baseline = {"version": 1, "services": {"units": [{"name": f"u{i}.service"} for i in range(40_000)]}}
    payload = base64.b64encode(json.dumps(baseline).encode()).decode()
    envelope = json.dumps({"payload": payload, "payloadType": "application/vnd.x+json",
                           "signatures": [{"keyid": "k", "sig": "c2ln"}]})
    body = json.dumps({"offer_baseline": envelope}).encode()
    assert len(body) <= MAX_REQUEST_BYTES
    assert isinstance(parse_request(body), OfferBaselineRequest)
