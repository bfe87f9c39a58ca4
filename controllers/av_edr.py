"""Anti-malware controller (HIPAA 164.308(a)(5)(ii)(B), 164.312(b)).

Three things, all read-only:

* scanner units (e.g. clamav-daemon.service): delegated to the services
  controller (same `systemctl show` parsing, drifts and Start/Restart/Enable
  plan, same no-action-while-systemd-retries rule);
* the engine binary: `sha256sum` of `engine_path` (symlinks followed, as the
  NixOS profile links into the store) against the pinned hash. A mismatch is
  alert-only (EngineHashMismatch): an unexpected binary is a security event
  for a human, and "repairing" it could only mean running something else we
  do not trust either;
* signature databases: their mtime via `Host.stat` against
  `max_signature_age_hours`. Stale or missing signatures start `updater_unit`
  (e.g. clamav-freshclam.service, a oneshot on NixOS) when one is configured,
  which is the normal way signatures get fresh and is non-disruptive;
  otherwise they are alert-only.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from controllers.services import ServicesController, ServicesObserved
from specs.actions import Action, StartUnit
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.av_edr import AvEdrSpec
from specs.kinds.services import ServicesSpec
from specs.watch import WatchTargets

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class EngineObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str | None = None
    missing: bool = False
    error: str | None = None


class SignatureDbObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str  # as configured
    found: str | None = None  # the file actually seen (.cvd or .cld)
    mtime: datetime | None = None
    error: str | None = None


class AvEdrObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    observed_at: datetime
    services: ServicesObserved
    engine: EngineObserved | None = None
    signatures: list[SignatureDbObserved] = []


def parse_sha256sum(stdout: str) -> str:
    """First field of `sha256sum FILE` ("\\" prefix = escaped file name)."""
    fields = stdout.split()
    digest = fields[0].lstrip("\\").lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"sha256sum printed no digest: {stdout[:200]!r}")
    return digest


def signature_candidates(path: str) -> list[str]:
    # freshclam keeps a database either as the signed .cvd or, after an
    # incremental update, as .cld: either one is "the" daily database.
    if path.endswith(".cvd"):
        return [path, path[:-4] + ".cld"]
    if path.endswith(".cld"):
        return [path, path[:-4] + ".cvd"]
    return [path]


def _services_spec(spec: AvEdrSpec) -> ServicesSpec:
    return ServicesSpec(
        units=spec.units,
        restart_backoff_base=spec.restart_backoff_base,
        restart_backoff_cap=spec.restart_backoff_cap,
    )


class AvEdrController(ControllerBase[AvEdrSpec, AvEdrObserved]):
    spec_type = AvEdrSpec
    kind = "av_edr"

    def __init__(self, clock: Clock = utcnow) -> None:
        self.clock = clock
        self.services = ServicesController()

    def backoff(self, spec: AvEdrSpec) -> tuple[float, float]:
        return spec.restart_backoff_base, max(spec.restart_backoff_cap, spec.restart_backoff_base)

    def targets(self, spec: AvEdrSpec) -> WatchTargets:
        units = [u.name for u in spec.units] + ([spec.updater_unit] if spec.updater_unit else [])
        paths = [spec.engine_path] if spec.engine_path else []
        for db in spec.signature_dbs:  # a '.cvd' may be replaced by its '.cld' sibling
            paths += [db, db[:-4] + ".cld"] if db.endswith(".cvd") else [db]
        return WatchTargets.of(units=units, paths=paths)

    def observe(self, host: Host, spec: AvEdrSpec) -> AvEdrObserved:
        return AvEdrObserved(
            observed_at=self.clock(),
            services=self.services.observe(host, _services_spec(spec)),
            engine=self._engine(host, spec),
            signatures=[self._signature_db(host, p) for p in spec.signature_dbs],
        )

    def _engine(self, host: Host, spec: AvEdrSpec) -> EngineObserved | None:
        if spec.engine_path is None:
            return None
        path = spec.engine_path
        try:
            done = host.run(["sha256sum", "--", path], timeout=spec.command_timeout)
        except HostError as e:
            return EngineObserved(path=path, error=str(e))
        if done.exit_code != 0:
            missing = "No such file" in done.stderr
            return EngineObserved(path=path, missing=missing, error=done.stderr.strip()[:300])
        try:
            return EngineObserved(path=path, sha256=parse_sha256sum(done.stdout))
        except ValueError as e:
            return EngineObserved(path=path, error=str(e))

    def _signature_db(self, host: Host, path: str) -> SignatureDbObserved:
        best: SignatureDbObserved | None = None
        for candidate in signature_candidates(path):
            try:
                st = host.stat(candidate)
            except FileNotFoundError:
                continue
            except OSError as e:
                return SignatureDbObserved(path=path, error=f"{candidate}: {e.strerror or e}")
            mtime = datetime.fromtimestamp(st.mtime, UTC)
            if best is None or best.mtime is None or mtime > best.mtime:
                best = SignatureDbObserved(path=path, found=candidate, mtime=mtime)
        return best or SignatureDbObserved(path=path)

    def diff(self, spec: AvEdrSpec, observed: AvEdrObserved) -> list[Drift]:
        drifts = self.services.diff(_services_spec(spec), observed.services)
        eng = observed.engine
        if spec.engine_path and spec.engine_sha256 and eng is not None:
            drifts.extend(_engine_drifts(spec.engine_sha256, eng))
        sig_remedy = Remedy.remediate if spec.updater_unit else Remedy.alert
        todo = (
            f"; starting {spec.updater_unit}"
            if spec.updater_unit
            else "; run the signature updater (freshclam) and check it can reach its mirror"
        )
        max_age = timedelta(hours=spec.max_signature_age_hours)
        for db in observed.signatures:
            field = f"signature_dbs.{db.path}"
            if db.error is not None:
                drifts.append(Drift(
                    field=field, reason="SignaturesUnreadable", expected="readable",
                    actual=db.error, message=f"cannot stat {db.path}: {db.error}",
                    remedy=Remedy.alert,
                ))  # fmt: skip
            elif db.mtime is None:
                drifts.append(Drift(
                    field=field, reason="SignaturesMissing", expected="present", actual="missing",
                    message=f"signature database {db.path} does not exist{todo}",
                    remedy=sig_remedy,
                ))  # fmt: skip
            elif observed.observed_at - db.mtime > max_age:
                age_h = (observed.observed_at - db.mtime).total_seconds() / 3600
                drifts.append(Drift(
                    field=field, reason="SignaturesStale",
                    expected=f"updated within {spec.max_signature_age_hours:g}h",
                    actual=f"{db.found} last updated {db.mtime.isoformat()} ({age_h:.1f}h ago)",
                    message=f"signature database {db.found} is {age_h:.1f}h old{todo}",
                    remedy=sig_remedy,
                ))  # fmt: skip
        return drifts

    def plan(self, spec: AvEdrSpec, observed: AvEdrObserved, drifts: list[Drift]) -> list[Action]:
        unit_drifts = [d for d in drifts if d.field.startswith("units.")]
        actions = self.services.plan(_services_spec(spec), observed.services, unit_drifts)
        stale = [
            d for d in drifts
            if d.field.startswith("signature_dbs.") and d.remedy is Remedy.remediate
        ]  # fmt: skip
        if stale and spec.updater_unit:
            start = StartUnit(unit=spec.updater_unit, reason=stale[0].reason)
            # one action per unit key: a failed updater already gets a RestartUnit
            if all(a.key != start.key for a in actions):
                actions.append(start)
        return actions

    def facts(self, spec: AvEdrSpec, observed: AvEdrObserved) -> dict[str, Any]:
        out: dict[str, Any] = self.services.facts(_services_spec(spec), observed.services)
        if observed.engine is not None:
            out["engine_path"] = observed.engine.path
            out["engine_sha256"] = observed.engine.sha256
        out["signature_dbs"] = {
            db.path: db.mtime.isoformat() if db.mtime else None for db in observed.signatures
        }
        return out


def _engine_drifts(expected: str, eng: EngineObserved) -> list[Drift]:
    field = "engine_sha256"
    if eng.missing:
        return [Drift(
            field=field, reason="EngineMissing", expected=expected, actual="missing",
            message=f"scanner engine {eng.path} does not exist; the scanner cannot be running "
            "the approved binary. Check the NixOS configuration.", remedy=Remedy.alert,
        )]  # fmt: skip
    if eng.error is not None:
        return [Drift(
            field=field, reason="EngineUnreadable", expected=expected, actual=eng.error,
            message=f"cannot hash scanner engine {eng.path}: {eng.error}", remedy=Remedy.alert,
        )]  # fmt: skip
    if eng.sha256 != expected:
        return [Drift(
            field=field, reason="EngineHashMismatch", expected=expected, actual=str(eng.sha256),
            message=f"scanner engine {eng.path} has sha256 {eng.sha256}, the baseline approves "
            f"{expected}. Treat as a possible compromise: verify the binary (nix-store "
            "--verify-path) before updating engine_sha256. The agent does not replace it.",
            remedy=Remedy.alert,
        )]  # fmt: skip
    return []
