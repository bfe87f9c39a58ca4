"""Firewall controller (HIPAA 164.312(a)(1) access control, 164.312(e)(1) transmission
security): the live nftables ruleset equals the baseline ruleset file.

observe, through the Host only:

1. read the baseline file and hash it. If the SHA-256 is not the baseline's
   ``ruleset_sha256`` the file was changed outside the baseline: alert-only
   drift ``RulesetFileMismatch``, and the file is never loaded, not even into
   the sandbox below.
2. the live ruleset: ``nft -j list ruleset``, normalized
   (controllers.nft_normalize) and hashed -> ``live_digest``.
3. the expected ruleset: the file loaded into a throwaway network namespace
   by a stdlib-only sandbox helper (its argv is given at construction) and listed the
   same way, so both sides are the kernel's own rendering (no second nft
   parser to get wrong).
   Memoised per (file hash, unmanaged lists): the file is immutable under
   its hash, so this costs one sandbox run per baseline, not per pass.

diff: ``live_digest != expected_digest`` -> ``RulesetDrifted`` (remediate);
plan: ``ApplyNftRuleset(path, sha256)``, which the actuator applies with
``nft -f`` (one atomic transaction) after re-checking the file's hash.
A file nft rejects (``RulesetInvalid``) or a host where no sandbox can be
made (``RulesetUnverifiable``) is alert-only: nothing is applied blind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from controllers.nft_normalize import (
    RulesetFormatError,
    digest,
    normalize,
    parse_listing,
    summarize_difference,
)
from specs.actions import Action, ApplyNftRuleset
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.firewall import FirewallSpec
from specs.watch import WatchTargets

LIST_TIMEOUT = 15.0
SANDBOX_TIMEOUT = 60.0
SANDBOX_NFT_REJECTED = 3  # the sandbox helper's exit codes: nft refused the file,
SANDBOX_NO_NAMESPACE = 4  # no private network namespace could be made
CACHE_SIZE = 8


class FirewallObserveError(HostError):
    """The live ruleset could not be listed or read."""


class FirewallObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    ruleset_path: str
    file_sha256: str | None = None  # None: unreadable
    file_error: str | None = None
    file_matches: bool = False
    live_digest: str
    expected_digest: str | None = None
    expected_error: str | None = None
    expected_unverifiable: bool = False
    difference: str = ""  # where live and expected differ, for the operator


class FirewallController(ControllerBase[FirewallSpec, FirewallObserved]):
    spec_type = FirewallSpec
    kind = "firewall"

    def __init__(self, *, sandbox_argv: Sequence[str]) -> None:
        # How to start the ruleset sandbox (the composition root knows where it lives;
        # a controller only runs it through the Host).
        self._sandbox_argv = list(sandbox_argv)
        # (file sha256, unmanaged tables, unmanaged sets) -> (digest, normalized)
        self._expected: dict[tuple[str, tuple[str, ...], tuple[str, ...]],
                             tuple[str, dict[str, Any]]] = {}
        self._rejected: dict[tuple[str, tuple[str, ...], tuple[str, ...]], str] = {}

    def backoff(self, spec: FirewallSpec) -> tuple[float, float]:
        """Per-action re-apply backoff (base, cap) in seconds, applied by the runtime."""
        return (spec.reapply_backoff_base, max(spec.reapply_backoff_cap, spec.reapply_backoff_base))

    def targets(self, spec: FirewallSpec) -> WatchTargets:
        return WatchTargets.of(paths=[spec.ruleset_path], nftables=True)

    # -- observe -------------------------------------------------------------

    def observe(self, host: Host, spec: FirewallSpec) -> FirewallObserved:
        live = self._live(host, spec)
        live_digest = digest(live)
        try:
            text = host.read_text(spec.ruleset_path)
        except OSError as e:
            return FirewallObserved(
                ruleset_path=spec.ruleset_path, live_digest=live_digest,
                file_error=f"cannot read {spec.ruleset_path}: {e.strerror or e}",
            )
        file_sha = hashlib.sha256(text.encode()).hexdigest()
        base = {"ruleset_path": spec.ruleset_path, "file_sha256": file_sha,
                "live_digest": live_digest}
        if file_sha != spec.ruleset_sha256:
            return FirewallObserved(**base, file_matches=False)
        key = (file_sha, tuple(spec.unmanaged_tables), tuple(spec.unmanaged_set_elements))
        if key in self._rejected:  # same bytes, same verdict: don't re-run nft every pass
            return FirewallObserved(**base, file_matches=True, expected_error=self._rejected[key])
        cached = self._expected.get(key)
        if cached is None:
            done = host.run([*self._sandbox_argv, "--sha256", file_sha, spec.ruleset_path],
                            timeout=SANDBOX_TIMEOUT)
            if done.exit_code != 0:
                error = (done.stderr.strip() or done.stdout.strip())[:2000] \
                    or f"sandbox exited {done.exit_code}"
                if done.exit_code == SANDBOX_NFT_REJECTED and len(self._rejected) < CACHE_SIZE:
                    self._rejected[key] = error
                return FirewallObserved(
                    **base, file_matches=True,
                    expected_unverifiable=done.exit_code == SANDBOX_NO_NAMESPACE,
                    expected_error=error,
                )
            expected = self._normalize(done.stdout, spec, "the sandboxed baseline ruleset")
            cached = (digest(expected), expected)
            if len(self._expected) >= CACHE_SIZE:
                self._expected.pop(next(iter(self._expected)))
            self._expected[key] = cached
        expected_digest, expected = cached
        return FirewallObserved(
            **base, file_matches=True, expected_digest=expected_digest,
            difference="" if expected_digest == live_digest
            else summarize_difference(expected, live),
        )

    def _live(self, host: Host, spec: FirewallSpec) -> dict[str, Any]:
        done = host.run(["nft", "-j", "list", "ruleset"], timeout=LIST_TIMEOUT)
        if done.exit_code != 0:
            raise FirewallObserveError(
                f"`nft -j list ruleset` exited {done.exit_code}: {done.stderr.strip()[:500]} "
                "(the agent needs CAP_NET_ADMIN to read the ruleset)"
            )
        return self._normalize(done.stdout, spec, "`nft -j list ruleset`")

    @staticmethod
    def _normalize(text: str, spec: FirewallSpec, source: str) -> dict[str, Any]:
        try:
            items = parse_listing(text)
        except RulesetFormatError as e:
            raise FirewallObserveError(f"{source}: {e}") from None
        return normalize(items, spec.unmanaged_tables, spec.unmanaged_set_elements)

    # -- diff / plan ---------------------------------------------------------

    def diff(self, spec: FirewallSpec, observed: FirewallObserved) -> list[Drift]:
        path = spec.ruleset_path
        if observed.file_error is not None:
            return [Drift(field="ruleset_path", reason="RulesetFileUnreadable",
                          expected=spec.ruleset_sha256, actual="unreadable",
                          message=f"{observed.file_error}; deploy the baseline ruleset file",
                          remedy=Remedy.alert)]
        if not observed.file_matches:
            return [Drift(field="ruleset_sha256", reason="RulesetFileMismatch",
                          expected=spec.ruleset_sha256, actual=observed.file_sha256 or "",
                          message=f"{path} does not match the baseline's sha256: it was "
                          "changed outside the baseline and will not be applied; restore "
                          "the file or publish a baseline with its new hash",
                          remedy=Remedy.alert)]
        if observed.expected_digest is None:
            reason = "RulesetUnverifiable" if observed.expected_unverifiable else "RulesetInvalid"
            hint = ("no private network namespace could be created to evaluate it"
                    if observed.expected_unverifiable else "nft rejected it")
            return [Drift(field="ruleset_path", reason=reason, expected="loadable ruleset",
                          actual="error", message=f"{path}: {hint}: {observed.expected_error}",
                          remedy=Remedy.alert)]
        if observed.live_digest != observed.expected_digest:
            return [Drift(field="ruleset", reason="RulesetDrifted",
                          expected=observed.expected_digest, actual=observed.live_digest,
                          message=f"live nftables ruleset differs from {path}: "
                          f"{observed.difference}")]
        return []

    def plan(
        self, spec: FirewallSpec, observed: FirewallObserved, drifts: list[Drift]
    ) -> list[Action]:
        if any(d.reason == "RulesetDrifted" and d.remedy is Remedy.remediate for d in drifts):
            return [ApplyNftRuleset(path=spec.ruleset_path, sha256=spec.ruleset_sha256,
                                    reason="RulesetDrifted")]
        return []

    def facts(self, spec: FirewallSpec, observed: FirewallObserved) -> dict[str, Any]:
        return {
            "ruleset_hash": observed.live_digest,
            "expected_ruleset_hash": observed.expected_digest,
            "ruleset_file_sha256": observed.file_sha256,
        }
