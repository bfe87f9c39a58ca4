"""DEV ONLY: the control plane's NATS side (nats-py, on its own thread).

* Order wake-ups: when an order is queued for a host (by the API, the CLI or
  anything else writing the SQLite file), publish an empty message on
  `orders.<site>.<host>`. Best effort: a lost wake-up only means the agent
  sees the order at its next poll.
* Evidence fan-out: every verified envelope, in arrival order, is published to
  the JetStream stream EVIDENCE on `evidence.<site>.<host>` with
  `Nats-Msg-Id: <bundle_id>` (the server drops repeats within its duplicate
  window). The cursor (the evidence row id) is saved in SQLite only after
  JetStream acknowledged the message, so a killed NATS server or control
  plane loses nothing: publishing resumes from the cursor, and a repeat that
  slips past the window is dropped by the archiver.

Subject tokens escape every character outside [A-Za-z0-9_-] as %XX (UTF-8),
the agent's rule, written again here on purpose so the two check each other.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

from demo.control_plane.storage import Storage

log = logging.getLogger("demo.control_plane.fanout")

EVIDENCE_STREAM = "EVIDENCE"
CURSOR_FLAG = "fanout_evidence_rowid"
_SAFE = set(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def token(value: str) -> str:
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in value.encode())


def order_subject(site: str, host: str) -> str:
    return f"orders.{token(site)}.{token(host)}"


def evidence_subject(site: str, host: str) -> str:
    return f"evidence.{token(site)}.{token(host)}"


def client_tls(ca: str | Path, cert: str | Path, key: str | Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class FanOut:
    def __init__(self, storage: Storage, url: str, tls: ssl.SSLContext,
                 interval: float = 0.02) -> None:
        self.storage = storage
        self.url = url
        self.tls = tls
        self.interval = interval
        self.published_wakeups = 0
        self.published_evidence = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="nats-fanout", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    async def _main(self) -> None:
        order_top, _ = self.storage.order_hosts_after(1 << 62)
        while not self._stop.is_set():
            try:
                order_top = await self._session(order_top)
            except Exception as e:  # server down or restarting: retry, never give up
                log.warning("NATS fan-out: %s: %s; retrying", type(e).__name__, e)
                await asyncio.sleep(0.5)

    async def _session(self, order_top: int) -> int:
        import nats
        from nats.js.api import StreamConfig

        nc = await nats.connect(self.url, tls=self.tls, allow_reconnect=False,
                                connect_timeout=2, name="demo-control-plane")
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name=EVIDENCE_STREAM, subjects=["evidence.>"],
                                             duplicate_window=120.0))
            while not self._stop.is_set():
                order_top = await self._wakeups(nc, order_top)
                await self._evidence(js)
                await asyncio.sleep(self.interval)
            return order_top
        finally:
            await nc.close()

    async def _wakeups(self, nc: object, after: int) -> int:
        top, hosts = self.storage.order_hosts_after(after)
        for site, host in hosts:
            await nc.publish(order_subject(site, host), b"")  # type: ignore[attr-defined]
            self.published_wakeups += 1
        if hosts:
            await nc.flush(2)  # type: ignore[attr-defined]
        return top

    async def _evidence(self, js: object) -> None:
        cursor = int(self.storage.flag(CURSOR_FLAG) or 0)
        for rowid, item in self.storage.evidence_after(cursor):
            await js.publish(  # type: ignore[attr-defined]
                evidence_subject(item.site_id, item.host_id), item.envelope,
                stream=EVIDENCE_STREAM, headers={"Nats-Msg-Id": item.bundle_id})
            self.storage.set_flag(CURSOR_FLAG, str(rowid))  # only after the server's ack
            self.published_evidence += 1
