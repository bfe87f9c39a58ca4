"""DSSE envelopes signed with Ed25519: the one signing format of the agent.

Everything signed (orders, baselines from the control plane, evidence) is a
DSSE envelope (https://github.com/secure-systems-lab/dsse):

    {"payloadType": str, "payload": <standard base64>, "signatures": [{"keyid", "sig"}]}

(URL-safe base64 is accepted on input, as the DSSE envelope spec allows;
only canonical encodings are.)

The signature is Ed25519 over the pre-authentication encoding

    PAE(type, body) = b"DSSEv1" SP len(type) SP type SP len(body) SP body

with lengths as ASCII decimal byte counts. `keyid` is the lowercase hex
SHA-256 of the raw 32-byte public key. Any DSSE verifier (securesystemslib's,
for instance) accepts what `Signer` produces; the interop is tested.

`verify_envelope` never returns an unverified payload: it returns the payload
bytes that a trusted key signed, or raises a `TrustError` whose `.reason` is a
CamelCase word callers record verbatim (evidence, CLI output, metrics labels).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from specs.errors import ComplianceAgentError

# An envelope with more signatures than this is a resource attack, not key rotation.
MAX_SIGNATURES = 8
ED25519_SIG_LEN = 64


class TrustError(ComplianceAgentError):
    """An envelope was not accepted. `reason` is CamelCase and stable."""

    reason = "Untrusted"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Malformed(TrustError):
    reason = "Malformed"


class TooLarge(TrustError):
    reason = "TooLarge"


class WrongPayloadType(TrustError):
    reason = "WrongPayloadType"


class UnknownKey(TrustError):
    reason = "UnknownKey"


class BadSignature(TrustError):
    reason = "BadSignature"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding of (type, body)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def keyid_for(public_key: bytes) -> str:
    """Lowercase hex SHA-256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    """The exact bytes an envelope is stored and hashed as (compact, sorted keys)."""
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


class Signer:
    """Signs DSSE envelopes with one Ed25519 key (a nacl `SigningKey`).

    Holds key material: never log or repr it (repr shows the keyid only).
    """

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key
        raw_pub = bytes(signing_key.verify_key)
        self.public_key_hex: str = raw_pub.hex()
        self.keyid: str = keyid_for(raw_pub)

    def __repr__(self) -> str:
        return f"Signer(keyid={self.keyid[:16]}...)"

    def sign(self, message: bytes) -> bytes:
        """Raw 64-byte Ed25519 signature of `message`."""
        return self._key.sign(message).signature

    def sign_envelope(self, payload: bytes, payload_type: str) -> dict[str, Any]:
        sig = self.sign(pae(payload_type, payload))
        return {
            "payloadType": payload_type,
            "payload": base64.b64encode(payload).decode("ascii"),
            "signatures": [{"keyid": self.keyid, "sig": base64.b64encode(sig).decode("ascii")}],
        }


class TrustedKeys:
    """Parsed set of trusted Ed25519 public keys, indexed by keyid.

    Build once and reuse: `verify_envelope` accepts it in place of hex strings
    so the hot path (orders, chain verification) skips re-parsing keys.
    """

    def __init__(self, public_keys_hex: Sequence[str]) -> None:
        self.by_keyid: dict[str, VerifyKey] = {}
        for i, k in enumerate(public_keys_hex):
            try:
                raw = bytes.fromhex(k.strip())
            except ValueError:
                raise ValueError(f"trusted key {i} is not hex") from None
            if len(raw) != 32:
                raise ValueError(f"trusted key {i} is {len(raw)} bytes, an Ed25519 key is 32")
            self.by_keyid[keyid_for(raw)] = VerifyKey(raw)

    def __len__(self) -> int:
        return len(self.by_keyid)


def _b64(value: Any, what: str) -> bytes:
    """Decode DSSE base64: standard (padded) or URL-safe (padding optional).

    Only the canonical encoding of the decoded bytes is accepted (no stray
    trailing bits, no whitespace), so one signature never stands for two
    different envelope byte strings: evidence is content-addressed by bytes.
    """
    if not isinstance(value, str):
        raise Malformed(f"{what} must be a base64 string")
    try:
        raw = value.encode("ascii")
        if b"-" in raw or b"_" in raw:
            data = base64.b64decode(raw + b"=" * (-len(raw) % 4), altchars=b"-_", validate=True)
            canonical = base64.urlsafe_b64encode(data).rstrip(b"=") == raw.rstrip(b"=")
        else:
            data = base64.b64decode(raw, validate=True)
            canonical = base64.b64encode(data) == raw
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Malformed(f"{what} is not base64") from None
    if not canonical:
        raise Malformed(f"{what} is not canonical base64")
    return data


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers disagreeing on which duplicate wins is a classic signature bypass.
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Malformed(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def loads_strict(data: bytes | str, what: str) -> Any:
    """json.loads that rejects duplicate keys, NaN/Infinity and bad UTF-8 as Malformed."""

    def no_constants(name: str) -> Any:
        raise Malformed(f"{what}: {name} is not valid JSON")

    try:
        return json.loads(
            data, object_pairs_hook=_reject_duplicate_keys, parse_constant=no_constants
        )
    except Malformed:
        raise
    except (ValueError, RecursionError) as e:
        raise Malformed(f"{what} is not valid JSON: {e}") from None


def parse_envelope(
    envelope: dict[str, Any] | bytes, max_bytes: int | None = None
) -> dict[str, Any]:
    """Size and shape checks only (no signature check). Raises TooLarge/Malformed."""
    if isinstance(envelope, bytes | bytearray | memoryview):
        raw = bytes(envelope)
        if max_bytes is not None and len(raw) > max_bytes:
            raise TooLarge(f"envelope is {len(raw)} bytes, the limit is {max_bytes}")
        envelope = loads_strict(raw, "envelope")
    if not isinstance(envelope, dict):
        raise Malformed("envelope must be a JSON object")
    missing = {"payloadType", "payload", "signatures"} - envelope.keys()
    if missing:
        raise Malformed(f"envelope lacks {', '.join(sorted(missing))}")
    if not isinstance(envelope["payloadType"], str):
        raise Malformed("payloadType must be a string")
    sigs = envelope["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise Malformed("signatures must be a non-empty list")
    if len(sigs) > MAX_SIGNATURES:
        raise Malformed(f"{len(sigs)} signatures; at most {MAX_SIGNATURES} are accepted")
    for s in sigs:
        if not isinstance(s, dict) or not isinstance(s.get("sig"), str):
            raise Malformed("each signature must be an object with a 'sig' string")
        if not isinstance(s.get("keyid", ""), str):
            raise Malformed("signature keyid must be a string")
    return envelope


def verify_envelope(
    envelope: dict[str, Any] | bytes,
    payload_type: str,
    trusted_public_keys: Sequence[str] | TrustedKeys,
    max_bytes: int | None = None,
) -> bytes:
    """Return the payload a trusted key signed, or raise a `TrustError`.

    Order of checks: size (TooLarge, only for bytes input), JSON and envelope
    shape (Malformed), payloadType (WrongPayloadType), then signatures: one
    valid Ed25519 signature by a trusted key suffices. A signature whose keyid
    names no trusted key is skipped; an empty keyid is tried against every
    trusted key (DSSE makes keyid optional). If nothing verifies: BadSignature
    when some signature was checked against a trusted key, else UnknownKey.
    """
    keys = (
        trusted_public_keys
        if isinstance(trusted_public_keys, TrustedKeys)
        else TrustedKeys(trusted_public_keys)
    )
    env = parse_envelope(envelope, max_bytes)
    if env["payloadType"] != payload_type:
        raise WrongPayloadType(
            f"payloadType is {env['payloadType'][:100]!r}, expected {payload_type!r}"
        )
    payload = _b64(env["payload"], "payload")
    message = pae(payload_type, payload)
    tried = False
    for s in env["signatures"]:
        keyid = s.get("keyid", "")
        if keyid:
            candidates = [keys.by_keyid[keyid]] if keyid in keys.by_keyid else []
        else:
            candidates = list(keys.by_keyid.values())
        if not candidates:
            continue
        sig = _b64(s["sig"], "signature")
        tried = True
        if len(sig) != ED25519_SIG_LEN:
            continue
        for vk in candidates:
            try:
                vk.verify(message, sig)
            except BadSignatureError:
                continue
            return payload
    if tried:
        raise BadSignature("no signature verifies with a trusted key")
    raise UnknownKey("no signature is by a trusted key (check the keyid / mcpPublicKeys)")
