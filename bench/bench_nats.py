"""Order wake-ups over NATS: which client, and how fast a wake-up works.

1. Import cost and memory of the agent's minimal NATS client vs nats-py, each
   in a fresh interpreter that already holds what the agent has loaded anyway
   (ssl, socket, json, threading, httpx): import time, RSS after import, and
   RSS with one TLS subscription open to a real nats-server.
2. The agent's service with and without `natsUrl` (runtime dependencies
   only, as installed): RSS with the control-plane thread running, and with
   the wake-up watch connected (the budget for new features is +5 MB).
3. Wake-up latency: a signed order queued at the control plane -> the agent
   fetched it over mutual TLS and admitted it, with a 300 s poll interval
   (so only the wake-up can explain it); p50/p95/max over 20 orders.

Prints numbers; asserts nothing.

    .venv/bin/python -m bench.bench_nats
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PRELUDE = """
import time, sys, json
def rss_kb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
import ssl, socket, threading, httpx
base = rss_kb()
t0 = time.perf_counter()
"""

MINIMAL = PRELUDE + """
from reconciler.delivery import nats_client, wakeup
imported = time.perf_counter() - t0
after_import = rss_kb()
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
conn = nats_client.NatsConnection.open('127.0.0.1', int(sys.argv[4]), ctx)
conn.subscribe('orders.bench.host')
conn.flush(5)
print(json.dumps({"import_ms": imported * 1000, "import_kb": after_import - base,
                  "connected_kb": rss_kb() - base}))
"""

NATS_PY = PRELUDE + """
import asyncio
import nats
imported = time.perf_counter() - t0
after_import = rss_kb()
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[1])
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    nc = await nats.connect(f'tls://127.0.0.1:{sys.argv[4]}', tls=ctx)
    async def drop(msg):
        pass
    await nc.subscribe("orders.bench.host", cb=drop)
    await nc.flush()
    return nc
nc = asyncio.new_event_loop().run_until_complete(main())
print(json.dumps({"import_ms": imported * 1000, "import_kb": after_import - base,
                  "connected_kb": rss_kb() - base}))
"""


def measure(script: str, tls: object, port: int, runs: int = 5) -> dict[str, float]:
    rows = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", script, str(tls.ca_cert), str(tls.client_cert),  # type: ignore[attr-defined]
             str(tls.client_key), str(port)],  # type: ignore[attr-defined]
            cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
        rows.append(json.loads(out.stdout))
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


SERVICE = """
import json, sys, time
from pathlib import Path
from specs.config import load_config
from reconciler.service import build_service
def rss_kb():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
cfg = load_config(Path(sys.argv[1]))
svc = build_service(cfg)
loop = svc.control_plane
loop.start()
watcher = svc.wakeups
if watcher is not None:
    watcher.start()
    deadline = time.monotonic() + 15
    while watcher.snapshot().state.value != "connected" and time.monotonic() < deadline:
        time.sleep(0.01)
time.sleep(3)
print(json.dumps({"rss_kb": rss_kb(), "nats_client_loaded":
                  "reconciler.delivery.nats_client" in sys.modules,
                  "state": watcher.snapshot().state.value if watcher else None}))
"""


def service_rss(tmp: Path, tls: object, nats_url: str | None) -> dict[str, object]:
    from bench.bench_agent import runtime_python
    from reconciler.trust.keys import generate_key_file

    tmp.mkdir(parents=True, exist_ok=True)
    generate_key_file(tmp / "signing.key")
    (tmp / "baseline.json").write_text(json.dumps({"version": 1, "policy_version": "1.0"}))
    cfg = {
        "siteId": "bench", "hostId": "bench-host", "deploymentMode": "direct",
        "baselinePath": str(tmp / "baseline.json"),
        "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),  # type: ignore[attr-defined]
        "caCertFile": str(tls.ca_cert), "signingKeyFile": str(tmp / "signing.key"),  # type: ignore[attr-defined]
        "mcpPublicKeys": ["ab" * 32], "mcpUrl": "https://localhost:9",
        "allowedHosts": ["localhost"], "natsUrl": nats_url,
        "stateDirectory": str(tmp / "state"), "statusSocket": None,
    }
    (tmp / "config.json").write_text(json.dumps(cfg))
    rows = []
    for _ in range(3):
        out = subprocess.run([runtime_python(), "-c", SERVICE, str(tmp / "config.json")],
                             cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
                             env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows.sort(key=lambda r: r["rss_kb"])
    return rows[1]


def main() -> int:
    from tests.support.nats_stack import start_nats, wait_until, wakeup_stack
    from tests.support.tls import make_tls

    if shutil.which("nats-server") is None:
        print("nats-server not installed (Debian package nats-server); skipped")
        return 1
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tls = make_tls(tmp / "tls")
        nats = start_nats(tmp / "nats", tls)
        try:
            print("client cost (median of 5 fresh interpreters; baseline: ssl, socket, "
                  "threading, httpx already imported):")
            for name, script in (("minimal (reconciler.delivery.nats_client)", MINIMAL),
                                 ("nats-py", NATS_PY)):
                m = measure(script, tls, nats.port)
                print(f"  {name:44} import {m['import_ms']:6.1f} ms  "
                      f"RSS +{m['import_kb'] / 1024:5.2f} MB after import, "
                      f"+{m['connected_kb'] / 1024:5.2f} MB subscribed over TLS")
            off = service_rss(tmp / "svc-off", tls, None)
            on = service_rss(tmp / "svc-on", tls, nats.url_for("localhost"))
            print("agent service (runtime dependencies only; control-plane thread running; "
                  "median of 3):")
            print(f"  natsUrl unset: RSS {off['rss_kb'] / 1024:5.1f} MB  (NATS client loaded: "
                  f"{off['nats_client_loaded']})")
            print(f"  natsUrl set:   RSS {on['rss_kb'] / 1024:5.1f} MB  (watch {on['state']}; "
                  f"+{(on['rss_kb'] - off['rss_kb']) / 1024:.1f} MB, budget for watches +5 MB)")
        finally:
            nats.stop()

        from reconciler.delivery.wakeup import POLLS_PER_MINUTE

        with wakeup_stack(tmp / "stack", poll_interval=300) as st:
            from reconciler.delivery.wakeup import WatchState

            wait_until(lambda: st.watcher.snapshot().state is WatchState.connected, 15,
                       "the watch")
            wait_until(lambda: st.loop.stats.polls >= 1, 15, "the first poll")
            latencies = []
            for i in range(20):
                t0 = time.perf_counter()
                st.queue_order()
                wait_until(lambda n=i + 1: st.loop.stats.orders_admitted >= n, 30, "admission")
                latencies.append(time.perf_counter() - t0)
                time.sleep(60.0 / POLLS_PER_MINUTE * 1.1)  # stay under the rate limit
            interval_polls = st.loop.stats.polls - st.loop.stats.requested_polls
        ms = sorted(x * 1000 for x in latencies)
        p95 = ms[round(0.95 * (len(ms) - 1))]
        print("wake-up -> order fetched over mTLS and admitted (poll interval 300 s):")
        print(f"  n={len(ms)}  p50 {statistics.median(ms):.1f} ms  p95 {p95:.1f} ms  "
              f"max {ms[-1]:.1f} ms  (budget p95 <= 1000 ms; interval polls meanwhile: "
              f"{interval_polls})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
