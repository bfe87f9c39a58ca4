"""Outbox budget: 10,000 queued bundles delivered in <= 10 s
over one kept-alive mTLS connection. Prints numbers; asserts nothing.

    .venv/bin/python bench/bench_outbox.py [--bundles 10000] [--batch-size 500]

The receiver is the DEV ONLY demo control plane in a subprocess (so its CPU
is not charged to the agent's process), with real mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nacl.signing import SigningKey  # noqa: E402

from reconciler.delivery.client import ControlPlaneClient  # noqa: E402
from reconciler.delivery.deliverer import Deliverer  # noqa: E402
from reconciler.store.database import open_store  # noqa: E402
from reconciler.store.outbox import Outbox  # noqa: E402
from tests.support.agent import ChainedBundles, load, write_agent_config  # noqa: E402
from tests.support.control_plane import ControlPlaneProcess  # noqa: E402
from tests.support.tls import make_tls  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tls = make_tls(tmp / "tls")
        key = SigningKey.generate()
        with ControlPlaneProcess(tls, tmp, [bytes(key.verify_key).hex()]) as cp:
            cfg_path, _ = write_agent_config(tmp / "agent", tls, cp.url(), [cp.public_key])
            cfg = load(cfg_path)
            store = open_store(cfg.database_path)
            outbox = Outbox(store)
            bundles = ChainedBundles(key)
            items = [bundles.next() for _ in range(args.bundles)]
            t0 = time.perf_counter()
            with store.begin() as conn:
                for bid, env in items:
                    outbox.enqueue(conn, bid, env)
            t_enqueue = time.perf_counter() - t0
            client = ControlPlaneClient(cfg)
            deliverer = Deliverer(outbox, client, batch_size=args.batch_size,
                                  max_batches=args.bundles // args.batch_size + 10)
            t0 = time.perf_counter()
            result = deliverer.deliver_once()
            t_deliver = time.perf_counter() - t0
            info = client.connection_info()
            client.close()
            summary = cp.summary()
        reqs = [int(m) for i in info for m in re.findall(r"Request Count: (\d+)", i)]
        print(json.dumps({
            "bundles": args.bundles,
            "batch_size": args.batch_size,
            "enqueue_seconds": round(t_enqueue, 3),
            "deliver_seconds": round(t_deliver, 3),
            "bundles_per_second": round(result.delivered / t_deliver, 1),
            "delivered": result.delivered,
            "connections": len(info),
            "requests_on_connection": reqs,
            "receiver_stored": summary["bundles_stored"],
            "receiver_chain_intact": summary["chain_intact"],
            "budget_seconds": 10.0,
            "within_budget": t_deliver <= 10.0 and result.delivered == args.bundles,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
