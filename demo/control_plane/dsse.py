"""A small, independent DSSE (Ed25519) implementation for the demo control plane.

Deliberately not shared with the agent's reconciler.trust.dsse: two independent
implementations of PAE and keyid that agree are evidence both follow the spec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ORDER_TYPE = "application/vnd.compliance-agent.order+json"
BASELINE_TYPE = "application/vnd.compliance-agent.baseline+json"


class VerifyError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def pae(payload_type: str, body: bytes) -> bytes:
    t = payload_type.encode()
    return b"".join(
        [b"DSSEv1 ", str(len(t)).encode(), b" ", t, b" ", str(len(body)).encode(), b" ", body]
    )


def keyid(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sign(key: SigningKey, payload: bytes, payload_type: str) -> dict[str, Any]:
    sig = key.sign(pae(payload_type, payload)).signature
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": keyid(bytes(key.verify_key)), "sig": base64.b64encode(sig).decode()}
        ],
    }


class Verifier:
    def __init__(self, public_keys_hex: list[str]) -> None:
        self.keys = {keyid(bytes.fromhex(k)): VerifyKey(bytes.fromhex(k)) for k in public_keys_hex}

    def verify(self, env: Any, payload_type: str) -> bytes:
        if not isinstance(env, dict) or not isinstance(env.get("signatures"), list):
            raise VerifyError("Malformed", "not a DSSE envelope")
        if env.get("payloadType") != payload_type:
            raise VerifyError("WrongPayloadType", f"payloadType must be {payload_type}")
        try:
            body = base64.b64decode(str(env.get("payload", "")), validate=True)
        except (binascii.Error, ValueError):
            raise VerifyError("Malformed", "payload is not base64") from None
        message = pae(payload_type, body)
        for s in env["signatures"][:8]:
            if not isinstance(s, dict):
                continue
            vk = self.keys.get(str(s.get("keyid", "")))
            if vk is None:
                continue
            try:
                vk.verify(message, base64.b64decode(str(s.get("sig", ""))))
                return body
            except (BadSignatureError, binascii.Error, ValueError):
                continue
        raise VerifyError("BadSignature", "no signature verifies with the agent's public key")
