"""Deliver the newest evidence checkpoint to the control plane and keep its cosignature.

One round: ask the control plane which tree size it countersigned last (k),
send the newest local checkpoint (size n) with the RFC 9162 consistency
proof from k to n, check the answer is our checkpoint countersigned by a key
in `mcpPublicKeys` (C2SP tlog-cosignature/v1), and store it. k > n means the
control plane saw a larger tree than this host now has: the state directory
was rolled back or truncated; that is logged as an error and nothing is sent.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence

from reconciler.delivery.client import ControlPlaneClient, ControlPlaneError
from reconciler.evidence.checkpoint import Checkpointer
from reconciler.evidence.merkle import consistency_proof, evidence_leaf
from reconciler.evidence.note import NoteError, SignedNote, verify_cosignature
from reconciler.store.database import Store
from reconciler.store.evidence_tree import digests_from, latest_checkpoint, mark_delivery_error

log = logging.getLogger(__name__)


class CheckpointDelivery:
    def __init__(self, client: ControlPlaneClient, store: Store, checkpointer: Checkpointer,
                 control_plane_keys: Sequence[str]) -> None:
        self.client = client
        self.store = store
        self.checkpointer = checkpointer
        self.keys = [bytes.fromhex(k) for k in control_plane_keys]
        self.cosigned = 0
        self._leaves: list[bytes] = []  # leaf hashes read so far (the index only grows)

    def deliver_once(self) -> bool:
        """True if a checkpoint was countersigned now."""
        with self.store.begin() as conn:
            latest = latest_checkpoint(conn)
        if latest is None or latest.cosigned_note is not None:
            return False
        try:
            theirs = self.client.fetch_checkpoint_size()
            if theirs > latest.tree_size:
                raise NoteError(
                    f"the control plane countersigned a tree of {theirs} bundles but this host "
                    f"has {latest.tree_size}: the evidence state was rolled back or truncated")
            proof = consistency_proof(self._leaves_upto(latest.tree_size), theirs,
                                      latest.tree_size)
            cosigned = SignedNote.parse(self.client.post_checkpoint(
                latest.note, theirs, [base64.b64encode(h).decode() for h in proof]))
            self._check(cosigned, latest.note)
        except (ControlPlaneError, NoteError) as e:
            with self.store.begin() as conn:
                mark_delivery_error(conn, latest.tree_size, str(e))
            level = logging.WARNING if isinstance(e, ControlPlaneError) else logging.ERROR
            log.log(level, "evidence checkpoint %d not countersigned: %s", latest.tree_size, e,
                    extra={"reason": "CheckpointNotCosigned"})
            return False
        self.checkpointer.store_cosigned(latest.tree_size, cosigned)
        self.cosigned += 1
        return True

    def _leaves_upto(self, size: int) -> list[bytes]:
        if len(self._leaves) > size:
            self._leaves = []  # the index shrank under us: start over from it
        if len(self._leaves) < size:
            with self.store.begin() as conn:
                self._leaves.extend(evidence_leaf(d) for _, d in
                                    digests_from(conn, len(self._leaves) + 1))
        return self._leaves[:size]

    def _check(self, cosigned: SignedNote, sent: str) -> None:
        if cosigned.text != SignedNote.parse(sent).text:
            raise NoteError("the control plane countersigned another checkpoint")
        for sig in cosigned.signatures:
            for key in self.keys:
                try:
                    verify_cosignature(cosigned, sig.name, key)
                    return
                except NoteError:
                    continue
        raise NoteError("no valid cosignature by a control-plane key (mcpPublicKeys)")
