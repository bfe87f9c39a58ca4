"""The evidence log's Merkle tree, kept in step with the index.

Leaf i (0-based) is the bundle with sequence i + 1; its leaf data is the
32-byte SHA-256 of the envelope file's exact bytes (the index `digest`), so
its leaf hash is SHA-256(0x00 || digest). The index keeps every digest, even
of pruned bundles (tombstones), and prune bundles list them, so the tree
stays whole after pruning.

The frontier (migration 0030) is updated in the same transaction as the
index rows, by the writer: a checkpoint then costs O(log n).
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.evidence.merkle import Frontier, ProofError, evidence_leaf
from reconciler.store.database import Transaction
from reconciler.store.evidence_index import chain_head
from reconciler.store.evidence_tree import digests_from, save_tree_state, tree_state
from specs.errors import ComplianceAgentError


class TreeTampered(ComplianceAgentError):
    """The stored tree and the index disagree: something was deleted or edited."""


def load_frontier(conn: Transaction) -> Frontier:
    state = tree_state(conn)
    if state is None:
        raise TreeTampered("the evidence tree state row is missing (table evidence_tree)")
    size, blob = state
    try:
        return Frontier.from_bytes(size, blob)
    except ProofError as e:
        raise TreeTampered(str(e)) from None


def check_appendable(conn: Transaction) -> tuple[int, str | None]:
    """The chain head, after checking the index still holds every leaf of the tree.

    Writing on top of a truncated index would reuse sequence numbers the tree
    (and its signed checkpoints) already commit to, so the writer refuses.
    """
    head, digest = chain_head(conn)
    frontier = load_frontier(conn)
    if frontier.size > head:
        raise TreeTampered(
            f"the evidence index ends at sequence {head} but the Merkle tree already has "
            f"{frontier.size} leaves: index rows were deleted; no evidence is written until "
            "this is investigated ('compliance-agent evidence verify --all')"
        )
    return head, digest


def extend_tree(conn: Transaction, first_sequence: int, digests: Sequence[str]) -> Frontier:
    """Add the bundles `first_sequence`.. (just inserted) to the stored frontier."""
    frontier = load_frontier(conn)
    if frontier.size < first_sequence - 1:
        # A chain written before the tree existed: catch up from the index once.
        for seq, digest in digests_from(conn, frontier.size + 1):
            if seq >= first_sequence:
                break
            if seq != frontier.size + 1:
                raise TreeTampered(f"the evidence index has no sequence {frontier.size + 1}")
            frontier.append(evidence_leaf(digest))
    if frontier.size != first_sequence - 1:
        raise TreeTampered(
            f"the Merkle tree has {frontier.size} leaves; cannot append sequence {first_sequence}"
        )
    frontier.extend(evidence_leaf(d) for d in digests)
    save_tree_state(conn, frontier.size, frontier.to_bytes())
    return frontier


def synced_frontier(conn: Transaction) -> Frontier:
    """The frontier, caught up with the index if the writer has not appended since
    the tree was introduced (read-only callers get the caught-up value, unsaved)."""
    frontier = load_frontier(conn)
    for seq, digest in digests_from(conn, frontier.size + 1):
        if seq != frontier.size + 1:
            raise TreeTampered(f"the evidence index has no sequence {frontier.size + 1}")
        frontier.append(evidence_leaf(digest))
    return frontier
