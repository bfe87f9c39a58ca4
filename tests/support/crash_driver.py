"""Agent stand-in for crash tests: `python -m tests.support.crash_driver --config FILE`.

Loops forever: record one or two evidence bundles (EvidenceWriter, with the
Outbox hook in the same transaction), then one delivery round (Deliverer over
mTLS). Meant to be killed with SIGKILL at any moment. `--drain` instead
delivers until the outbox is empty and exits 0. `--ready-file` is touched once
everything is open, so a test can time its kill into the working loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from reconciler.delivery.client import ControlPlaneClient
from reconciler.delivery.deliverer import Deliverer
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.store.outbox import Outbox
from reconciler.trust.keys import load_signing_key
from specs.backoff import Backoff
from specs.config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="crash_driver")
    p.add_argument("--config", required=True)
    p.add_argument("--ready-file")
    p.add_argument("--drain", action="store_true")
    p.add_argument("--batch-size", type=int, default=5)
    args = p.parse_args(argv)

    cfg = load_config(Path(args.config))
    store = open_store(cfg.database_path)
    outbox = Outbox(store)
    writer = EvidenceWriter(
        store, load_signing_key(cfg.signing_key_file), cfg.evidence_directory,
        EvidenceIdentity.from_config(cfg), on_stored=[outbox.on_stored],
    )
    client = ControlPlaneClient(cfg)
    # Short backoff: a test outage must not park bundles for minutes.
    deliverer = Deliverer(outbox, client, batch_size=args.batch_size, max_batches=2,
                          backoff=Backoff(base=0.01, cap=0.2))
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")

    if args.drain:
        deadline = time.monotonic() + 120
        while outbox.stats().depth and time.monotonic() < deadline:
            deliverer.max_batches = 1000
            if deliverer.deliver_once().delivered == 0:
                time.sleep(0.05)  # bounded by the deadline; only after a failed round
        left = outbox.stats().depth
        print(f"drained; {left} left", flush=True)
        return 0 if left == 0 else 1

    n = 0
    while True:
        n += 1
        writer.record(check="firewall" if n % 2 else "services", outcome="success",
                      facts={"iteration": n})
        if n % 3 == 0:
            writer.record(check="time", outcome="alert", error="simulated skew")
        deliverer.deliver_once()


if __name__ == "__main__":
    sys.exit(main())
