"""DEV ONLY: `python -m demo.archiver {run,tally}`.

`run` consumes the EVIDENCE stream with a durable pull consumer and explicit
acks (each message is acknowledged only after its archive line is on disk);
on every (re)connect the consumer is set to start right after the last stream
sequence the archive holds, so the archive stays in stream order,
and writes its lag (messages not yet acknowledged) and counters to a
Prometheus textfile. `tally` prints what the archive holds, per host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from demo.archiver.archive import Archive, BadEnvelope

STREAM = "EVIDENCE"
DURABLE = "archiver"


class Metrics:
    def __init__(self, path: Path | None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.path = path
        self.registry = r = CollectorRegistry()
        self.lag = Gauge("demo_archiver_lag_messages", "EVIDENCE messages not yet archived "
                         "(pending + unacknowledged).", registry=r)
        self.archived = Counter("demo_archiver_archived", "Envelopes archived.", registry=r)
        self.duplicates = Counter("demo_archiver_duplicates", "Redeliveries skipped.", registry=r)
        self.breaks = Gauge("demo_archiver_chain_breaks", "Chain breaks seen in the archive.",
                            registry=r)
        self.bad = Counter("demo_archiver_bad_messages", "Messages that are not envelopes.",
                           registry=r)

    def write(self) -> None:
        if self.path is not None:
            from prometheus_client import write_to_textfile

            write_to_textfile(str(self.path), self.registry)


async def run(args: argparse.Namespace) -> int:
    import nats
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from nats.js.errors import NotFoundError

    from demo.control_plane.fanout import client_tls

    archive = Archive(Path(args.dir))
    metrics = Metrics(Path(args.metrics) if args.metrics else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"archiver: {archive.tally()['archived']} envelopes already archived", flush=True)
    while not stop.is_set():
        try:
            nc = await nats.connect(args.nats_url, tls=client_tls(args.ca, args.cert, args.key),
                                    allow_reconnect=False, connect_timeout=2,
                                    name="demo-archiver")
        except Exception as e:
            print(f"archiver: NATS unavailable ({type(e).__name__}); retrying", flush=True)
            await asyncio.sleep(0.5)
            continue
        try:
            js = nc.jetstream(timeout=5)
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(STREAM, DURABLE)
            start = archive.last_stream_seq + 1
            sub = await js.pull_subscribe(
                "evidence.>", durable=DURABLE, stream=STREAM,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=1000,
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start))
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except NatsTimeout:
                    msgs = []
                for msg in msgs:
                    _archive_one(archive, metrics, msg.data, msg.metadata.sequence.stream)
                    await msg.ack()
                if msgs:
                    await nc.flush(5)
                info = await sub.consumer_info()
                metrics.lag.set(info.num_pending + info.num_ack_pending)
                metrics.breaks.set(sum(len(c.report()["breaks"]) for c in archive.hosts.values()))
                metrics.write()
        except Exception as e:
            print(f"archiver: {type(e).__name__}: {e}; reconnecting", flush=True)
            await asyncio.sleep(0.5)
        finally:
            await nc.close()
    return 0


def _archive_one(archive: Archive, metrics: Metrics, data: bytes, stream_seq: int) -> None:
    try:
        if archive.append(data, stream_seq):
            metrics.archived.inc()
        else:
            metrics.duplicates.inc()
    except BadEnvelope as e:  # acknowledged anyway: redelivering it cannot help
        metrics.bad.inc()
        print(f"archiver: skipped a message: {e}", flush=True)


def cmd_tally(args: argparse.Namespace) -> int:
    out: dict[str, Any] = Archive(Path(args.dir)).tally()
    print(json.dumps(out, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demo.archiver",
                                description="DEV ONLY evidence archiver (JetStream consumer).")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="consume EVIDENCE and append to the archive")
    r.add_argument("--nats-url", required=True)
    r.add_argument("--ca", required=True)
    r.add_argument("--cert", required=True, help="client certificate (PEM; may hold the key)")
    r.add_argument("--key")
    r.add_argument("--dir", required=True)
    r.add_argument("--metrics", help="Prometheus textfile to write the lag and counters to")
    t = sub.add_parser("tally", help="per host: count, sequence range, chain intact")
    t.add_argument("--dir", required=True)
    args = p.parse_args(argv)
    if args.cmd == "tally":
        return cmd_tally(args)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
