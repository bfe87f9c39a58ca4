"""Evidence log costs at 100k bundles: signing a checkpoint per pass, proving inclusion.

    .venv/bin/python -m bench.bench_evidence_log [--bundles 100000] [--passes 30]

A real SQLite state file holds the index of --bundles bundles (rows inserted
directly with their Merkle frontier, as the writer keeps it; no envelope
files are needed for tree costs). Then --passes passes each write 10 real
signed bundles through EvidenceWriter and sign a checkpoint. Prints numbers;
asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nacl.signing import SigningKey  # noqa: E402

from reconciler.evidence.checkpoint import Checkpointer, origin_for  # noqa: E402
from reconciler.evidence.merkle import (  # noqa: E402
    consistency_proof,
    evidence_leaf,
    inclusion_proof,
    root,
    verify_inclusion,
)
from reconciler.evidence.tree import extend_tree  # noqa: E402
from reconciler.evidence.writer import (  # noqa: E402
    EvidenceIdentity,
    EvidenceRequest,
    EvidenceWriter,
)
from reconciler.store.database import open_store  # noqa: E402
from reconciler.store.evidence_index import IndexRow, insert_rows  # noqa: E402
from reconciler.store.evidence_tree import digests_from  # noqa: E402
from reconciler.trust.dsse import Signer  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=100_000)
    ap.add_argument("--passes", type=int, default=30)
    args = ap.parse_args()
    signer = Signer(SigningKey(bytes(32)))
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "state.db")
        t0 = time.perf_counter()
        prev = None
        with store.begin() as conn:
            rows = []
            for seq in range(1, args.bundles + 1):
                digest = hashlib.sha256(seq.to_bytes(8, "big")).hexdigest()
                rows.append(IndexRow(f"b{seq:08d}-0000", seq, "backup", "success",
                                     "2026-01-01T00:00:00Z", digest, prev,
                                     f"{seq:012d}-b{seq:08d}-0000.json", None, None, None))
                prev = digest
            insert_rows(conn, rows)
            extend_tree(conn, 1, [r.digest for r in rows])
        print(f"setup: {args.bundles} indexed bundles with their frontier in "
              f"{time.perf_counter() - t0:.1f} s")
        writer = EvidenceWriter(store, signer, Path(tmp) / "evidence",
                                EvidenceIdentity("clinic-1", "host-1"))
        cp = Checkpointer(store, signer, Path(tmp) / "evidence", origin_for("clinic-1", "host-1"),
                          clock=writer.clock)
        write_times, cp_times = [], []
        for p in range(args.passes):
            t = time.perf_counter()
            writer.record_many([EvidenceRequest(check=f"c{i}", outcome="success",
                                                post_state={"p": p, "i": i}) for i in range(10)])
            write_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            cp.checkpoint()
            cp_times.append(time.perf_counter() - t)
        n = args.bundles + 10 * args.passes
        print(f"per pass at ~{n} bundles: write 10 bundles median "
              f"{ms(statistics.median(write_times))}, sign+store checkpoint median "
              f"{ms(statistics.median(cp_times))} (max {ms(max(cp_times))})")

        t = time.perf_counter()
        with store.begin() as conn:
            leaves = [evidence_leaf(d) for _, d in digests_from(conn, 1)]
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        r = root(leaves)
        t_root = time.perf_counter() - t
        proofs = []
        t = time.perf_counter()
        for idx in (0, n // 3, n // 2, n - 1):
            proofs.append((idx, inclusion_proof(leaves, idx)))
        t_incl = (time.perf_counter() - t) / len(proofs)
        t = time.perf_counter()
        for idx, proof in proofs:
            assert verify_inclusion(leaves[idx], idx, n, proof, r)
        t_verify = (time.perf_counter() - t) / len(proofs)
        t = time.perf_counter()
        consistency_proof(leaves, n - 10, n)
        t_cons = time.perf_counter() - t
        print(f"inclusion proof at {n} bundles: read leaves from the index {ms(t_read)}, "
              f"one proof {ms(t_incl)} ({len(proofs[0][1])} hashes), verify {ms(t_verify)}")
        print(f"full root recomputation {ms(t_root)}; consistency proof for one pass "
              f"(delivery) {ms(t_cons)} + reading the leaves")
        cp.close()
        writer.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
