"""Control-plane ("MCP") HTTP client over mutual TLS.

One `httpx.Client` per agent: HTTP/1.1 with keep-alive on a single pooled
connection (a kept-alive mTLS request costs ~0.65 ms vs ~3.2 ms with a new
handshake), the control plane's CA pinned (the system trust store is never
consulted), host names checked, no proxies from the environment, no
redirects, and a timeout on every phase.

Errors form a small hierarchy, like httpx's own:

* `TransientError`: 5xx, 408, 429, transport errors and timeouts. Retry later.
* `PermanentError`: any other 4xx, or a response that breaks the protocol.
  Retrying the same request cannot help; the outbox dead-letters it.
* `ClientConfigError`: raised at construction; the client was never usable.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from reconciler.trust import keys
from specs.config import AgentConfig
from specs.errors import ComplianceAgentError
from specs.version import user_agent

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ControlPlaneError(ComplianceAgentError):
    """Base of every error this client raises."""


class ClientConfigError(ControlPlaneError):
    """The client cannot be built from this configuration (bad file, host, key mode)."""


class TransientError(ControlPlaneError):
    """Worth retrying later: server trouble, throttling, network or timeout."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PermanentError(ControlPlaneError):
    """The server refused this request for good (4xx other than 408/429).

    `from_control_plane` is True when the answer carries the control plane's
    own error document (a JSON object with a string "error", docs/delivery.md):
    only then is the refusal known to be about what was sent, rather than
    coming from a proxy or middlebox on the way.
    """

    def __init__(
        self, message: str, status: int | None = None, from_control_plane: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.from_control_plane = from_control_plane


@dataclass(frozen=True)
class OrdersPage:
    orders: list[dict[str, Any]]
    cursor: str


@dataclass(frozen=True)
class BaselineFetch:
    """`envelope` is None when the server answered 304 Not Modified."""

    envelope: bytes | None
    etag: str | None


@dataclass(frozen=True)
class Receipt:
    bundle_id: str
    receipt_id: str
    created: bool  # False: the server already had it (idempotent repeat)


@dataclass(frozen=True)
class ItemResult:
    """One entry of a batch response; `receipt_id` xor `error` is set."""

    bundle_id: str
    status: int
    receipt_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in (200, 201) and self.receipt_id is not None

    @property
    def transient(self) -> bool:
        return is_transient_status(self.status)


def is_transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _is_error_document(resp: httpx.Response) -> bool:
    """The control plane's error shape: a JSON object with a string "error"."""
    if "json" not in resp.headers.get("content-type", ""):
        return False
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("error"), str)


def check_private_key_file(path: Path) -> None:
    """Refuse a private key readable or writable by group/others, like ssh does.

    One rule for every key the agent loads: `reconciler.trust.keys` decides.
    """
    try:
        keys.check_private_key_file(path)
    except keys.KeyFileError as e:
        raise ClientConfigError(f"clientKeyFile {e}") from None


def build_ssl_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Client context: only `ca_file` is trusted, host names are checked, TLS >= 1.2."""
    check_private_key_file(key_file)
    try:
        # With cafile set, create_default_context loads no system CAs: the CA is pinned.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise ClientConfigError(
            f"{ca_file}: cannot load the CA certificate (caCertFile): {e}"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        # Never echo file contents; the paths and the library's reason suffice.
        raise ClientConfigError(
            f"cannot load the client certificate {cert_file} with key {key_file}"
            f" (clientCertFile/clientKeyFile): {e}"
        ) from None
    return ctx


class ControlPlaneClient:
    """Typed calls of the control-plane API (docs/delivery.md) over one kept-alive
    mTLS connection."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        host = urlsplit(cfg.mcp_url).hostname
        if urlsplit(cfg.mcp_url).scheme != "https" or not host:
            raise ClientConfigError(f"mcpUrl {cfg.mcp_url!r} must be an https:// URL")
        if host not in cfg.allowed_hosts:
            raise ClientConfigError(
                f"mcpUrl host {host!r} is not in allowedHosts {cfg.allowed_hosts};"
                " add it there or fix mcpUrl"
            )
        self.cfg = cfg
        self.base_url = cfg.mcp_url
        self.last_server_date: datetime | None = None
        verify = build_ssl_context(cfg.ca_cert_file, cfg.client_cert_file, cfg.client_key_file)
        self._http = httpx.Client(
            base_url=self.base_url,
            verify=verify,
            http1=True,
            http2=False,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=1, max_keepalive_connections=1, keepalive_expiry=60
            ),
            headers={"User-Agent": user_agent()},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def connection_info(self) -> list[str]:
        """httpcore's description of each pooled connection (diagnostics and the
        outbox benchmark use it to show one kept-alive connection carried it all)."""
        pool = getattr(getattr(self._http, "_transport", None), "_pool", None)
        conns = getattr(pool, "connections", [])
        return [str(c.info()) for c in conns]

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------

    def _host_path(self, leaf: str) -> str:
        site = quote(self.cfg.site_id, safe="")
        host = quote(self.cfg.host_id, safe="")
        return f"/api/v1/sites/{site}/hosts/{host}/{leaf}"

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        request = self._http.build_request(method, path, **kw)
        try:
            # Streamed, so a broken or hostile server cannot make the agent buffer
            # an unbounded body (the cap applies after content decoding).
            streamed = self._http.send(request, stream=True)
            chunks: list[bytes] = []
            size = 0
            try:
                for chunk in streamed.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise PermanentError(
                            f"{method} {path}: response larger than {MAX_RESPONSE_BYTES} bytes"
                        )
                    chunks.append(chunk)
            finally:
                streamed.close()
        except httpx.TimeoutException as e:
            raise TransientError(f"{method} {path}: timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            # TLS verification failures land here too; say so plainly.
            raise TransientError(f"{method} {path}: {type(e).__name__}: {e}") from None
        resp = httpx.Response(
            streamed.status_code, headers=streamed.headers, content=b"".join(chunks),
            request=request,
        )
        date = resp.headers.get("date")
        if date:
            with contextlib.suppress(TypeError, ValueError):
                self.last_server_date = parsedate_to_datetime(date)
        if resp.status_code >= 400 or resp.status_code < 200:
            detail = resp.text[:200].strip()
            msg = f"{method} {path}: HTTP {resp.status_code}" + (f": {detail}" if detail else "")
            if is_transient_status(resp.status_code):
                raise TransientError(msg, resp.status_code)
            raise PermanentError(msg, resp.status_code, _is_error_document(resp))
        return resp

    @staticmethod
    def _json(resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PermanentError(
                f"{resp.request.method} {resp.request.url.path}: response is not JSON"
            ) from None

    # -- API ----------------------------------------------------------------------

    def fetch_orders(self, after: str | None = None) -> OrdersPage:
        params = {"after": after} if after else None
        data = self._json(self._request("GET", self._host_path("orders"), params=params))
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("orders"), list)
            or not isinstance(data.get("cursor"), str)
        ):
            raise PermanentError("orders response must be {'orders': [...], 'cursor': str}")
        return OrdersPage(orders=data["orders"], cursor=data["cursor"])

    def fetch_baseline(self, etag: str | None = None) -> BaselineFetch:
        headers = {"If-None-Match": etag} if etag else {}
        resp = self._request("GET", self._host_path("baseline"), headers=headers)
        if resp.status_code == 304:
            return BaselineFetch(envelope=None, etag=etag)
        if resp.status_code != 200:
            raise PermanentError(f"baseline: unexpected HTTP {resp.status_code}")
        return BaselineFetch(envelope=resp.content, etag=resp.headers.get("etag"))

    def post_evidence(self, bundle_id: str, envelope: bytes) -> Receipt:
        resp = self._request(
            "POST",
            "/api/v1/evidence",
            content=envelope,
            headers={"Content-Type": "application/json", "Idempotency-Key": bundle_id},
        )
        data = self._json(resp)
        if not isinstance(data, dict) or not isinstance(data.get("receipt_id"), str):
            raise PermanentError("evidence response lacks a receipt_id")
        if data.get("bundle_id") != bundle_id:
            raise PermanentError(
                f"evidence receipt is for {data.get('bundle_id')!r}, not {bundle_id!r}"
            )
        return Receipt(bundle_id, data["receipt_id"], created=resp.status_code == 201)

    def post_evidence_batch(self, items: Sequence[tuple[str, bytes]]) -> list[ItemResult]:
        """Send several envelopes in one request; one `ItemResult` per item, in order.

        The body is assembled from the stored envelope bytes without re-encoding
        them, so what the receiver hashes is exactly what was signed and stored.
        """
        body = b'{"envelopes":[' + b",".join(env for _, env in items) + b"]}"
        resp = self._request(
            "POST",
            "/api/v1/evidence/batch",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        data = self._json(resp)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list) or len(results) != len(items):
            raise PermanentError("batch response must carry one result per envelope, in order")
        out: list[ItemResult] = []
        for (bundle_id, _), r in zip(items, results, strict=True):
            if not isinstance(r, dict) or not isinstance(r.get("status"), int):
                raise PermanentError("batch result entries need an integer 'status'")
            got = r.get("bundle_id")
            status = int(r["status"])
            if status in (200, 201) and got != bundle_id:
                # A receipt for another bundle must never mark this one delivered.
                out.append(ItemResult(bundle_id, 502, error=f"receipt for {got!r}, not ours"))
                continue
            rid = r.get("receipt_id")
            err = r.get("error")
            out.append(
                ItemResult(
                    bundle_id,
                    status,
                    receipt_id=rid if isinstance(rid, str) else None,
                    error=str(err)[:500] if err is not None else None,
                )
            )
        return out

    def fetch_checkpoint_size(self) -> int:
        """The size of the largest evidence checkpoint the control plane countersigned."""
        data = self._json(self._request("GET", self._host_path("checkpoint")))
        size = data.get("tree_size") if isinstance(data, dict) else None
        if not isinstance(size, int) or size < 0:
            raise PermanentError("checkpoint response must carry an integer 'tree_size'")
        return size

    def post_checkpoint(self, note: str, old_size: int, proof: Sequence[str]) -> str:
        """Send a signed checkpoint with its consistency proof from `old_size`;
        returns the countersigned note."""
        resp = self._request(
            "POST", "/api/v1/checkpoints",
            json={"checkpoint": note, "old_size": old_size, "consistency_proof": list(proof)},
        )
        data = self._json(resp)
        cosigned = data.get("cosigned_checkpoint") if isinstance(data, dict) else None
        if not isinstance(cosigned, str):
            raise PermanentError("checkpoint response lacks 'cosigned_checkpoint'")
        return cosigned
