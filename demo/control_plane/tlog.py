"""DEV ONLY: checkpoint witnessing for the demo control plane.

Written apart from the agent's reconciler.evidence (like dsse.py): C2SP signed
notes, tlog-checkpoint bodies, RFC 9162 consistency verification and a
C2SP tlog-cosignature/v1 countersignature, from the specifications.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ORIGIN_PREFIX = "compliance-agent.dev/evidence/"
DASH = "\u2014"


class CheckpointRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Received:
    site_id: str
    host_id: str
    origin: str
    tree_size: int
    root: bytes
    text: str  # the note text (body), signatures excluded
    note: str  # the whole signed note as received


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def key_hash(name: str, alg: int, pub: bytes) -> bytes:
    return _h(name.encode() + b"\n" + bytes([alg]) + pub)[:4]


def parse_checkpoint(note: str, agent_keys: list[bytes]) -> Received:
    """Parse a signed checkpoint and check its Ed25519 note signature by an agent key."""
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise CheckpointRefused("Malformed", "not a signed note")
    text += "\n"
    lines = text.split("\n")
    if len(lines) != 4 or not lines[0].startswith(ORIGIN_PREFIX):
        raise CheckpointRefused("Malformed", "not an evidence log checkpoint")
    origin = lines[0]
    site_host = origin[len(ORIGIN_PREFIX):].split("/")
    if len(site_host) != 2 or not all(site_host):
        raise CheckpointRefused("Malformed", "origin must name <site>/<host>")
    try:
        size = int(lines[1])
        root = base64.b64decode(lines[2], validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointRefused("Malformed", "bad tree size or root hash") from None
    if len(root) != 32 or str(size) != lines[1] or size < 1:
        raise CheckpointRefused("Malformed", "bad tree size or root hash")
    for line in sigs[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != DASH or parts[1] != origin:
            continue
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except binascii.Error:
            continue
        for pub in agent_keys:
            if raw[:4] != key_hash(origin, 0x01, pub):
                continue
            try:
                VerifyKey(pub).verify(text.encode(), raw[4:])
            except (BadSignatureError, ValueError):
                raise CheckpointRefused("BadSignature", "checkpoint signature does not "
                                        "verify") from None
            return Received(site_host[0], site_host[1], origin, size, root, text, note)
    raise CheckpointRefused("BadSignature", "no checkpoint signature by a known agent key")


def consistent(m: int, n: int, root_m: bytes, root_n: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 2.1.4.2."""
    if m == n:
        return not proof and root_m == root_n
    if not 0 < m < n:
        return m == 0 and not proof
    path = ([root_m] if m & (m - 1) == 0 else []) + proof
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node(c, fr), _node(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = _node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root_m and sr == root_n


def cosign(received: Received, name: str, key: SigningKey, timestamp: int) -> str:
    """The received note with a tlog-cosignature/v1 line by `name` appended."""
    msg = f"cosignature/v1\ntime {timestamp}\n".encode() + received.text.encode()
    sig = key.sign(msg).signature
    blob = key_hash(name, 0x04, bytes(key.verify_key)) + struct.pack(">Q", timestamp) + sig
    return received.note + f"{DASH} {name} {base64.b64encode(blob).decode()}\n"
