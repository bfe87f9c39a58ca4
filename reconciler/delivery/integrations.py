"""Reseller integrations (guardrail 10): RMM webhook (HMAC-signed) and syslog.

In `deploymentMode = "reseller"` every stored evidence bundle is also
announced, as a short JSON summary, to the MSP's RMM webhook and to
`syslogTarget` when those are set. In `direct` mode nothing is built.

These are *copies* for the reseller's tools; the evidence itself is always in
the outbox. So each sink runs on its own background thread behind a bounded
queue: it never blocks the reconcile loop, and when the queue is full the
copy is dropped and counted (with a warning) rather than stalling evidence.

Webhook: `POST` of the JSON body with header
`X-Signature-256: sha256=<hex HMAC-SHA256(secret, exact body)>` (GitHub's
scheme), retried with exponential backoff and full jitter on 5xx/408/429 and
network errors. Syslog (reconciler/delivery/syslog.py): RFC 5424, over
TLS with a pinned CA (RFC 5425), over TCP with octet-counting framing
(RFC 6587) or one datagram per message over UDP. The secret is read from
`webhookSecretFile` once and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import queue
import random
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from reconciler.delivery.summary import EvidenceSummary, IntegrationError, summarize
from reconciler.delivery.syslog import SyslogSender, format_rfc5424
from reconciler.store.database import Transaction, after_commit
from reconciler.trust import keys
from specs.backoff import Backoff
from specs.config import AgentConfig, DeploymentMode
from specs.version import user_agent

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature-256"

# Re-exported: callers and tests import these from here.
__all__ = [
    "EvidenceSink",
    "EvidenceSummary",
    "IntegrationError",
    "IntegrationHook",
    "SyslogSender",
    "WebhookSender",
    "build_integrations",
    "format_rfc5424",
    "summarize",
]


class Sender(Protocol):
    name: str

    def send(self, summary: EvidenceSummary) -> None: ...

    def close(self) -> None: ...


def sign_body(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def read_secret_file(path: Path) -> bytes:
    """Read the webhook secret with the private-key permission rule (0600/0400)."""
    try:
        data = keys.read_private_key_file(path)
    except keys.KeyFileError as e:
        raise IntegrationError(f"webhookSecretFile {e}", retryable=False) from None
    secret = data.strip()
    if not secret:
        raise IntegrationError(f"webhookSecretFile {path}: the file is empty", retryable=False)
    return secret


class WebhookSender:
    name = "webhook"

    def __init__(
        self,
        url: str,
        secret: bytes,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        import httpx  # only reseller webhooks pay for it at start-up

        self.url = url
        self._secret = secret
        self._http = httpx.Client(
            timeout=timeout,
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": user_agent()},
            transport=transport,
        )

    def __repr__(self) -> str:  # never show the secret
        return f"WebhookSender({self.url!r})"

    def send(self, summary: EvidenceSummary) -> None:
        import httpx

        body = summary.to_json()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_body(self._secret, body),
        }
        try:
            resp = self._http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as e:
            raise IntegrationError(f"webhook {self.url}: {type(e).__name__}") from None
        if resp.status_code >= 300:
            retryable = resp.status_code >= 500 or resp.status_code in (408, 429)
            raise IntegrationError(f"webhook {self.url}: HTTP {resp.status_code}", retryable)

    def close(self) -> None:
        self._http.close()


class EvidenceSink:
    """A sender on a background thread behind a bounded queue; never blocks callers."""

    def __init__(
        self,
        sender: Sender,
        maxsize: int = 1000,
        attempts: int = 5,
        initial_wait: float = 0.5,
        max_wait: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.sender = sender
        self.name = sender.name
        self._q: queue.Queue[EvidenceSummary | None] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None  # the latest give-up reason, for status
        self.attempts = attempts
        self.backoff = Backoff(initial_wait, max_wait)
        self._rng = rng or random.Random()
        self._thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)
        self._thread.start()

    def _sleep(self, seconds: float) -> None:
        # Interruptible, so close() does not wait out a backoff.
        if self._stop.wait(seconds):
            raise IntegrationError("shutting down", retryable=False)

    def _send_with_retries(self, summary: EvidenceSummary) -> None:
        """Up to `attempts` tries; a retryable failure waits a full-jitter backoff
        first. The last failure (or a non-retryable one) is raised."""
        for failures in range(1, self.attempts + 1):
            try:
                self.sender.send(summary)
                return
            except IntegrationError as e:
                if not e.retryable or failures == self.attempts:
                    raise
            self._sleep(self.backoff.full_jitter(failures, self._rng))

    def submit(self, summary: EvidenceSummary) -> bool:
        try:
            self._q.put_nowait(summary)
            return True
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "%s queue full: dropped the %s copy of bundle %s (%d dropped so far;"
                    " the evidence itself stays in the outbox)",
                    self.name,
                    self.name,
                    summary.bundle_id,
                    self.dropped,
                )
            return False

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                try:
                    self._send_with_retries(item)
                    self.sent += 1
                except IntegrationError as e:
                    self.failed += 1
                    self.last_error = str(e)
                    log.warning("%s: giving up on bundle %s: %s", self.name, item.bundle_id, e)
                except Exception:  # a bug in a sender must not kill the thread
                    self.failed += 1
                    log.exception(
                        "%s: unexpected error sending bundle %s", self.name, item.bundle_id
                    )
            finally:
                self._q.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far was handled; True if it was in time."""
        done = threading.Event()

        def waiter() -> None:
            self._q.join()
            done.set()

        threading.Thread(target=waiter, daemon=True).start()
        return done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)
        self._thread.join(timeout)
        self.sender.close()


def build_integrations(cfg: AgentConfig, **sink_options: Any) -> list[EvidenceSink]:
    """Sinks for this deployment: none in direct mode; webhook/syslog if set in reseller mode."""
    if cfg.deployment_mode is not DeploymentMode.reseller:
        return []
    sinks: list[EvidenceSink] = []
    if cfg.rmm_webhook_url:
        assert cfg.webhook_secret_file is not None  # AgentConfig guarantees it
        secret = read_secret_file(cfg.webhook_secret_file)
        sinks.append(EvidenceSink(WebhookSender(cfg.rmm_webhook_url, secret), **sink_options))
    if cfg.syslog_target:
        sender = SyslogSender(cfg.syslog_target, ca_file=cfg.syslog_ca_file)
        sinks.append(EvidenceSink(sender, **sink_options))
    return sinks


class IntegrationHook:
    """`EvidenceWriter(on_stored=[hook])`: hands each bundle's summary to every sink
    once the evidence transaction commits (a rolled-back bundle is never announced)."""

    def __init__(self, sinks: list[EvidenceSink]) -> None:
        self.sinks = sinks

    def __call__(self, conn: Transaction, bundle_id: str, envelope: bytes) -> None:
        if not self.sinks:
            return
        try:
            summary = summarize(envelope)
        except IntegrationError as e:
            # Never let a reseller copy fail the evidence transaction itself.
            log.warning("not announcing bundle %s: %s", bundle_id, e)
            return
        after_commit(conn, lambda: self.emit(summary))

    def emit(self, summary: EvidenceSummary) -> None:
        for sink in self.sinks:
            sink.submit(summary)

    def close(self, timeout: float = 5.0) -> None:
        for sink in self.sinks:
            sink.close(timeout)
