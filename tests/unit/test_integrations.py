"""Integrations logic without network: formats, HMAC, queueing, mode defaults."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.delivery.integrations import (
    EvidenceSink,
    EvidenceSummary,
    IntegrationError,
    IntegrationHook,
    build_integrations,
    format_rfc5424,
    read_secret_file,
    sign_body,
    summarize,
)
from reconciler.store.database import open_store
from specs.backoff import Backoff
from specs.config import parse_config

SUMMARY = EvidenceSummary("b-1", "firewall", "failed", "clinic-1", "host-a",
                          "2026-01-01T00:00:00Z", 7)

RFC5424 = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<pid>\S+) (?P<msgid>\S+) "
    rb"(?P<sd>\[[^\]]*\]) \xef\xbb\xbf(?P<msg>.*)$", re.S,
)


def base_cfg(tmp_path: Path, **kw: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "siteId": "clinic-1", "hostId": "host-a", "baselinePath": str(tmp_path / "b.json"),
        "clientCertFile": "/c", "clientKeyFile": "/k", "signingKeyFile": "/s",
        "caCertFile": "/ca", "mcpPublicKeys": ["ab" * 32], "resellerId": "msp-1",
    }
    cfg.update(kw)
    return cfg


class Recorder:
    name = "recorder"

    def __init__(self, fail_times: int = 0, retryable: bool = True) -> None:
        self.got: list[EvidenceSummary] = []
        self.calls = 0
        self.fail_times = fail_times
        self.retryable = retryable
        self.gate = threading.Event()
        self.gate.set()

    def send(self, summary: EvidenceSummary) -> None:
        self.gate.wait(10)
        self.calls += 1
        if self.calls <= self.fail_times:
            raise IntegrationError("boom", self.retryable)
        self.got.append(summary)

    def close(self) -> None:
        pass


def test_rfc5424_fields() -> None:
    line = format_rfc5424(SUMMARY, pid=42)
    m = RFC5424.match(line)
    assert m, line
    assert int(m["pri"]) == 16 * 8 + 3  # local0.err for a failed outcome
    assert (m["ts"], m["host"], m["app"], m["pid"], m["msgid"]) == (
        b"2026-01-01T00:00:00Z", b"host-a", b"compliance-agent", b"42", b"EVIDENCE")
    assert b'bundle_id="b-1"' in m["sd"] and b'outcome="failed"' in m["sd"]
    assert json.loads(m["msg"])["check"] == "firewall"


def test_sd_values_are_escaped() -> None:
    s = EvidenceSummary('x"]\\', "c", "success", "s", "h o s t", "", None)
    line = format_rfc5424(s, pid=1)
    assert b'bundle_id="x\\"\\]\\\\"' in line
    assert b" hpst " not in line and b" host " in line  # spaces stripped from HOSTNAME


def test_hmac_matches_reference() -> None:
    body = SUMMARY.to_json()
    expect = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign_body(b"s3cret", body) == f"sha256={expect}"


def test_direct_mode_builds_no_sinks(tmp_path: Path) -> None:
    cfg = parse_config(base_cfg(tmp_path, deploymentMode="direct",
                                syslogTarget="udp://127.0.0.1:9"))
    assert build_integrations(cfg) == []


def test_reseller_mode_builds_configured_sinks(tmp_path: Path) -> None:
    secret = tmp_path / "wh.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    cfg = parse_config(base_cfg(tmp_path, rmmWebhookUrl="http://127.0.0.1:9/hook",
                                webhookSecretFile=str(secret), syslogTarget="udp://127.0.0.1:9"))
    sinks = build_integrations(cfg)
    try:
        assert sorted(s.name for s in sinks) == ["syslog", "webhook"]
        assert "s3cret" not in repr(sinks[0].sender)
    finally:
        for s in sinks:
            s.close()


def test_secret_file_permissions_and_content(tmp_path: Path) -> None:
    p = tmp_path / "secret"
    p.write_text("topsecret\n")
    p.chmod(0o644)
    with pytest.raises(IntegrationError, match="chmod") as err:
        read_secret_file(p)
    assert "topsecret" not in str(err.value)
    p.chmod(0o600)
    assert read_secret_file(p) == b"topsecret"


def test_retries_then_succeeds() -> None:
    rec = Recorder(fail_times=2)
    sink = EvidenceSink(rec, initial_wait=0.001, max_wait=0.01)
    sink.submit(SUMMARY)
    assert sink.flush(10)
    sink.close()
    assert rec.got == [SUMMARY] and rec.calls == 3 and sink.sent == 1


class TopOfRange(random.Random):
    """Draws the largest allowed delay, so the backoff ceilings are visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


class RecordingSink(EvidenceSink):
    def __init__(self, *args: Any, **kw: Any) -> None:
        self.slept: list[float] = []
        super().__init__(*args, **kw)

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_retry_waits_follow_the_one_backoff_formula_and_stop_after_attempts() -> None:
    rec = Recorder(fail_times=10)
    sink = RecordingSink(rec, attempts=5, initial_wait=0.5, max_wait=3.0, rng=TopOfRange())
    sink.submit(SUMMARY)
    assert sink.flush(10)
    sink.close()
    backoff = Backoff(0.5, 3.0)
    # four waits between five tries: 0.5, 1, 2, then capped at 3
    assert sink.slept == [backoff.ceiling(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert rec.calls == 5 and sink.failed == 1 and sink.sent == 0


def test_close_interrupts_a_long_backoff() -> None:
    rec = Recorder(fail_times=10)
    sink = EvidenceSink(rec, attempts=5, initial_wait=600.0, max_wait=600.0, rng=TopOfRange())
    sink.submit(SUMMARY)
    deadline = time.monotonic() + 10
    while rec.calls == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rec.calls == 1  # now waiting 600 s before the second try
    sink.close(timeout=10)
    assert not sink._thread.is_alive()
    assert rec.calls == 1 and sink.failed == 1


def test_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="attempts"):
        EvidenceSink(Recorder(), attempts=0)


def test_permanent_failure_is_not_retried() -> None:
    rec = Recorder(fail_times=5, retryable=False)
    sink = EvidenceSink(rec, initial_wait=0.001)
    sink.submit(SUMMARY)
    assert sink.flush(10)
    sink.close()
    assert rec.calls == 1 and sink.failed == 1


def test_full_queue_drops_copy_with_counted_warning(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    rec.gate.clear()  # the sender blocks: the queue fills up
    sink = EvidenceSink(rec, maxsize=2)
    with caplog.at_level(logging.WARNING):
        accepted = [sink.submit(SUMMARY) for _ in range(10)]
    # one is being sent (blocked), two wait in the queue, the rest is dropped
    assert accepted.count(True) in (2, 3) and sink.dropped == accepted.count(False)
    assert any("queue full" in r.message for r in caplog.records)
    rec.gate.set()
    assert sink.flush(10)
    sink.close()


def test_hook_announces_only_committed_bundles(tmp_path: Path) -> None:
    import base64

    store = open_store(tmp_path / "s.db")
    rec = Recorder()
    sink = EvidenceSink(rec)
    hook = IntegrationHook([sink])

    def envelope(bid: str) -> bytes:
        pred = {"bundle_id": bid, "check": "c", "outcome": "success", "site_id": "s",
                "host_id": "h", "timestamp_end": "2026-01-01T00:00:00Z", "sequence": 1}
        payload = base64.b64encode(json.dumps({"predicate": pred}).encode()).decode()
        return json.dumps({"payload": payload, "payloadType": "x", "signatures": []}).encode()

    with store.begin() as conn:
        hook(conn, "kept", envelope("kept"))
    with pytest.raises(RuntimeError), store.begin() as conn:
        hook(conn, "lost", envelope("lost"))
        raise RuntimeError
    with store.begin() as conn:
        hook(conn, "junk", b"not json")  # logged, never breaks the evidence transaction
    assert sink.flush(10)
    sink.close()
    assert [s.bundle_id for s in rec.got] == ["kept"]


def test_summarize_rejects_garbage() -> None:
    with pytest.raises(IntegrationError):
        summarize(b"{}")
