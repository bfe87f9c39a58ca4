#!/usr/bin/env python3
"""Independent checker of a compliance-agent evidence export.

Needs Python 3.11+ and securesystemslib (DSSE and Ed25519); everything else is
hashlib and the standard library. It shares no code with the agent: it
re-implements RFC 9162 proof verification and C2SP signed-note checking from
the specifications, so an auditor need not trust the agent's software.

    python verify_export.py --public-key HEX EXPORT.tar.gz   (or the unpacked directory)

Exit status: 0 verified; 1 a check failed (each failure is printed); 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import Signature, SSlibKey  # type: ignore[attr-defined]

EXPORT_TYPE = "application/vnd.compliance-agent.evidence-export+json"
EVIDENCE_TYPE = "application/vnd.in-toto+json"
PRUNE_CHECK = "evidence_prune"
CHAIN_BREAK_CHECK = "evidence_chain_break"
ROOT = "evidence-export/"


# A check that stops verification. A builtin on purpose: this file must not
# depend on anything but securesystemslib and the standard library.
Failed = RuntimeError


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def node(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right)


def leaf_of(envelope_digest_hex: str) -> bytes:
    """Leaf hash: SHA-256(0x00 || SHA-256(envelope bytes))."""
    return sha256(b"\x00" + bytes.fromhex(envelope_digest_hex))


def inclusion_ok(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = node(p, r)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def consistency_ok(m: int, n: int, root_m: bytes, root_n: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if m == n:
        return not proof and root_m == root_n
    if not 0 < m < n:
        return False
    path = ([root_m] if m & (m - 1) == 0 else []) + proof
    if not path:
        return False
    fn, sn = m - 1, n - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == root_m and sr == root_n


class Checker:
    def __init__(self, public_key_hex: str) -> None:
        raw = bytes.fromhex(public_key_hex)
        if len(raw) != 32:
            raise Failed("the public key must be 32 bytes of hex (Ed25519)")
        self.pub = raw
        self.keyid = hashlib.sha256(raw).hexdigest()
        self.key = SSlibKey(self.keyid, "ed25519", "ed25519", {"public": public_key_hex})
        self.failures: list[str] = []

    def fail(self, msg: str) -> None:
        self.failures.append(msg)

    def dsse(self, data: bytes, payload_type: str, what: str) -> Any:
        try:
            env = Envelope.from_dict(json.loads(data))
            env.verify([self.key], 1)
        except (VerificationError, ValueError, KeyError, TypeError) as e:
            raise Failed(f"{what}: signature does not verify with the given key ({e})") from None
        if env.payload_type != payload_type:
            raise Failed(f"{what}: payload type {env.payload_type!r}, expected {payload_type!r}")
        return json.loads(env.payload)

    def checkpoint(self, note: str, origin: str, what: str) -> tuple[int, bytes]:
        """(tree size, root) of a C2SP checkpoint signed by the key under `origin`."""
        text, sep, sigs = note.rpartition("\n\n")
        if not sep:
            raise Failed(f"{what}: not a signed note")
        text += "\n"
        lines = text.split("\n")
        if len(lines) < 4 or lines[0] != origin:
            raise Failed(f"{what}: not a checkpoint of {origin}")
        key_hash = sha256(origin.encode() + b"\n\x01" + self.pub)[:4]
        for line in sigs.splitlines():
            parts = line.split(" ")
            if len(parts) != 3 or parts[0] != "\u2014" or parts[1] != origin:
                continue
            raw = base64.b64decode(parts[2])
            if raw[:4] != key_hash:
                continue
            try:
                self.key.verify_signature(Signature(self.keyid, raw[4:].hex()), text.encode())
            except VerificationError:
                raise Failed(f"{what}: the checkpoint signature does not verify") from None
            return int(lines[1]), base64.b64decode(lines[2], validate=True)
        raise Failed(f"{what}: no signature by {origin} with the given key")


def read(path: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                files[p.relative_to(path).as_posix()] = p.read_bytes()
        return files
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                if m.isfile() and m.name.startswith(ROOT) and ".." not in m.name.split("/"):
                    f = tar.extractfile(m)
                    files[m.name[len(ROOT):]] = f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise Failed(f"{path}: not a readable export: {e}") from None
    return files


def verify(path: Path, public_key_hex: str) -> list[str]:
    c = Checker(public_key_hex)
    files = read(path)
    if "manifest.json" not in files:
        raise Failed("no manifest.json: not an evidence export")
    manifest = c.dsse(files["manifest.json"], EXPORT_TYPE, "manifest.json")
    if manifest["public_key"] != public_key_hex:
        c.fail("the manifest names another public key")
    listed: dict[str, str] = manifest["files"]
    for name in sorted(set(files) | set(listed)):
        if name == "manifest.json":
            continue
        if name not in files:
            c.fail(f"{name}: listed in the signed manifest but missing")
        elif name not in listed:
            c.fail(f"{name}: not listed in the signed manifest")
        elif hashlib.sha256(files[name]).hexdigest() != listed[name]:
            c.fail(f"{name}: differs from its digest in the signed manifest")
    origin = manifest["origin"]
    first, last, size = manifest["first_sequence"], manifest["last_sequence"], manifest["tree_size"]

    # Bundles: signature, identity, sequence, digest.
    digest: dict[int, str] = {}
    prev: dict[int, str | None] = {}
    listed_pruned: dict[int, str] = {}
    lost: set[int] = set()
    for name, data in sorted(files.items()):
        if not name.startswith("bundles/"):
            continue
        try:
            st = c.dsse(data, EVIDENCE_TYPE, name)
            pred = st["predicate"]
            seq = int(pred["sequence"])
        except Failed as e:
            c.fail(str(e))
            continue
        if f"compliance-agent.dev/evidence/{pred['site_id']}/{pred['host_id']}" != origin:
            c.fail(f"{name}: a bundle of another host")
        if seq in digest:
            c.fail(f"{name}: a second bundle with sequence {seq}")
        digest[seq] = hashlib.sha256(data).hexdigest()
        prev[seq] = pred["prev_digest"]
        if pred["check"] == PRUNE_CHECK:
            for item in pred["post_state"].get("pruned", []):
                listed_pruned[int(item["sequence"])] = str(item["digest"])
        if pred["check"] == CHAIN_BREAK_CHECK:
            # Declared lost by the agent at a start it could not continue the chain:
            # the leaf is the listed placeholder digest; nothing links to it.
            print(f"note: chain break at seq {seq}: {pred['post_state'].get('reason')}")
            for item in pred["post_state"].get("lost", []):
                listed_pruned[int(item["sequence"])] = str(item["digest"])
                lost.add(int(item["sequence"]))
    known = dict(listed_pruned)
    known.update(digest)
    for seq in range(first, last + 1):
        if seq not in known:
            c.fail(f"seq {seq}: missing, and no signed prune bundle lists it")
        elif seq - 1 in lost:
            continue  # the bundle before is lost: its digest is unknown
        elif seq in prev and seq > 1 and seq - 1 in known and prev[seq] != known[seq - 1]:
            c.fail(f"seq {seq}: prev_digest does not match the bundle before")
        elif seq == 1 and seq in prev and prev[seq] is not None:
            c.fail("seq 1: prev_digest must be null")

    # Checkpoints: signatures, the newest, consistency between successive ones.
    roots: dict[int, bytes] = {}
    for name, data in sorted(files.items()):
        if name.startswith("checkpoints/") and name.endswith(".note"):
            try:
                n, root = c.checkpoint(data.decode(), origin, name)
            except (Failed, ValueError) as e:
                c.fail(str(e))
                continue
            if roots.get(n, root) != root:
                c.fail(f"{name}: two different trees of size {n} (split view)")
            roots[n] = root
    if size not in roots:
        raise Failed(f"no valid checkpoint of the manifest's tree size {size}")
    proofs = json.loads(files.get("proofs.json", b"{}"))
    b64 = base64.b64decode
    for seq in sorted(s for s in known if first <= s <= last or s in digest):
        proof = [b64(h) for h in proofs.get("inclusion", {}).get(str(seq), [])]
        if not inclusion_ok(leaf_of(known[seq]), seq - 1, size, proof, roots[size]):
            c.fail(f"seq {seq}: not included in the checkpoint of size {size}")
    given = {(p["old_size"], p["new_size"]): p["proof"] for p in proofs.get("consistency", [])}
    sizes = sorted(roots)
    for a, b in itertools.pairwise(sizes):
        proof = [b64(h) for h in given.get((a, b), [])]
        if not consistency_ok(a, b, roots[a], roots[b], proof):
            c.fail(f"checkpoints {a} and {b} are not consistent: the log was rewritten")
    if not c.failures:
        print(f"OK {origin}: seq {first}..{last} ({len(digest)} bundle(s) present), included in "
              f"the signed checkpoint of size {size}; {len(sizes)} checkpoint(s) consistent")
    return c.failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="verify a compliance-agent evidence export")
    ap.add_argument("export", help="EXPORT.tar.gz or its unpacked evidence-export/ directory")
    ap.add_argument("--public-key", help="the agent's Ed25519 public key (hex), obtained "
                    "out of band; default: public_key.hex in the export, with a warning")
    args = ap.parse_args(argv)
    path = Path(args.export)
    key = args.public_key
    try:
        if key is None:
            key = read(path).get("public_key.hex", b"").decode().strip()
            print("warning: using the key inside the export; compare it with the key you were "
                  f"given: {key}", file=sys.stderr)
        failures = verify(path, key.strip().lower())
    except (Failed, ValueError, KeyError, TypeError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
