"""Start-up reconciliation of the evidence index with the signed files.

    .venv/bin/python -m bench.bench_evidence_recovery [--bundles 20000]

Writes --bundles real signed bundles (batches through EvidenceWriter, a
checkpoint at the end), then times: a normal start (index intact: only the
directory listing and the newest checkpoint are checked), and a start after
the state database was deleted (every file verified and adopted back).
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nacl.signing import SigningKey  # noqa: E402

from reconciler.evidence.checkpoint import Checkpointer, origin_for  # noqa: E402
from reconciler.evidence.writer import (  # noqa: E402
    EvidenceIdentity,
    EvidenceRequest,
    EvidenceWriter,
)
from reconciler.store.database import open_store  # noqa: E402
from reconciler.trust.dsse import Signer  # noqa: E402

SIGNER = Signer(SigningKey(b"\x22" * 32))
IDENT = EvidenceIdentity("clinic-1", "host-1")


def _start(tmp: Path) -> tuple[float, EvidenceWriter]:
    t0 = time.perf_counter()
    store = open_store(tmp / "state.db")
    w = EvidenceWriter(store, SIGNER, tmp / "ev", IDENT)
    return time.perf_counter() - t0, w


def _close(w: EvidenceWriter) -> None:
    w.close()
    w.store.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _, w = _start(tmp)
        t0 = time.perf_counter()
        for i in range(0, args.bundles, 500):
            w.record_many([EvidenceRequest(check="backup", outcome="success",
                                           post_state={"i": i + j}) for j in range(500)])
        Checkpointer(w.store, SIGNER, tmp / "ev", origin_for("clinic-1", "host-1"),
                     clock=lambda: datetime.now(UTC)).checkpoint()
        print(f"setup: {args.bundles} bundles written in {time.perf_counter() - t0:.1f} s")
        _close(w)
        normal, w = _start(tmp)
        _close(w)
        print(f"normal start (index intact): open store + reconcile {normal * 1000:.1f} ms")
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (tmp / name).unlink(missing_ok=True)
        rebuilt, w = _start(tmp)
        n = len(w.recovery.adopted)
        _close(w)
        print(f"start after the database was deleted: {n} bundles verified and adopted in "
              f"{rebuilt:.2f} s ({n / rebuilt:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
