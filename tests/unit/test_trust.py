"""DSSE signing/verification: PAE bytes, reasons, and interop with securesystemslib."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

from reconciler.trust.dsse import (
    BadSignature,
    Malformed,
    Signer,
    TooLarge,
    TrustedKeys,
    UnknownKey,
    WrongPayloadType,
    envelope_bytes,
    keyid_for,
    pae,
    verify_envelope,
)
from tests.unit.test_trust_support import AGENT_SIGNER, MCP_SIGNER, OTHER_SIGNER

PT = "application/example+json"


def test_pae_matches_the_dsse_spec_example() -> None:
    # Worked example from the DSSE protocol document.
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    # Lengths are byte counts, not character counts.
    assert pae("t\u00e9", b"\xff") == b"DSSEv1 3 t\xc3\xa9 1 \xff"


def test_envelope_shape_and_keyid() -> None:
    env = MCP_SIGNER.sign_envelope(b'{"a":1}', PT)
    assert set(env) == {"payloadType", "payload", "signatures"}
    assert base64.b64decode(env["payload"], validate=True) == b'{"a":1}'
    [sig] = env["signatures"]
    raw_pub = bytes.fromhex(MCP_SIGNER.public_key_hex)
    assert sig["keyid"] == hashlib.sha256(raw_pub).hexdigest() == keyid_for(raw_pub)
    assert len(base64.b64decode(sig["sig"])) == 64
    assert MCP_SIGNER.keyid not in repr(MCP_SIGNER)  # a prefix only
    assert "11" * 32 not in repr(MCP_SIGNER)  # never the seed


def test_roundtrip_dict_and_bytes() -> None:
    env = MCP_SIGNER.sign_envelope(b"body", PT)
    keys = [MCP_SIGNER.public_key_hex]
    assert verify_envelope(env, PT, keys) == b"body"
    assert verify_envelope(envelope_bytes(env), PT, TrustedKeys(keys)) == b"body"


def test_key_rotation_any_trusted_key_suffices() -> None:
    env = MCP_SIGNER.sign_envelope(b"x", PT)
    assert verify_envelope(env, PT, [OTHER_SIGNER.public_key_hex, MCP_SIGNER.public_key_hex])


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda e: e.update(payloadType="other/type"), WrongPayloadType),
        (lambda e: e.update(payload=base64.b64encode(b"bodx").decode()), BadSignature),
        (lambda e: e["signatures"][0].update(keyid="00" * 32), UnknownKey),
        (lambda e: e.update(signatures=[]), Malformed),
        (lambda e: e.pop("payload"), Malformed),
        (lambda e: e.update(payload="not base64!"), Malformed),
        (lambda e: e["signatures"][0].update(sig="AAAA"), BadSignature),
        (lambda e: e["signatures"][0].update(sig=5), Malformed),
        (lambda e: e.update(signatures=[{"sig": "x"}] * 9), Malformed),
    ],
)
def test_rejections_have_reasons(mutate, error) -> None:  # type: ignore[no-untyped-def]
    env = MCP_SIGNER.sign_envelope(b"body", PT)
    mutate(env)
    with pytest.raises(error) as info:
        verify_envelope(env, PT, [MCP_SIGNER.public_key_hex])
    assert info.value.reason == error.reason


def test_signed_by_untrusted_key_is_unknown_key() -> None:
    env = OTHER_SIGNER.sign_envelope(b"body", PT)
    with pytest.raises(UnknownKey):
        verify_envelope(env, PT, [MCP_SIGNER.public_key_hex])


def test_untrusted_key_claiming_trusted_keyid_is_bad_signature() -> None:
    env = OTHER_SIGNER.sign_envelope(b"body", PT)
    env["signatures"][0]["keyid"] = MCP_SIGNER.keyid
    with pytest.raises(BadSignature):
        verify_envelope(env, PT, [MCP_SIGNER.public_key_hex])


def test_empty_keyid_tries_every_trusted_key() -> None:
    env = MCP_SIGNER.sign_envelope(b"body", PT)
    del env["signatures"][0]["keyid"]
    keys = [OTHER_SIGNER.public_key_hex, MCP_SIGNER.public_key_hex]
    assert verify_envelope(env, PT, keys) == b"body"


def test_size_limit_and_bad_json() -> None:
    raw = envelope_bytes(MCP_SIGNER.sign_envelope(b"x" * 1000, PT))
    with pytest.raises(TooLarge):
        verify_envelope(raw, PT, [MCP_SIGNER.public_key_hex], max_bytes=len(raw) - 1)
    assert verify_envelope(raw, PT, [MCP_SIGNER.public_key_hex], max_bytes=len(raw))
    for bad in (b"", b"[]", b"{", b"\xff\xfe", b'{"payloadType": NaN}'):
        with pytest.raises(Malformed):
            verify_envelope(bad, PT, [MCP_SIGNER.public_key_hex])


def test_duplicate_json_keys_are_malformed() -> None:
    env = MCP_SIGNER.sign_envelope(b"body", PT)
    raw = envelope_bytes(env)[:-1] + b',"payloadType":"other"}'
    with pytest.raises(Malformed, match="duplicate"):
        verify_envelope(raw, PT, [MCP_SIGNER.public_key_hex])


def test_trusted_keys_reject_bad_hex() -> None:
    with pytest.raises(ValueError, match="not hex"):
        TrustedKeys(["zz" * 32])
    with pytest.raises(ValueError, match="32"):
        TrustedKeys(["ab" * 31])


# -- interop with securesystemslib's DSSE implementation -------------------------------
def _sslib_key(signer: Signer) -> SSlibKey:
    return SSlibKey(signer.keyid, "ed25519", "ed25519", {"public": signer.public_key_hex})


def test_securesystemslib_verifies_our_envelope() -> None:
    env = AGENT_SIGNER.sign_envelope(b'{"hello":"world"}', "application/vnd.in-toto+json")
    parsed = Envelope.from_dict(json.loads(envelope_bytes(env)))
    accepted = parsed.verify([_sslib_key(AGENT_SIGNER)], 1)
    assert list(accepted) == [AGENT_SIGNER.keyid]
    assert parsed.payload == b'{"hello":"world"}'


def test_securesystemslib_rejects_our_envelope_when_tampered() -> None:
    from securesystemslib.exceptions import VerificationError

    env = AGENT_SIGNER.sign_envelope(b"a", PT)
    env["payload"] = base64.b64encode(b"b").decode()
    with pytest.raises(VerificationError):
        Envelope.from_dict(env).verify([_sslib_key(AGENT_SIGNER)], 1)


def test_we_verify_securesystemslib_envelope() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv = Ed25519PrivateKey.from_private_bytes(bytes.fromhex("44" * 32))
    pub_hex = priv.public_key().public_bytes_raw().hex()
    sslib_key = SSlibKey(
        keyid_for(bytes.fromhex(pub_hex)), "ed25519", "ed25519", {"public": pub_hex}
    )
    signer = CryptoSigner(priv, sslib_key)
    env = Envelope(b"from sslib", PT, {})
    env.sign(signer)
    raw = json.dumps(env.to_dict()).encode()
    assert verify_envelope(raw, PT, [pub_hex]) == b"from sslib"


def test_url_safe_base64_is_accepted_and_non_canonical_is_not() -> None:
    body = b"\xfb\xff\xfe payload that encodes with + and /"
    env = MCP_SIGNER.sign_envelope(body, PT)
    std = env["payload"]
    assert "+" in std or "/" in std
    keys = [MCP_SIGNER.public_key_hex]
    env["payload"] = base64.urlsafe_b64encode(body).decode().rstrip("=")
    assert verify_envelope(env, PT, keys) == body
    # "eB==" and "eA==" both decode to b"x" under a lenient decoder.
    env2 = MCP_SIGNER.sign_envelope(b"x", PT)
    assert env2["payload"] == "eA=="
    env2["payload"] = "eB=="
    with pytest.raises(Malformed, match="canonical"):
        verify_envelope(env2, PT, keys)
    env2["payload"] = "eA"  # unpadded standard alphabet
    with pytest.raises(Malformed):
        verify_envelope(env2, PT, keys)
