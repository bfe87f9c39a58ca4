"""The test DNS server (tests/support/dns_server.py) on 127.0.0.1: modes and state file."""

from __future__ import annotations

from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord  # type: ignore[import-untyped]

from tests.support.dns_server import DnsServer, write_state

RECORDS = {"api.example.test": {"A": ["192.0.2.10"], "AAAA": ["2001:db8::10"]},
           "v4only.example.test": {"A": ["192.0.2.11"]}}


def ask(port: int, name: str, qtype: str, tcp: bool = False, timeout: float = 2.0) -> DNSRecord:
    raw = DNSRecord.question(name, qtype).send("127.0.0.1", port, tcp=tcp, timeout=timeout)
    return DNSRecord.parse(raw)


def answers(reply: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr]


@pytest.mark.parametrize("tcp", [False, True])
def test_answers_a_and_aaaa_over_udp_and_tcp(tcp: bool) -> None:
    with DnsServer(RECORDS) as srv:
        assert answers(ask(srv.port, "api.example.test", "A", tcp)) == ["192.0.2.10"]
        assert answers(ask(srv.port, "API.example.test.", "AAAA", tcp)) == ["2001:db8::10"]


def test_nxdomain_and_nodata() -> None:
    with DnsServer(RECORDS) as srv:
        assert ask(srv.port, "nope.example.test", "A").header.rcode == RCODE.NXDOMAIN
        nodata = ask(srv.port, "v4only.example.test", "AAAA")
        assert nodata.header.rcode == RCODE.NOERROR and nodata.rr == []
        assert QTYPE[ask(srv.port, "v4only.example.test", "A").rr[0].rtype] == "A"


def test_servfail_then_drop_then_back() -> None:
    with DnsServer(RECORDS) as srv:
        srv.set_mode("servfail")
        assert ask(srv.port, "api.example.test", "A").header.rcode == RCODE.SERVFAIL
        srv.set_mode("drop")
        with pytest.raises(TimeoutError):
            ask(srv.port, "api.example.test", "A", timeout=0.3)
        srv.set_mode("answer")
        assert answers(ask(srv.port, "api.example.test", "A")) == ["192.0.2.10"]


def test_stopped_server_refuses() -> None:
    srv = DnsServer(RECORDS).start()
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        ask(port, "api.example.test", "A", tcp=True, timeout=1.0)


def test_state_file_is_reread_per_query(tmp_path: Path) -> None:
    state = tmp_path / "dns.json"
    write_state(state, "answer", RECORDS)
    with DnsServer({}, state_file=state) as srv:
        assert answers(ask(srv.port, "api.example.test", "A")) == ["192.0.2.10"]
        write_state(state, "answer", {"api.example.test": {"A": ["198.51.100.1"]}})
        assert answers(ask(srv.port, "api.example.test", "A")) == ["198.51.100.1"]
        write_state(state, "servfail", {})
        assert ask(srv.port, "api.example.test", "A").header.rcode == RCODE.SERVFAIL
    with pytest.raises(ValueError):
        write_state(state, "bogus", {})  # type: ignore[arg-type]
