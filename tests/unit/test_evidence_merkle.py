"""RFC 6962/9162 Merkle tree: known roots, proofs round-trip, every tampered proof fails."""

from __future__ import annotations

import hashlib

import pytest

from reconciler.evidence.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The leaf inputs of the Certificate Transparency reference tests (RFC 6962 tree).
CT_INPUTS = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
CT_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"


def mth(leaves: list[bytes]) -> bytes:
    """The RFC's recursive definition, written out independently."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


LEAVES = [leaf_hash(bytes([i % 251]) * (i % 7)) for i in range(70)]


def test_known_roots() -> None:
    assert root([]) == EMPTY_ROOT
    assert root([leaf_hash(b"")]).hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
    assert root([leaf_hash(d) for d in CT_INPUTS]).hex() == CT_ROOT_8


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 70])
def test_root_and_frontier_match_the_definition(n: int) -> None:
    f = Frontier()
    f.extend(LEAVES[:n])
    assert root(LEAVES[:n]) == mth(LEAVES[:n]) == f.root()
    assert Frontier.from_bytes(n, f.to_bytes()).root() == f.root()


def test_inclusion_proofs_verify_and_fail_when_changed() -> None:
    for n in range(1, 40):
        r = root(LEAVES[:n])
        for i in range(n):
            p = inclusion_proof(LEAVES, i, n)
            assert verify_inclusion(LEAVES[i], i, n, p, r), (i, n)
            assert not verify_inclusion(LEAVES[i], i, n, p, bytes(32))
            assert not verify_inclusion(LEAVES[(i + 1) % 70], i, n, p, r)
            if p:
                bad = [bytes(32), *p[1:]]
                assert not verify_inclusion(LEAVES[i], i, n, bad, r)
                assert not verify_inclusion(LEAVES[i], i, n, p[:-1], r)


def test_consistency_proofs_verify_and_fail_when_changed() -> None:
    for n in range(1, 40):
        rn = root(LEAVES[:n])
        for m in range(0, n + 1):
            rm = root(LEAVES[:m])
            p = consistency_proof(LEAVES, m, n)
            assert verify_consistency(m, n, rm, rn, p), (m, n)
            if 0 < m < n:
                assert not verify_consistency(m, n, bytes(32), rn, p)
                assert not verify_consistency(m, n, rm, bytes(32), p)
                assert not verify_consistency(m, n, rm, rn, [bytes(32), *p[1:]])
                assert not verify_consistency(m, n, rm, rn, [*p, bytes(32)])
    # A different tree of the new size is not consistent with the old root.
    other = [*LEAVES[:5], leaf_hash(b"x"), *LEAVES[6:20]]
    p = consistency_proof(other, 8, 20)
    assert not verify_consistency(8, 20, root(LEAVES[:8]), root(other), p)
