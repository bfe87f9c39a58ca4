"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs and their verification.

Pure functions over *leaf hashes* (32-byte values), so callers decide what a
leaf is. In the evidence log a leaf's data is the 32-byte SHA-256 of a
bundle's envelope file (see `evidence_leaf`), which is what lets a pruned
bundle keep its leaf: its digest stays in the index and in the signed prune
record after the file is gone.

    leaf hash = SHA-256(0x00 || leaf data)
    node hash = SHA-256(0x01 || left || right)
    MTH({})   = SHA-256("")

`Frontier` is the compact state of an append-only tree: the roots of its
maximal complete subtrees, largest first (one per set bit of the size), so
appending is amortised O(1) and the root is O(log n) to compute.

Proof generation follows RFC 9162 2.1.3.1 (PATH) and 2.1.4.1 (SUBPROOF) and
costs O(n) hashes over the leaf list; verification follows 2.1.3.2 and
2.1.4.2 and costs O(log n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from specs.errors import ComplianceAgentError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ComplianceAgentError):
    """A proof was asked for positions the tree does not have."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def evidence_leaf(envelope_digest_hex: str) -> bytes:
    """Leaf hash of one evidence bundle, from the hex SHA-256 of its envelope bytes."""
    return leaf_hash(bytes.fromhex(envelope_digest_hex))


def _split(n: int) -> int:
    """The largest power of two smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) of leaf hashes."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[lo]
    if n & (n - 1) == 0:
        # Complete subtree: hash level by level (no recursion overhead).
        level = list(leaves[lo:hi])
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        return level[0]
    k = _split(n)
    return node_hash(subtree_root(leaves, lo, lo + k), subtree_root(leaves, lo + k, hi))


def root(leaves: Sequence[bytes]) -> bytes:
    return subtree_root(leaves, 0, len(leaves))


def inclusion_proof(leaves: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 9162 2.1.3.1)."""
    n = len(leaves) if size is None else size
    if not 0 <= index < n <= len(leaves):
        raise ProofError(f"no leaf {index} in a tree of size {n}")
    proof: list[bytes] = []
    lo, hi = 0, n
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            proof.append(subtree_root(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_root(leaves, lo, lo + k))
            lo = lo + k
    proof.reverse()  # PATH lists the sibling nearest the leaf first
    return proof


def consistency_proof(leaves: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """PROOF(old_size, D[0:new_size]) (RFC 9162 2.1.4.1); empty when the sizes are equal."""
    if not 0 <= old_size <= new_size <= len(leaves):
        raise ProofError(f"no consistency proof from {old_size} to {new_size}")
    if old_size in (0, new_size):
        return []
    proof: list[bytes] = []
    lo, hi, m, complete = 0, new_size, old_size, True
    while True:
        n = hi - lo
        if m == n:
            if not complete:
                proof.append(subtree_root(leaves, lo, hi))
            break
        k = _split(n)
        if m <= k:
            proof.append(subtree_root(leaves, lo + k, hi))
            hi = lo + k
        else:
            proof.append(subtree_root(leaves, lo, lo + k))
            lo, m, complete = lo + k, m - k, False
    proof.reverse()
    return proof


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 2.1.3.2."""
    if index >= size or index < 0:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 2.1.4.2 (old_size 0 is consistent with anything, given an empty proof)."""
    if old_size > new_size or old_size < 0:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


@dataclass
class Frontier:
    """Roots of the maximal complete subtrees of a tree of `size` leaves, largest first."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> None:
        h, s = leaf, self.size
        while s & 1:
            h = node_hash(self.hashes.pop(), h)
            s >>= 1
        self.hashes.append(h)
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def to_bytes(self) -> bytes:
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, blob: bytes) -> Frontier:
        hashes = [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]
        if len(hashes) != bin(size).count("1") or len(blob) % HASH_SIZE:
            raise ProofError(f"stored frontier does not fit a tree of size {size}")
        return cls(size, hashes)
