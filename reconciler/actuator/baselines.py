"""The baseline the root actuator decides from, out of its own root-owned inputs only.

Two inputs, neither of them writable by the agent:

* the local file (`baselinePath`), written by the host's NixOS configuration;
* at most ONE signed baseline, kept in the actuator's own state directory
  (root, 0700). The agent hands over what it fetched (`offer`); the actuator
  verifies the DSSE signature against the configured keys, checks that the
  document is bound to this site and host, and keeps it only if its version
  is above the high-water mark: the highest version it ever accepted, kept
  in its own file and only ever raised. An older signed document, however
  validly signed, is refused (`BaselineRollback`); so is a different document
  reusing the current version.

The baseline that applies is chosen by the agent's own rule: the signed one
when its version is higher than the local file's, else the local file. Only
that one decides what is allowed, so an older document (an old rebuild
target, units dropped since) never widens what a compromised agent may ask
for. The kept envelope is verified again on every use, so removing a key
from `mcpPublicKeys` stops it at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from pathlib import Path

from reconciler.trust.dsse import TrustedKeys, TrustError, verify_envelope
from specs.baseline import (
    BASELINE_PAYLOAD_TYPE,
    Baseline,
    BaselineError,
    binding_problem,
    load_baseline,
    parse_baseline,
)
from specs.errors import ComplianceAgentError

log = logging.getLogger("compliance_agent.actuator")

SIGNED_FILE = "signed-baseline.dsse.json"
HIGH_WATER_FILE = "baseline-high-water-mark"
MAX_SIGNED_BYTES = 1024 * 1024  # the agent's own limit for a fetched baseline


class BaselineOfferRefused(ComplianceAgentError):
    """An offered signed baseline was not kept; `reason` is CamelCase and stable."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason}: {message}")


class ActuatorBaselines:
    def __init__(
        self,
        local_path: Path,
        state_directory: Path,
        trusted_keys: list[str],
        *,
        site_id: str,
        host_id: str,
    ) -> None:
        self.local_path = local_path
        self.state_directory = state_directory
        self.keys = TrustedKeys(trusted_keys)
        self.site_id = site_id
        self.host_id = host_id
        self._lock = threading.Lock()  # one offer at a time: check-then-raise the mark

    def applicable(self) -> Baseline | None:
        """The baseline that governs now, or None when there is none (nothing is allowed)."""
        local: Baseline | None = None
        try:
            local = load_baseline(self.local_path)
        except BaselineError as e:
            log.warning("local baseline unusable: %s", e)
        signed = self._kept()
        if signed is not None and (local is None or signed.version > local.version):
            return signed
        return local

    def offer(self, envelope: bytes) -> int:
        """Verify and keep a signed baseline; its version, or BaselineOfferRefused."""
        baseline = self.verify(envelope)
        with self._lock:
            mark = self.high_water_mark()
            if baseline.version < mark:
                raise BaselineOfferRefused(
                    "BaselineRollback",
                    f"version {baseline.version} is older than version {mark} this actuator "
                    "already accepted; signed baselines are never rolled back",
                )
            if baseline.version == mark:
                if self._read(SIGNED_FILE) == envelope:
                    return baseline.version  # the one we keep: nothing to do
                raise BaselineOfferRefused(
                    "BaselineRollback",
                    f"version {mark} was already accepted with different content; "
                    "a new baseline needs a higher version",
                )
            # Envelope first, mark second: a crash in between leaves the new
            # envelope kept and a mark it can still be re-offered above.
            self._write(SIGNED_FILE, envelope)
            self._write(HIGH_WATER_FILE, f"{baseline.version}\n".encode())
        log.info("accepted signed baseline version %d (high-water mark was %d)",
                 baseline.version, mark)
        return baseline.version

    def verify(self, envelope: bytes) -> Baseline:
        """Signature, payload type, content and site/host binding; BaselineOfferRefused."""
        try:
            payload = verify_envelope(
                envelope, BASELINE_PAYLOAD_TYPE, self.keys, max_bytes=MAX_SIGNED_BYTES
            )
        except TrustError as e:
            raise BaselineOfferRefused(e.reason, str(e)) from None
        try:
            baseline = parse_baseline(json.loads(payload), "signed baseline")
        except (ValueError, RecursionError) as e:
            raise BaselineOfferRefused("InvalidBaseline", f"payload is not JSON: {e}") from None
        except BaselineError as e:
            raise BaselineOfferRefused("InvalidBaseline", "; ".join(e.problems)[:500]) from None
        problem = binding_problem(baseline, self.site_id, self.host_id)
        if problem is not None:
            raise BaselineOfferRefused(*problem)
        return baseline

    def high_water_mark(self) -> int:
        """The highest signed version ever accepted here (-1 before the first)."""
        raw = self._read(HIGH_WATER_FILE)
        try:
            return int(raw.decode().strip()) if raw else -1
        except ValueError:
            # Only root writes it; garbage means damage, and forgetting the
            # mark would re-admit old documents: hold everything instead.
            log.error("%s is unreadable; refusing every signed baseline until it is fixed",
                      self.state_directory / HIGH_WATER_FILE)
            return 2**63

    def _kept(self) -> Baseline | None:
        raw = self._read(SIGNED_FILE)
        if raw is None:
            return None
        try:
            baseline = self.verify(raw)
        except BaselineOfferRefused as e:
            log.warning("kept signed baseline no longer verifies (%s); using the local file",
                        e.reason)
            return None
        if baseline.version < self.high_water_mark():
            return None  # never fall back to an older document than one accepted before
        return baseline

    def _read(self, name: str) -> bytes | None:
        try:
            with open(self.state_directory / name, "rb") as f:
                return f.read(MAX_SIGNED_BYTES * 2 + 1)
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes) -> None:
        self.state_directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.state_directory / name
        tmp = final.with_name(f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.state_directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
