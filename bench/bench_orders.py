"""Order admission budget: >= 5,000 orders admitted or
rejected per second. Prints numbers; asserts nothing.

    .venv/bin/python -m bench.bench_orders [--orders 5000] [--batch 100]

Uses a real SQLite state file (WAL, synchronous=FULL) in a temp directory.
Envelopes are signed before timing starts; what is timed is `admit`:
size/JSON/shape checks, Ed25519 verification, payload validation, the
nonce lookup and, for admitted orders, the durable nonce insert. An admitted
order costs one fsync'd commit when admitted alone (`admit`), or a share of
one commit per batch (`admit_many`, what a control-plane poll uses).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nacl.signing import SigningKey  # noqa: E402

from reconciler.store.database import open_store  # noqa: E402
from reconciler.store.nonces import NonceStore  # noqa: E402
from reconciler.trust.admission import OrderAdmission  # noqa: E402
from reconciler.trust.dsse import Signer, envelope_bytes  # noqa: E402
from specs.orders import ORDER_PAYLOAD_TYPE, format_rfc3339  # noqa: E402

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_orders(signer: Signer, n: int, **overrides: object) -> list[bytes]:
    out = []
    for i in range(n):
        body = {
            "order_id": f"ord-{i}",
            "site_id": "clinic-1",
            "host_id": "host-1",
            "nonce": secrets.token_hex(16),
            "issued_at": format_rfc3339(NOW - timedelta(seconds=5)),
            "ttl_seconds": 600,
            "action": "run_backup",
            "params": {"job": "daily"},
        }
        body.update(overrides)
        env = signer.sign_envelope(json.dumps(body).encode(), ORDER_PAYLOAD_TYPE)
        out.append(envelope_bytes(env))
    return out


def rate(label: str, n: int, fn: Callable[[], object]) -> float:
    """Wall-clock rate; also CPU time per order, which a busy machine distorts less."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_s = n / dt
    print(
        f"{label:<48} {n:>6} in {dt:7.3f} s = {per_s:>8.0f}/s wall"
        f" ({dt / n * 1e6:6.1f} us; CPU {cpu / n * 1e6:6.1f} us = {n / cpu:>7.0f}/s)"
    )
    return per_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=100)
    args = ap.parse_args()
    n = args.orders
    mcp, other = Signer(SigningKey.generate()), Signer(SigningKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "state.db")
        adm = OrderAdmission(
            [mcp.public_key_hex],
            "clinic-1",
            "host-1",
            900,
            5,
            NonceStore(store),
            clock=lambda: NOW,
        )
        fresh_batch = make_orders(mcp, n)
        fresh_single = make_orders(mcp, min(n, 1000))
        unknown = make_orders(other, n)
        wrong_host = make_orders(mcp, n, host_id="host-2")
        expired = make_orders(mcp, n, issued_at=format_rfc3339(NOW - timedelta(hours=2)))
        garbage = [secrets.token_bytes(300) for _ in range(n)]

        def batched() -> None:
            for i in range(0, n, args.batch):
                vs = adm.admit_many(fresh_batch[i : i + args.batch], NOW)
                assert all(v.admitted for v in vs)

        def single(envs: list[bytes], admitted: bool) -> Callable[[], None]:
            def run() -> None:
                for e in envs:
                    assert adm.admit(e, NOW).admitted is admitted

            return run

        print(f"orders: budget >= 5000 admitted or rejected per second; batch={args.batch}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        rates = {
            "admitted (admit_many)": rate(
                f"admitted, admit_many batches of {args.batch}", n, batched
            ),
            "seen again": rate(
                "seen again: AlreadyAdmitted (nonce lookup)", n, single(fresh_batch, False)
            ),
            "unknown key": rate("rejected UnknownKey", n, single(unknown, False)),
            "wrong host": rate("rejected WrongHost (verify + parse)", n, single(wrong_host, False)),
            "expired": rate("rejected Expired", n, single(expired, False)),
            "garbage": rate("rejected Malformed (random bytes)", n, single(garbage, False)),
            "admitted (admit)": rate(
                "admitted one by one (one fsync'd commit each)",
                len(fresh_single),
                single(fresh_single, True),
            ),
        }
        store.close()
    worst = min(v for k, v in rates.items() if k != "admitted (admit)")
    print(f"slowest batched/rejection path: {worst:.0f}/s (budget 5000/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
