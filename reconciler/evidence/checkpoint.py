"""Signed checkpoints of the evidence log (C2SP tlog-checkpoint signed notes).

After each pass that wrote bundles, `Checkpointer.checkpoint()` signs the
tree head with the agent's evidence key:

    compliance-agent.dev/evidence/<site_id>/<host_id>     origin (= note key name)
    <tree size>                                           bundles ever written
    <base64 root hash>                                    RFC 9162 root

    — compliance-agent.dev/evidence/<site_id>/<host_id> base64(key hash || Ed25519 signature)

It is stored in the index database (table evidence_checkpoints) and as a file
`checkpoints/<tree size:012d>.note` beside the bundles, so a copy of the
evidence directory carries its checkpoints. The frontier makes this O(log n).
A tree that did not grow is not re-signed: its checkpoint would be
byte-identical (Ed25519 is deterministic and the body has no time).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reconciler.evidence.note import Checkpoint, SignedNote, check_name, sign_note
from reconciler.evidence.tree import synced_frontier
from reconciler.store.database import Store
from reconciler.store.evidence_index import EvidenceDir
from reconciler.store.evidence_tree import insert_checkpoint, latest_checkpoint, mark_cosigned
from reconciler.trust.dsse import Signer
from specs.orders import format_rfc3339

log = logging.getLogger(__name__)

ORIGIN_PREFIX = "compliance-agent.dev/evidence"
CHECKPOINT_DIR = "checkpoints"


def origin_for(site_id: str, host_id: str) -> str:
    return check_name(f"{ORIGIN_PREFIX}/{site_id}/{host_id}")


def checkpoint_file_name(tree_size: int, cosigned: bool = False) -> str:
    return f"{tree_size:012d}.cosigned.note" if cosigned else f"{tree_size:012d}.note"


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: SignedNote


class Checkpointer:
    """Signs and stores checkpoints of one host's evidence tree."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        evidence_dir: Path,
        origin: str,
        clock: Callable[[], datetime],
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin = check_name(origin)
        self.dir = EvidenceDir(Path(evidence_dir) / CHECKPOINT_DIR)
        self.clock = clock

    def close(self) -> None:
        self.dir.close()

    def checkpoint(self) -> SignedCheckpoint | None:
        """Sign the current tree head if it grew since the last checkpoint."""
        with self.store.begin() as conn:
            frontier = synced_frontier(conn)
            last = latest_checkpoint(conn)
            if frontier.size == 0 or (last is not None and last.tree_size >= frontier.size):
                return None
            cp = Checkpoint(self.origin, frontier.size, frontier.root())
            note = sign_note(cp.text(), self.origin, self.signer.sign,
                             bytes.fromhex(self.signer.public_key_hex))
            rendered = note.render()
            name = checkpoint_file_name(cp.size)
            self.dir.unlink(name)  # a leftover of a commit that failed
            self.dir.write(name, rendered.encode())
            insert_checkpoint(conn, cp.size, cp.root, rendered, format_rfc3339(self.clock()))
        log.debug("evidence checkpoint signed at tree size %d", cp.size)
        return SignedCheckpoint(cp, note)

    def checkpoint_safely(self) -> None:
        """For pass hooks: a failure is logged loudly and never stops the loop."""
        try:
            self.checkpoint()
        except Exception:
            log.exception("cannot sign an evidence checkpoint",
                          extra={"reason": "CheckpointFailed"})

    def store_cosigned(self, tree_size: int, cosigned: SignedNote) -> None:
        """Keep the control plane's countersigned copy (database and file)."""
        rendered = cosigned.render()
        name = checkpoint_file_name(tree_size, cosigned=True)
        self.dir.unlink(name)
        self.dir.write(name, rendered.encode())
        with self.store.begin() as conn:
            mark_cosigned(conn, tree_size, rendered, format_rfc3339(self.clock()))
