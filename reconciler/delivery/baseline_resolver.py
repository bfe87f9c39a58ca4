"""Where the desired state comes from: the local baseline or a newer signed one.

`BaselineResolver.current()` answers "which ONE baseline applies now?" for the
agent, fetching and storing a newer signed one. (The root actuator answers the
same question from its own inputs: the local file and the newest signed
baseline the agent offered it and it verified itself; it never fetches and
never reads this database.)

1. The local file (`baselinePath`, from the NixOS configuration) is always
   read; it is the fallback.
2. The last good signed baseline from the control plane is kept in the state
   database (migration 0021) and re-verified against today's trusted keys,
   so a restart keeps using it and a revoked key stops it.
3. If a client is given, the control plane is asked with `If-None-Match`. A
   new document is applied only if its DSSE signature verifies with a trusted
   key, its payloadType is the baseline type, it parses, it is bound to this
   site and host (`site_id`, `host_id` or "*": BaselineWrongSite /
   BaselineWrongHost), and its version is higher than the stored remote one:
   a baseline is never rolled back. It is stored atomically (one
   transaction) before it is used.
4. The remote baseline wins only when its version is higher than the local
   file's; otherwise the local file applies.
5. When the remote baseline applies and `publish` is given (the privileged
   deployment), the envelope is handed to the root actuator, which verifies
   it again and keeps its own copy: the actuator never reads this database.

A refused document becomes a `BaselineRejection` (CamelCase reason) the caller
turns into evidence; the same bad document (same ETag) is reported once.
Being unable to reach the control plane is not a rejection: it is logged and
the stored or local baseline is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from reconciler.store.baselines import RemoteBaselineStore, StoredBaseline
from reconciler.store.database import Store
from reconciler.trust.dsse import TrustedKeys, TrustError, verify_envelope
from specs.baseline import (
    BASELINE_PAYLOAD_TYPE,
    Baseline,
    BaselineError,
    binding_problem,
    load_baseline,
    parse_baseline,
)
from specs.config import AgentConfig

if TYPE_CHECKING:  # the HTTP stack loads only when a client is actually used
    from reconciler.delivery.client import BaselineFetch

log = logging.getLogger(__name__)

MAX_BASELINE_BYTES = 1024 * 1024


class BaselineClient(Protocol):
    def fetch_baseline(self, etag: str | None = None) -> BaselineFetch: ...


@dataclass(frozen=True)
class BaselineRejection:
    reason: str  # CamelCase: BadSignature, UnknownKey, Malformed, InvalidBaseline, ...
    message: str
    version: int | None = None
    etag: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class BaselineResolver:
    def __init__(
        self,
        cfg: AgentConfig,
        client: BaselineClient | None,
        store: Store,
        trusted_keys: Sequence[str] | TrustedKeys,
        clock: Callable[[], datetime] = _utc_now,
        publish: Callable[[bytes], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.publish = publish
        self.client = client
        self.stored = RemoteBaselineStore(store)
        self.keys = (
            trusted_keys
            if isinstance(trusted_keys, TrustedKeys)
            else TrustedKeys(list(trusted_keys))
        )
        self.clock = clock
        self.rejections: list[BaselineRejection] = []
        self.last_fetch_error: str | None = None
        self._rejected_etag: str | None = None  # also kept when no row exists yet
        self._applied_envelope: bytes | None = None  # of the remote baseline _remote returned

    def take_rejections(self) -> list[BaselineRejection]:
        """Rejections since the last call (each to be recorded as evidence once)."""
        out, self.rejections = self.rejections, []
        return out

    # -- persistence ----------------------------------------------------------------

    def _record_rejection(self, rej: BaselineRejection, stored: StoredBaseline | None) -> None:
        if rej.etag is not None and rej.etag in (
            self._rejected_etag,
            stored.rejected_etag if stored else None,
        ):
            return  # already reported this exact document
        self._rejected_etag = rej.etag
        log.warning(
            "signed baseline from the control plane refused: %s: %s", rej.reason, rej.message
        )
        self.rejections.append(rej)
        if stored is None:
            return  # nothing stored yet: no row to remember the ETag in
        self.stored.note_rejection(rej.etag, f"{rej.reason}: {rej.message}")

    # -- verification -------------------------------------------------------------------

    def _verify(self, envelope: bytes, etag: str | None) -> Baseline | BaselineRejection:
        try:
            payload = verify_envelope(
                envelope, BASELINE_PAYLOAD_TYPE, self.keys, max_bytes=MAX_BASELINE_BYTES
            )
        except TrustError as e:
            return BaselineRejection(e.reason, str(e), etag=etag)
        try:
            data = json.loads(payload)
        except ValueError as e:
            return BaselineRejection("InvalidBaseline", f"payload is not JSON: {e}", etag=etag)
        try:
            baseline = parse_baseline(data, "signed baseline from the control plane")
        except BaselineError as e:
            version = data.get("version") if isinstance(data, dict) else None
            return BaselineRejection(
                "InvalidBaseline",
                "; ".join(e.problems)[:1000],
                version=version if isinstance(version, int) else None,
                etag=etag,
            )
        problem = binding_problem(baseline, self.cfg.site_id, self.cfg.host_id)
        if problem is not None:
            return BaselineRejection(*problem, version=baseline.version, etag=etag)
        return baseline

    def _remote(self) -> Baseline | None:
        """The newest valid remote baseline (stored or freshly fetched), or None."""
        stored = self.stored.load()
        self._applied_envelope = None
        current: Baseline | None = None
        if stored is not None:
            checked = self._verify(stored.envelope, stored.etag)
            if isinstance(checked, Baseline):
                current = checked
                self._applied_envelope = stored.envelope
            else:
                # e.g. the key that signed it was removed from mcpPublicKeys
                log.warning(
                    "stored signed baseline no longer verifies (%s); ignoring it", checked.reason
                )
        if self.client is None:
            return current
        from reconciler.delivery.client import ControlPlaneError

        # Ask "changed since what we last judged?": the refused document or the good one.
        etag = self._rejected_etag
        if etag is None and stored is not None:
            etag = stored.rejected_etag or (stored.etag if current is not None else None)
        try:
            fetched = self.client.fetch_baseline(etag)
            self.last_fetch_error = None
        except ControlPlaneError as e:
            self.last_fetch_error = str(e)
            status = getattr(e, "status", None)
            if status != 404:  # 404: nothing published for this host, a normal state
                log.warning("cannot fetch the baseline from the control plane: %s", e)
            return current
        if fetched.envelope is None:
            return current
        result = self._verify(fetched.envelope, fetched.etag)
        if isinstance(result, BaselineRejection):
            self._record_rejection(result, stored)
            return current
        if current is not None and result.version <= current.version:
            if result.version < current.version:
                self._record_rejection(
                    BaselineRejection(
                        "BaselineRollback",
                        f"version {result.version} is older than the applied remote version "
                        f"{current.version}; baselines are never rolled back",
                        version=result.version,
                        etag=fetched.etag,
                    ),
                    stored,
                )
            return current
        self.stored.replace(
            result.version, fetched.envelope, fetched.etag, self.clock().timestamp()
        )
        self._applied_envelope = fetched.envelope
        log.info("applied signed baseline version %d from the control plane", result.version)
        return result

    def current(self) -> tuple[Baseline, str]:
        """The baseline to reconcile against, and where it came from (for status/evidence).

        Raises `BaselineError` only when neither the local file nor a stored
        remote baseline is usable.
        """
        local: Baseline | None = None
        local_error: BaselineError | None = None
        try:
            local = load_baseline(self.cfg.baseline_path)
        except BaselineError as e:
            local_error = e
            log.error("local baseline unusable: %s", e)
        remote = self._remote()
        if remote is not None and (local is None or remote.version > local.version):
            if self.publish is not None and self._applied_envelope is not None:
                self.publish(self._applied_envelope)
            return remote, f"control plane (signed, version {remote.version})"
        if local is not None:
            return local, f"{self.cfg.baseline_path} (local, version {local.version})"
        assert local_error is not None
        raise local_error
