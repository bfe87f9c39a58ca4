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
Chain continuity is checked per host over everything archived: no missing
sequence numbers (gaps), every prev_digest equal to its predecessor's digest
(else a break), no two bundles with one sequence number (forks). A bundle is
archived whatever it links to: it is verified evidence, and the tally says.
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
    """A host's archived links; the chain is judged as a whole, because the order
    in which the control plane received bundles need not be their sequence order."""

    links: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # seq -> digests
    forks: list[int] = field(default_factory=list)
    unsequenced: int = 0
    bundle_ids: set[str] = field(default_factory=set)

    @property
    def count(self) -> int:
        return len(self.bundle_ids)

    def report(self) -> dict[str, Any]:
        seqs = sorted(self.links)
        gaps = [n for n in range(seqs[0], seqs[-1] + 1) if n not in self.links][:100] \
            if seqs else []
        breaks = [n for n in seqs if n - 1 in self.links
                  and self.links[n][1] != self.links[n - 1][0]][:100]
        return {"count": self.count, "first_sequence": seqs[0] if seqs else None,
                "last_sequence": seqs[-1] if seqs else None, "gaps": gaps, "breaks": breaks,
                "forks": self.forks[:100], "unsequenced": self.unsequenced,
                "chain_intact": not (gaps or breaks or self.forks or self.unsequenced)}


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
        if not isinstance(seq, int):
            chain.unsequenced += 1
        elif seq in chain.links:
            chain.forks.append(seq)
        else:
            chain.links[seq] = (rec["digest"], rec["prev_digest"])
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
        hosts = {f"{site}/{host}": chain.report()
                 for (site, host), chain in sorted(self.hosts.items())}
        return {"archived": sum(c.count for c in self.hosts.values()),
                "hosts": hosts, "chain_intact": all(h["chain_intact"] for h in hosts.values())}
