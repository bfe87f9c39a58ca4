"""DEV ONLY: the append-only evidence archive, one JSON-lines file per host.

Each line: {"bundle_id", "sequence", "prev_digest", "digest", "envelope"} where
`digest` is the SHA-256 of the envelope bytes as published (compact sorted-key
JSON, what the agent's next bundle names as prev_digest). A line is written
and fsync'ed before the message is acknowledged, so a crash can only cause a
redelivery, which `append` recognises by bundle_id and skips (no duplicates).
Each line also keeps the message's JetStream stream sequence: the archive is
its own cursor (`last_stream_seq`), so a restarted archiver resumes in stream
order instead of waiting for unacknowledged messages to be redelivered late,
out of order.
Chain continuity is checked on the way in: a bundle whose sequence is not the
last one + 1, or whose prev_digest is not the last one's digest, is archived
(it is verified evidence) and counted as a break.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def _name(value: str) -> str:
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in value.encode()) or "%"


@dataclass
class HostChain:
    count: int = 0
    first_sequence: int | None = None
    last_sequence: int | None = None
    last_digest: str | None = None
    breaks: list[int] = field(default_factory=list)
    bundle_ids: set[str] = field(default_factory=set)


class BadEnvelope(ValueError):
    pass


def describe(raw: bytes) -> dict[str, Any]:
    """What the archive needs from an envelope (the control plane verified it)."""
    try:
        env = json.loads(raw)
        pred = json.loads(base64.b64decode(env["payload"]))["predicate"]
        bundle_id = pred["bundle_id"]
    except (ValueError, KeyError, TypeError) as e:
        raise BadEnvelope(f"not an evidence envelope: {e}") from None
    seq = pred.get("sequence")
    prev = pred.get("prev_digest")
    return {"bundle_id": str(bundle_id), "site_id": str(pred.get("site_id", "")),
            "host_id": str(pred.get("host_id", "")),
            "sequence": seq if isinstance(seq, int) else None,
            "prev_digest": prev.removeprefix("sha256:").lower() if isinstance(prev, str) else None,
            "digest": hashlib.sha256(raw).hexdigest()}


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts: dict[tuple[str, str], HostChain] = {}
        self.duplicates = 0
        self.last_stream_seq = 0
        root.mkdir(parents=True, exist_ok=True)
        for path in sorted(root.glob("*/*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self._note(self._key(rec), rec)

    @staticmethod
    def _key(rec: dict[str, Any]) -> tuple[str, str]:
        return rec["site_id"], rec["host_id"]

    def _path(self, key: tuple[str, str]) -> Path:
        return self.root / _name(key[0]) / f"{_name(key[1])}.jsonl"

    def _note(self, key: tuple[str, str], rec: dict[str, Any]) -> None:
        chain = self.hosts.setdefault(key, HostChain())
        seq = rec["sequence"]
        if chain.count and (seq is None or chain.last_sequence is None
                            or seq != chain.last_sequence + 1
                            or rec["prev_digest"] != chain.last_digest):
            chain.breaks.append(seq if isinstance(seq, int) else -1)
        chain.count += 1
        chain.first_sequence = chain.first_sequence if chain.count > 1 else seq
        chain.last_sequence, chain.last_digest = seq, rec["digest"]
        chain.bundle_ids.add(rec["bundle_id"])
        self.last_stream_seq = max(self.last_stream_seq, int(rec.get("stream_seq") or 0))

    def append(self, raw: bytes, stream_seq: int) -> bool:
        """Archive one envelope; False if it is already archived (a redelivery)."""
        rec = {**describe(raw), "stream_seq": stream_seq}
        key = self._key(rec)
        if (stream_seq <= self.last_stream_seq
                or rec["bundle_id"] in self.hosts.get(key, HostChain()).bundle_ids):
            self.duplicates += 1
            return False
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**rec, "envelope": json.loads(raw)}, sort_keys=True,
                          separators=(",", ":")) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._note(key, rec)
        return True

    def tally(self) -> dict[str, Any]:
        hosts = {f"{s}/{h}": {"count": c.count, "first_sequence": c.first_sequence,
                              "last_sequence": c.last_sequence, "breaks": c.breaks[:100],
                              "chain_intact": not c.breaks}
                 for (s, h), c in sorted(self.hosts.items())}
        return {"archived": sum(c.count for c in self.hosts.values()),
                "hosts": hosts, "chain_intact": all(h["chain_intact"] for h in hosts.values())}
