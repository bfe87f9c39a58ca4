"""Evidence budget: >= 2,000 bundles per second built,
signed, stored and queued. Prints numbers; asserts nothing.

    .venv/bin/python -m bench.bench_evidence [--bundles 4000] [--batch 200]

Real SQLite state file (WAL, synchronous=FULL) and evidence directory in a
temp dir on the same filesystem as /tmp; the real outbox hook enqueues every
bundle in the writer's transaction. `record` makes each bundle durable on
its own (file fsync + directory fsync + commit: three flushes); `record_many`
shares one syncfs and one commit across a batch, the path for a pass that
produces many outcomes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nacl.signing import SigningKey  # noqa: E402
from sqlalchemy import text  # noqa: E402

from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter  # noqa: E402
from reconciler.store.database import open_store  # noqa: E402
from reconciler.store.outbox import Outbox  # noqa: E402
from reconciler.trust.dsse import Signer  # noqa: E402
from specs.status import ActionRecord  # noqa: E402

POST_STATE = {
    "units": {f"svc{i}.service": {"active": "active", "enabled": True} for i in range(8)},
    "ruleset_hash": "ab" * 32,
}
ACTION = ActionRecord(
    step=1,
    action="RestartUnit",
    command=["systemctl", "restart", "svc1.service"],
    exit_code=0,
    duration_sec=0.12,
    result="ok",
)


def request(i: int) -> EvidenceRequest:
    return EvidenceRequest(
        check="services",
        outcome="success",
        pre_state={"i": i},
        post_state=POST_STATE,
        actions=[ACTION],
        facts={"ntp_offset_ms": 1.5, "nixos_revision": "24.05.1234"},
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundles", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--single", type=int, default=300, help="bundles for the one-by-one run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "state.db")
        outbox = Outbox(store)
        writer = EvidenceWriter(
            store,
            Signer(SigningKey.generate()),
            Path(tmp) / "evidence",
            EvidenceIdentity("clinic-1", "host-1", "reseller", "msp-1", "1.0"),
            on_stored=[outbox.on_stored],
        )
        print("evidence: budget >= 2000 bundles/s built, signed, stored and queued")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        t0, c0 = time.perf_counter(), time.process_time()
        done = 0
        while done < args.bundles:
            k = min(args.batch, args.bundles - done)
            writer.record_many([request(done + i) for i in range(k)])
            done += k
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"record_many (batch {args.batch}): {done} bundles in {dt:.3f} s = "
            f"{done / dt:.0f}/s wall ({dt / done * 1e6:.0f} us each; "
            f"CPU {cpu / done * 1e6:.0f} us = {done / cpu:.0f}/s)"
        )
        t0 = time.perf_counter()
        for i in range(args.single):
            writer.record(**request(i).__dict__)
        dt = time.perf_counter() - t0
        print(
            f"record (one durable bundle per call): {args.single} in {dt:.3f} s = "
            f"{args.single / dt:.0f}/s ({dt / args.single * 1e3:.2f} ms each)"
        )
        with store.begin() as conn:
            queued = conn.execute(text("SELECT COUNT(*) FROM outbox")).scalar_one()
            indexed = conn.execute(text("SELECT COUNT(*) FROM evidence_bundles")).scalar_one()
        files = sum(1 for _ in (Path(tmp) / "evidence").glob("*.json"))
        print(f"check: {indexed} indexed, {queued} queued, {files} files")
        writer.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
