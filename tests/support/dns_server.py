"""A tiny real DNS server for tests (UDP + TCP, dnslib).

It answers A/AAAA from a mapping and can be switched, while running, to
answer SERVFAIL, to drop queries (no answer: the client times out), or be
stopped. A test controls it either in-process (``DnsServer``) or, when the
server runs in another network namespace, through a JSON state file that is
re-read on every query (write it atomically with ``write_state``):

    {"mode": "answer" | "servfail" | "drop",
     "records": {"api.example.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]}}}

Names not in the mapping get NXDOMAIN; a known name without records of the
asked type gets an empty NOERROR answer (NODATA), like a real zone.

Command line (prints ``READY <address> <port>`` once both sockets listen):

    python -m tests.support.dns_server --address 127.0.0.1 --port 53 --state FILE
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord  # type: ignore[import-untyped]
from dnslib.server import (  # type: ignore[import-untyped]
    DNSHandler,
    DNSLogger,
    DNSServer,
)

Mode = Literal["answer", "servfail", "drop"]
MODES: tuple[Mode, ...] = ("answer", "servfail", "drop")
Records = Mapping[str, Mapping[str, list[str]]]
TTL = 5


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def write_state(path: Path, mode: Mode, records: Records) -> None:
    """Atomically replace the state file (a reader never sees half a file)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"mode": mode, "records": records}), encoding="utf-8")
    os.replace(tmp, path)


class _State:
    """Mode and records, in memory or backed by a state file."""

    def __init__(self, records: Records, mode: Mode, state_file: Path | None) -> None:
        self._lock = threading.Lock()
        self._records = {_norm(k): dict(v) for k, v in records.items()}
        self._mode: Mode = mode
        self._file = state_file
        self.queries = 0

    def set(self, mode: Mode | None = None, records: Records | None = None) -> None:
        with self._lock:
            if mode is not None:
                if mode not in MODES:
                    raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
                self._mode = mode
            if records is not None:
                self._records = {_norm(k): dict(v) for k, v in records.items()}

    def current(self) -> tuple[Mode, dict[str, dict[str, list[str]]]]:
        if self._file is not None:
            try:
                data: dict[str, Any] = json.loads(self._file.read_text(encoding="utf-8"))
                self.set(cast(Mode, data.get("mode", "answer")), data.get("records", {}))
            except (OSError, ValueError) as e:
                print(f"dns_server: cannot read {self._file}: {e}", file=sys.stderr)
        with self._lock:
            self.queries += 1
            return self._mode, {k: dict(v) for k, v in self._records.items()}


class _Resolver:
    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        # per-handler copies: a concurrent query never sees another's mode switch
        mode, records = handler.egress_mode, handler.egress_records
        reply = request.reply()
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        qname = str(request.q.qname)
        qtype = QTYPE[request.q.qtype]
        entry = records.get(_norm(qname))
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        rdata = {"A": A, "AAAA": AAAA}
        if qtype in rdata:
            for addr in entry.get(qtype, []):
                reply.add_answer(RR(qname, request.q.qtype, rdata=rdata[qtype](addr), ttl=TTL))
        return reply


class _Handler(DNSHandler):  # type: ignore[misc]  # dnslib is untyped
    def handle(self) -> None:
        mode, records = self.server.egress_state.current()
        if mode == "drop":
            return  # read and ignored: the client sees no answer at all
        self.egress_mode = mode
        self.egress_records = records
        super().handle()


class DnsServer:
    """UDP and TCP DNS server on one address and port, served from threads."""

    def __init__(
        self,
        records: Records,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        mode: Mode = "answer",
        state_file: Path | None = None,
    ) -> None:
        self.state = _State(records, mode, state_file)
        quiet = DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", logf=_ignore)
        resolver = _Resolver()
        self._udp = DNSServer(resolver, address=address, port=port, logger=quiet, handler=_Handler)
        self.address = address
        self.port: int = self._udp.server.server_address[1]
        # same port for TCP (port 0 picked it for UDP)
        self._tcp = DNSServer(
            resolver, address=address, port=self.port, tcp=True, logger=quiet, handler=_Handler
        )
        for srv in (self._udp, self._tcp):
            srv.server.egress_state = self.state
        self._started = False

    def start(self) -> DnsServer:
        for srv in (self._udp, self._tcp):
            # short poll so stop() returns in ~50 ms, not socketserver's 0.5 s
            threading.Thread(
                target=srv.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            ).start()
        self._started = True
        return self

    def set_mode(self, mode: Mode) -> None:
        self.state.set(mode=mode)

    def set_records(self, records: Records) -> None:
        self.state.set(records=records)

    def stop(self) -> None:
        """Close both sockets: queries then get ICMP port unreachable / RST."""
        for srv in (self._udp, self._tcp):
            if self._started:
                srv.stop()
            srv.server.server_close()
        self._started = False

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ignore(*_args: object) -> None:
    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--state", type=Path, required=True, help="JSON state file (re-read per query)")
    args = p.parse_args(argv)
    server = DnsServer({}, address=args.address, port=args.port, state_file=args.state)
    server.start()
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print(f"READY {server.address} {server.port}", flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
