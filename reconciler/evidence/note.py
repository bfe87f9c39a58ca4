"""C2SP signed notes, tlog-checkpoint bodies and tlog-cosignature/v1 lines.

A signed note is its text (non-empty lines, each ending in a newline), one
empty line, then signature lines

    — <key name> base64(key hash (4 bytes) || signature)

(U+2014 em dash, a space, the name, a space). For an Ed25519 note signature
(type 0x01) the key hash is SHA-256(name || 0x0A || 0x01 || public key)[:4]
and the signature covers the text exactly. A cosignature/v1 (type 0x04) line
carries key hash || u64 big-endian timestamp || Ed25519 signature over
"cosignature/v1\\ntime <timestamp>\\n" || text.

A checkpoint's text is `<origin>\\n<tree size>\\n<base64 root hash>\\n`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from specs.errors import ComplianceAgentError

SIG_ED25519 = 0x01
SIG_COSIGNATURE_V1 = 0x04
DASH = "\u2014"
MAX_NOTE_BYTES = 1 << 16
_NAME_RE = re.compile(r"^[^\s+]+$")
_SIZE_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")


class NoteError(ComplianceAgentError):
    """A note or checkpoint that is malformed or whose signature does not verify."""


def key_hash(name: str, sig_type: int, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes, sig_type: int = SIG_ED25519) -> str:
    """The `name+hash+base64(type || key)` form Go's sumdb/note and witnesses take."""
    kh = key_hash(name, sig_type, public_key).hex()
    return f"{name}+{kh}+{base64.b64encode(bytes([sig_type]) + public_key).decode()}"


def check_name(name: str) -> str:
    if not name or not _NAME_RE.match(name):
        raise NoteError(f"note key name {name!r} must be non-empty, without spaces or '+'")
    return name


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        check_name(self.origin)
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise NoteError("checkpoint text must be at least three non-empty lines")
        origin, size, root_b64 = lines[0], lines[1], lines[2]
        if not _SIZE_RE.match(size):
            raise NoteError(f"checkpoint tree size {size!r} is not a decimal number")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except binascii.Error:
            raise NoteError("checkpoint root hash is not base64") from None
        if len(root) != 32 or base64.b64encode(root).decode() != root_b64:
            raise NoteError("checkpoint root hash must be 32 bytes, canonical base64")
        return cls(origin, int(size), root)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    blob: bytes  # what follows the key hash: a signature, or timestamp || signature

    def line(self) -> str:
        return f"{DASH} {self.name} {base64.b64encode(self.key_hash + self.blob).decode()}\n"


@dataclass(frozen=True)
class SignedNote:
    text: str
    signatures: tuple[NoteSignature, ...]

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    @classmethod
    def parse(cls, note: str) -> SignedNote:
        if len(note.encode()) > MAX_NOTE_BYTES:
            raise NoteError("note is too large")
        text, sep, sigs = note.rpartition("\n\n")
        if not sep or not text or "\n\n" in text + "\n":
            raise NoteError("not a signed note: no blank line between text and signatures")
        text += "\n"
        parsed: list[NoteSignature] = []
        if not sigs.endswith("\n"):
            raise NoteError("note signature lines must end with a newline")
        for line in sigs[:-1].split("\n"):
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != DASH:
                raise NoteError(f"malformed note signature line {line[:80]!r}")
            try:
                raw = base64.b64decode(parts[2], validate=True)
            except binascii.Error:
                raise NoteError("note signature is not base64") from None
            if len(raw) < 5:
                raise NoteError("note signature is too short")
            parsed.append(NoteSignature(check_name(parts[1]), raw[:4], raw[4:]))
        if not parsed:
            raise NoteError("note has no signature")
        return cls(text, tuple(parsed))

    def with_signature(self, sig: NoteSignature) -> SignedNote:
        if sig in self.signatures:
            return self
        return SignedNote(self.text, (*self.signatures, sig))


def sign_note(
    text: str, name: str, sign: Callable[[bytes], bytes], public_key: bytes
) -> SignedNote:
    """Sign `text` as an Ed25519 note signature by `name` (`sign` returns a raw signature)."""
    check_name(name)
    if not text.endswith("\n") or "\n\n" in text:
        raise NoteError("note text must be non-empty lines ending in a newline")
    sig = NoteSignature(name, key_hash(name, SIG_ED25519, public_key), sign(text.encode()))
    return SignedNote(text, (sig,))


def verify_note(note: SignedNote, name: str, public_key: bytes) -> None:
    """Raise NoteError unless `note` carries a valid Ed25519 signature by (name, key)."""
    kh = key_hash(name, SIG_ED25519, public_key)
    for s in note.signatures:
        if s.name == name and s.key_hash == kh:
            try:
                VerifyKey(public_key).verify(note.text.encode(), s.blob)
                return
            except (BadSignatureError, ValueError):
                raise NoteError(f"the note signature by {name} does not verify") from None
    raise NoteError(f"the note carries no signature by {name} with this key")


def cosigned_message(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()


def cosign(
    text: str, name: str, sign: Callable[[bytes], bytes], public_key: bytes, timestamp: int
) -> NoteSignature:
    check_name(name)
    sig = sign(cosigned_message(text, timestamp))
    return NoteSignature(
        name, key_hash(name, SIG_COSIGNATURE_V1, public_key), struct.pack(">Q", timestamp) + sig
    )


def verify_cosignature(note: SignedNote, name: str, public_key: bytes) -> int:
    """The timestamp of a valid cosignature/v1 by (name, key); NoteError if none."""
    kh = key_hash(name, SIG_COSIGNATURE_V1, public_key)
    for s in note.signatures:
        if s.name == name and s.key_hash == kh and len(s.blob) == 72:
            (ts,) = struct.unpack(">Q", s.blob[:8])
            try:
                VerifyKey(public_key).verify(cosigned_message(note.text, ts), s.blob[8:])
                return int(ts)
            except (BadSignatureError, ValueError):
                raise NoteError(f"the cosignature by {name} does not verify") from None
    raise NoteError(f"the note carries no cosignature by {name} with this key")


def parse_verifier_key(vkey: str) -> tuple[str, int, bytes]:
    """(name, signature type, public key) from `name+hash+base64(type||key)`; checks the hash."""
    name, _, rest = vkey.partition("+")
    kh_hex, _, material = rest.partition("+")
    try:
        raw = base64.b64decode(material, validate=True)
        kh = bytes.fromhex(kh_hex)
    except (binascii.Error, ValueError):
        raise NoteError("malformed verifier key") from None
    if len(raw) != 33 or len(kh) != 4 or key_hash(check_name(name), raw[0], raw[1:]) != kh:
        raise NoteError("verifier key hash does not match its name and key")
    return name, raw[0], raw[1:]
