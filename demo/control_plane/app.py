"""DEV ONLY: FastAPI app of the demo control plane (the API in docs/delivery.md).

Evidence is verified with the agent's public key(s) given at start; receipts
are deduplicated by bundle_id (the Idempotency-Key); per-host chains
(sequence / prev_digest) are checked in the summary. Orders and baselines are
signed with the control plane's own Ed25519 key. `/admin/*` endpoints share
the mTLS listener (any client certificate from the demo CA may use them).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from nacl.signing import SigningKey
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from demo.control_plane.dsse import (
    BASELINE_TYPE,
    ORDER_TYPE,
    Verifier,
    VerifyError,
    canonical,
    sign,
)
from demo.control_plane.storage import Storage, StoredCheckpoint, StoredEvidence, chain_report
from demo.control_plane.tlog import CheckpointRefused, consistent, cosign, parse_checkpoint

EVIDENCE_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_BATCH = 1000


@dataclass
class Settings:
    storage: Storage
    agent_public_keys: list[str]
    signing_key: SigningKey
    evidence_payload_type: str = EVIDENCE_TYPE
    cosigner_name: str = "demo.control-plane.compliance-agent.dev"
    received: int = field(default=0)


def make_order(
    key: SigningKey,
    site_id: str,
    host_id: str,
    action: str,
    params: dict[str, Any] | None = None,
    ttl_seconds: int = 600,
    issued_at: datetime | None = None,
) -> dict[str, Any]:
    payload = {
        "order_id": "ord_" + secrets.token_hex(8),
        "site_id": site_id,
        "host_id": host_id,
        "nonce": secrets.token_hex(16),
        "issued_at": (issued_at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ttl_seconds": ttl_seconds,
        "action": action,
        "params": params or {},
    }
    return sign(key, canonical(payload), ORDER_TYPE)


def publish_baseline(
    storage: Storage, key: SigningKey, site_id: str, host_id: str, baseline: dict[str, Any]
) -> str:
    """Sign and store a baseline, bound to `site_id` and `host_id` ('*': every host of
    the site) inside the signed payload; returns its ETag."""
    version = baseline.get("version")
    if not isinstance(version, int):
        raise ValueError("a baseline needs an integer 'version'")
    baseline = {"site_id": site_id, "host_id": host_id, **baseline}
    env = canonical(sign(key, canonical(baseline), BASELINE_TYPE))
    etag = '"' + hashlib.sha256(env).hexdigest()[:32] + '"'
    storage.put_baseline(site_id, host_id, version, env, etag)
    return etag


class _Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


def _digest_hex(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return value.removeprefix("sha256:").lower()


def _check_evidence(verifier: Verifier, ptype: str, env: Any) -> StoredEvidence:
    try:
        body = verifier.verify(env, ptype)
    except VerifyError as e:
        raise _Rejected(422, e.reason, str(e)) from None
    try:
        statement = json.loads(body)
        pred = statement["predicate"]
        bundle_id = pred["bundle_id"]
    except (ValueError, KeyError, TypeError):
        raise _Rejected(422, "BadStatement", "payload is not an in-toto Statement with a "
                        "predicate.bundle_id") from None
    if not isinstance(bundle_id, str) or not bundle_id:
        raise _Rejected(422, "BadStatement", "predicate.bundle_id must be a non-empty string")
    seq = pred.get("sequence")
    # The agent stores and hashes envelopes as compact sorted-key JSON, so the
    # canonical re-encoding is byte-identical to what it hashed for prev_digest.
    raw = canonical(env)
    return StoredEvidence(
        bundle_id=bundle_id,
        site_id=str(pred.get("site_id", "")),
        host_id=str(pred.get("host_id", "")),
        sequence=seq if isinstance(seq, int) else None,
        prev_digest=_digest_hex(pred.get("prev_digest")),
        digest=hashlib.sha256(raw).hexdigest(),
        envelope=raw,
    )


def _result(item: StoredEvidence, receipt: tuple[str, bool, str | None]) -> dict[str, Any]:
    rid, created, conflict = receipt
    if conflict is not None:
        return {"bundle_id": item.bundle_id, "status": 409,
                "error": "IdempotencyConflict: bundle_id already stored with other content"}
    return {"bundle_id": item.bundle_id, "status": 201 if created else 200, "receipt_id": rid}


def create_app(settings: Settings) -> FastAPI:
    app = FastAPI(title="compliance-agent demo control plane (DEV ONLY)", docs_url=None,
                  redoc_url=None, openapi_url=None)
    st = settings.storage
    verifier = Verifier(settings.agent_public_keys)
    ptype = settings.evidence_payload_type

    async def outage(request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/api/") and st.flag("outage") == "on":
            return JSONResponse({"error": "simulated outage (DEV ONLY)"}, status_code=503,
                                headers={"Retry-After": "1"})
        return await call_next(request)

    app.add_middleware(BaseHTTPMiddleware, dispatch=outage)

    @app.get("/api/v1/sites/{site}/hosts/{host}/orders")
    async def orders(site: str, host: str, after: str = "0") -> dict[str, Any]:
        try:
            cursor = int(after or "0")
        except ValueError:
            return JSONResponse({"error": "cursor must be an integer"},  # type: ignore[return-value]
                                status_code=400)
        rows = st.orders_after(site, host, cursor)
        return {"orders": [env for _, env in rows],
                "cursor": str(rows[-1][0] if rows else cursor)}

    @app.get("/api/v1/sites/{site}/hosts/{host}/baseline")
    async def baseline(site: str, host: str, request: Request) -> Response:
        found = st.baseline(site, host)
        if found is None:
            return JSONResponse({"error": "no baseline published for this host"}, status_code=404)
        env, etag = found
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(env, media_type="application/json", headers={"ETag": etag})

    @app.post("/api/v1/evidence")
    async def evidence(request: Request) -> Response:
        key = request.headers.get("idempotency-key")
        if not key:
            return JSONResponse({"error": "Idempotency-Key header is required"}, status_code=400)
        body = await request.body()
        if len(body) > MAX_ENVELOPE_BYTES:
            return JSONResponse({"error": "envelope too large"}, status_code=413)
        try:
            item = _check_evidence(verifier, ptype, json.loads(body))
        except ValueError:
            st.bump("rejected")
            return JSONResponse({"error": "Malformed: body is not JSON"}, status_code=400)
        except _Rejected as e:
            st.bump("rejected")
            return JSONResponse({"error": f"{e.reason}: {e.message}"}, status_code=e.status)
        if item.bundle_id != key:
            return JSONResponse({"error": "Idempotency-Key differs from predicate.bundle_id"},
                                status_code=422)
        st.bump("received")
        res = _result(item, st.store_evidence([item])[0])
        return JSONResponse({k: v for k, v in res.items() if k != "status"},
                            status_code=res["status"])

    @app.post("/api/v1/evidence/batch")
    async def evidence_batch(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            envs = data["envelopes"]
            if not isinstance(envs, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'body must be {"envelopes": [...]}'}, status_code=400)
        if len(envs) > MAX_BATCH:
            return JSONResponse({"error": f"at most {MAX_BATCH} envelopes per batch"},
                                status_code=413)
        results: list[dict[str, Any] | None] = []
        good: list[tuple[int, StoredEvidence]] = []
        for i, env in enumerate(envs):
            try:
                good.append((i, _check_evidence(verifier, ptype, env)))
                results.append(None)
            except _Rejected as e:
                bid = None
                # name the bundle if its payload says which it is
                with contextlib.suppress(ValueError, KeyError, TypeError, binascii.Error):
                    bid = json.loads(base64.b64decode(env["payload"]))["predicate"]["bundle_id"]
                results.append({"bundle_id": bid, "status": e.status,
                                "error": f"{e.reason}: {e.message}"})
        st.bump("received", len(envs))
        st.bump("rejected", len(envs) - len(good))
        receipts = st.store_evidence([it for _, it in good])
        for (i, it), rc in zip(good, receipts, strict=True):
            results[i] = _result(it, rc)
        return JSONResponse({"results": results})

    @app.get("/api/v1/sites/{site}/hosts/{host}/checkpoint")
    async def latest_checkpoint(site: str, host: str) -> dict[str, Any]:
        cp = st.checkpoint(site, host)
        return {"tree_size": cp.tree_size if cp else 0,
                "checkpoint": cp.cosigned_note if cp else None}

    @app.post("/api/v1/checkpoints")
    async def checkpoints(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
            note, old_size = data["checkpoint"], data["old_size"]
            proof = [base64.b64decode(h, validate=True) for h in data["consistency_proof"]]
            if not isinstance(note, str) or not isinstance(old_size, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, binascii.Error):
            return JSONResponse({"error": 'body must be {"checkpoint": note, "old_size": int, '
                                 '"consistency_proof": [base64, ...]}'}, status_code=400)
        return witness(settings, note, old_size, proof)

    # -- admin (DEV ONLY) -----------------------------------------------------------

    @app.post("/admin/outage")
    async def set_outage(request: Request) -> dict[str, Any]:
        enabled = bool((await request.json()).get("enabled"))
        st.set_flag("outage", "on" if enabled else "off")
        return {"outage": enabled}

    @app.post("/admin/orders")
    async def add_order(request: Request) -> dict[str, Any]:
        req = await request.json()
        env = make_order(settings.signing_key, req["site_id"], req["host_id"], req["action"],
                         req.get("params") or {}, int(req.get("ttl_seconds", 600)))
        return {"id": st.add_order(req["site_id"], req["host_id"], env), "envelope": env}

    @app.post("/admin/baseline")
    async def put_baseline(request: Request) -> dict[str, Any]:
        req = await request.json()
        etag = publish_baseline(st, settings.signing_key, req["site_id"],
                                req.get("host_id", "*"), req["baseline"])
        return {"etag": etag}

    @app.get("/admin/summary")
    async def summary() -> dict[str, Any]:
        return build_summary(st)

    return app


def witness(settings: Settings, note: str, old_size: int, proof: list[bytes]) -> Response:
    """Check a checkpoint against the host's previous one, countersign it, or refuse.

    Accepts a checkpoint only if it extends the largest one this host sent
    before (RFC 9162 consistency proof from `old_size`, which must be that
    size). Two different trees of one size, a tree that does not extend the
    last one, or a smaller tree than already seen (a rolled-back agent) are
    refused with 409 and both notes as evidence, and recorded.
    """
    st = settings.storage
    keys = [bytes.fromhex(k) for k in settings.agent_public_keys]
    try:
        cp = parse_checkpoint(note, keys)
    except CheckpointRefused as e:
        return JSONResponse({"error": f"{e.reason}: {e}"}, status_code=422)
    latest = st.checkpoint(cp.site_id, cp.host_id)

    def refuse(reason: str, message: str, known: StoredCheckpoint) -> Response:
        sid = st.add_split_view(cp.site_id, cp.host_id, reason, known.cosigned_note, note)
        return JSONResponse({"error": f"{reason}: {message}", "split_view_id": sid,
                             "evidence": {"known": known.cosigned_note, "received": note}},
                            status_code=409)

    same = st.checkpoint(cp.site_id, cp.host_id, cp.tree_size)
    if same is not None:
        if same.root_hash != cp.root:
            return refuse("SplitView", f"another tree of size {cp.tree_size} was "
                          "countersigned before", same)
        return JSONResponse({"cosigned_checkpoint": same.cosigned_note,
                             "cosigner": settings.cosigner_name, "tree_size": cp.tree_size})
    if latest is not None and cp.tree_size < latest.tree_size:
        return refuse("Rollback", f"tree size {cp.tree_size} is smaller than the "
                      f"{latest.tree_size} already countersigned", latest)
    base_size = latest.tree_size if latest else 0
    if old_size != base_size:
        return JSONResponse({"error": f"NeedProof: prove consistency from tree size {base_size}",
                             "tree_size": base_size}, status_code=409)
    if latest is not None and not consistent(base_size, cp.tree_size, latest.root_hash,
                                             cp.root, proof):
        return refuse("Inconsistent", f"tree {cp.tree_size} does not extend the countersigned "
                      f"tree {base_size}", latest)
    cosigned = cosign(cp, settings.cosigner_name, settings.signing_key, int(time.time()))
    st.add_checkpoint(cp.site_id, cp.host_id, StoredCheckpoint(cp.tree_size, cp.root, cosigned))
    return JSONResponse({"cosigned_checkpoint": cosigned, "cosigner": settings.cosigner_name,
                         "tree_size": cp.tree_size}, status_code=201)


def build_summary(st: Storage) -> dict[str, Any]:
    items = st.evidence()
    counters = st.counters()
    hosts = chain_report(items)
    return {
        "bundles_received": counters.get("received", 0),
        "bundles_stored": len(items),
        "verified": len(items),  # only verified envelopes are ever stored
        "rejected": counters.get("rejected", 0),
        "duplicates_suppressed": counters.get("duplicates_suppressed", 0),
        "chain_intact": all(h["chain_intact"] for h in hosts.values()),
        "gaps": sum(len(h["gaps"]) for h in hosts.values()),
        "hosts": hosts,
        "outage": st.flag("outage") == "on",
        "checkpoints": st.checkpoint_heads(),
        "split_views": st.split_views(),
    }
