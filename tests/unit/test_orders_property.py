"""Property tests: admission never raises, and never admits anything not signed as-is.

Mutations cover the envelope bytes, the decoded payload and signature (then
re-encoded), the keyid, and individual payload fields with the original
signature kept.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.store.nonces import NonceStore
from reconciler.trust.admission import OrderAdmission
from tests.unit.test_trust_support import (
    HOST,
    MCP_SIGNER,
    OTHER_SIGNER,
    SITE,
    later,
    order_payload,
    sign_order,
)

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE_PAYLOAD = order_payload(nonce="0123456789abcdef" * 2)
BASE_BYTES = json.dumps(BASE_PAYLOAD).encode()
BASE_ENV = sign_order(BASE_BYTES)


def adm() -> OrderAdmission:
    return OrderAdmission(
        [MCP_SIGNER.public_key_hex],
        site_id=SITE,
        host_id=HOST,
        order_ttl=900,
        max_skew_seconds=5,
        nonce_store=NonceStore(None),
        clock=lambda: later(10),
    )


ADM = adm()


def assert_only_original(envelope: bytes) -> None:
    v = ADM.admit(envelope)  # must not raise
    assert isinstance(v.reason, str) and v.reason[:1].isupper()
    if v.admitted:
        assert v.order is not None
        got = v.order.model_dump(mode="json")
        got["issued_at"] = BASE_PAYLOAD["issued_at"] if v.order.issued_at == later(0) else "x"
        assert got == BASE_PAYLOAD, "admitted something other than the signed order"
    else:
        assert v.order is None and v.outcome in ("rejected", "expired")


def test_base_envelope_is_admitted() -> None:
    assert ADM.admit(BASE_ENV).admitted


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    v = ADM.admit(data)
    assert not v.admitted


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["payloadType", "payload", "signatures", "x"]), json_values, max_size=4
    )
)
def test_random_json_envelopes(env: dict[str, Any]) -> None:
    assert not ADM.admit(json.dumps(env).encode()).admitted


@SETTINGS
@given(st.integers(min_value=0, max_value=len(BASE_ENV) * 8 - 1))
def test_bit_flip_in_envelope_bytes(bit: int) -> None:
    data = bytearray(BASE_ENV)
    data[bit // 8] ^= 1 << (bit % 8)
    assert_only_original(bytes(data))


def _reencode(field: str, raw: bytes) -> bytes:
    env = json.loads(BASE_ENV)
    if field == "payload":
        env["payload"] = base64.b64encode(raw).decode()
    else:
        env["signatures"][0]["sig"] = base64.b64encode(raw).decode()
    return json.dumps(env).encode()


@SETTINGS
@given(st.sampled_from(["payload", "sig"]), st.data())
def test_bit_flip_in_decoded_payload_or_signature(field: str, data: st.DataObject) -> None:
    env = json.loads(BASE_ENV)
    raw = bytearray(
        base64.b64decode(env["payload"] if field == "payload" else env["signatures"][0]["sig"])
    )
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    v = ADM.admit(_reencode(field, bytes(raw)))
    assert not v.admitted
    assert v.reason in ("BadSignature", "Malformed")


@SETTINGS
@given(st.integers(min_value=0, max_value=64 * 4 - 1))
def test_bit_flip_in_keyid(bit: int) -> None:
    env = json.loads(BASE_ENV)
    keyid = bytearray(env["signatures"][0]["keyid"].encode())
    keyid[bit // 8] ^= 1 << (bit % 8)
    env["signatures"][0]["keyid"] = keyid.decode("latin-1")
    v = ADM.admit(json.dumps(env).encode())
    assert not v.admitted and v.reason == "UnknownKey"


@SETTINGS
@given(st.sampled_from(sorted(BASE_PAYLOAD)), json_values)
def test_changed_field_with_original_signature(field: str, value: Any) -> None:
    payload = dict(BASE_PAYLOAD)
    payload[field] = value
    env = json.loads(BASE_ENV)
    env["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    v = ADM.admit(json.dumps(env).encode())
    if json.dumps(payload).encode() != BASE_BYTES:
        assert not v.admitted and v.reason == "BadSignature"


@SETTINGS
@given(st.sampled_from(sorted(BASE_PAYLOAD)), json_values)
def test_validly_signed_random_fields_never_raise(field: str, value: Any) -> None:
    payload = dict(BASE_PAYLOAD)
    payload[field] = value
    v = ADM.admit(sign_order(payload))
    if v.admitted:  # only if the random value happens to be valid for that field
        assert v.order is not None and getattr(v.order, field) is not None


@SETTINGS
@given(st.sampled_from(["payloadType", "payload", "signatures"]), json_values)
def test_envelope_field_replaced(field: str, value: Any) -> None:
    env = json.loads(BASE_ENV)
    env[field] = value
    assert_only_original(json.dumps(env).encode())


def test_resigned_by_untrusted_key_never_admitted() -> None:
    assert ADM.admit(sign_order(BASE_BYTES, OTHER_SIGNER)).reason == "UnknownKey"
