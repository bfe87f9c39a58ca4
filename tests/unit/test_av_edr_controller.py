"""AV/EDR controller on recorded systemd 252 / coreutils output (no host)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from controllers.av_edr import (
    AvEdrController,
    parse_sha256sum,
    signature_candidates,
)
from specs.actions import RestartUnit, StartUnit
from specs.drift import Remedy
from specs.host import Completed, FileStat
from specs.kinds.av_edr import AvEdrSpec
from tests.conftest import FIXTURES

FIX = FIXTURES / "av_edr"
ENGINE = "/usr/local/sbin/clamd-standin"
ENGINE_SHA = "321aa3e1802e450c2744218b0eb69b3cafb79e7ab803178a6110b131571c53d6"  # recorded
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


class FakeHost:
    def __init__(self, show: str, sha: str | None = None, files: dict[str, float] | None = None):
        self.show = (FIX / show).read_text()
        self.sha = sha if sha is not None else (FIX / "sha256sum.txt").read_text()
        self.files = files if files is not None else {"/var/lib/clamav/daily.cvd": NOW.timestamp()}
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        args = list(argv)
        self.calls.append(args)
        if args[:2] == ["systemctl", "show"]:
            return Completed(argv=args, exit_code=0, stdout=self.show, stderr="", duration=0)
        if args[0] == "sha256sum":
            if self.sha == "":
                err = (FIX / "sha256sum-missing.stderr").read_text()
                return Completed(argv=args, exit_code=1, stdout="", stderr=err, duration=0)
            return Completed(argv=args, exit_code=0, stdout=self.sha, stderr="", duration=0)
        raise AssertionError(f"unexpected command {args}")

    def read_text(self, path: str) -> str:
        raise AssertionError("not used")

    def stat(self, path: str) -> FileStat:
        if path not in self.files:
            raise FileNotFoundError(path)
        return FileStat(mode=0o644, uid=0, gid=0, size=1, mtime=self.files[path], is_dir=False,
                        is_symlink=False)  # fmt: skip


def spec(**kw: object) -> AvEdrSpec:
    base: dict[str, object] = {
        "units": [{"name": "clamav-daemon.service"}],
        "engine_path": ENGINE,
        "engine_sha256": ENGINE_SHA,
        "signature_dbs": ["/var/lib/clamav/daily.cvd"],
        "max_signature_age_hours": 24,
        "updater_unit": "clamav-freshclam.service",
    }
    base.update(kw)
    return AvEdrSpec.model_validate(base)


def run(host: FakeHost, s: AvEdrSpec | None = None) -> tuple[list[str], list[object]]:
    s = s or spec()
    ctl = AvEdrController(clock=lambda: NOW)
    obs = ctl.observe(host, s)
    drifts = ctl.diff(s, obs)
    return [d.reason for d in drifts], list(ctl.plan(s, obs, drifts))


def test_all_good() -> None:
    assert run(FakeHost("systemctl-show-active.txt")) == ([], [])


def test_inactive_scanner_is_started_via_services_plan() -> None:
    reasons, plan = run(FakeHost("systemctl-show-inactive.txt"))
    assert reasons == ["UnitInactive"]
    assert plan == [StartUnit(unit="clamav-daemon.service", reason="UnitInactive")]


def test_failed_scanner_is_restarted() -> None:
    reasons, plan = run(FakeHost("systemctl-show-failed.txt"))
    assert reasons == ["UnitFailed"]
    assert plan == [RestartUnit(unit="clamav-daemon.service", reason="UnitFailed")]


def test_engine_hash_mismatch_never_gets_an_action() -> None:
    s = spec(engine_sha256="a" * 64)
    ctl = AvEdrController(clock=lambda: NOW)
    obs = ctl.observe(FakeHost("systemctl-show-inactive.txt"), s)
    drifts = ctl.diff(s, obs)
    mismatch = [d for d in drifts if d.reason == "EngineHashMismatch"]
    assert len(mismatch) == 1 and mismatch[0].remedy is Remedy.alert
    assert mismatch[0].actual == ENGINE_SHA
    # the only action is the unit start; nothing touches the engine
    assert [a.type for a in ctl.plan(s, obs, drifts)] == ["StartUnit"]


def test_missing_engine_alert() -> None:
    reasons, plan = run(FakeHost("systemctl-show-active.txt", sha=""))
    assert (reasons, plan) == (["EngineMissing"], [])


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({"/var/lib/clamav/daily.cvd": (NOW - timedelta(hours=30)).timestamp()}, "SignaturesStale"),
        ({}, "SignaturesMissing"),
    ],
)
def test_stale_or_missing_signatures_start_updater(files: dict[str, float], reason: str) -> None:
    reasons, plan = run(FakeHost("systemctl-show-active.txt", files=files))
    assert reasons == [reason]
    assert plan == [StartUnit(unit="clamav-freshclam.service", reason=reason)]


def test_stale_signatures_alert_only_without_updater() -> None:
    files = {"/var/lib/clamav/daily.cvd": (NOW - timedelta(hours=30)).timestamp()}
    s = spec(updater_unit=None)
    ctl = AvEdrController(clock=lambda: NOW)
    obs = ctl.observe(FakeHost("systemctl-show-active.txt", files=files), s)
    drifts = ctl.diff(s, obs)
    assert [(d.reason, d.remedy) for d in drifts] == [("SignaturesStale", Remedy.alert)]
    assert ctl.plan(s, obs, drifts) == []


def test_cld_sibling_counts_and_newest_wins() -> None:
    files = {
        "/var/lib/clamav/daily.cvd": (NOW - timedelta(days=10)).timestamp(),
        "/var/lib/clamav/daily.cld": (NOW - timedelta(hours=1)).timestamp(),
    }
    host = FakeHost("systemctl-show-active.txt", files=files)
    ctl = AvEdrController(clock=lambda: NOW)
    obs = ctl.observe(host, spec())
    assert obs.signatures[0].found == "/var/lib/clamav/daily.cld"
    assert ctl.diff(spec(), obs) == []


def test_updater_that_failed_gets_one_restart_not_restart_plus_start() -> None:
    show = (
        (FIX / "systemctl-show-failed.txt")
        .read_text()
        .replace("clamav-daemon.service", "clamav-freshclam.service")
    )
    host = FakeHost("systemctl-show-active.txt", files={})
    host.show = show
    s = spec(units=[{"name": "clamav-freshclam.service"}])
    _, plan = run(host, s)
    assert plan == [RestartUnit(unit="clamav-freshclam.service", reason="UnitFailed")]


def test_parse_sha256sum() -> None:
    assert parse_sha256sum((FIX / "sha256sum.txt").read_text()) == ENGINE_SHA
    assert parse_sha256sum("\\" + ENGINE_SHA + "  /odd\\nname\n") == ENGINE_SHA
    with pytest.raises(ValueError):
        parse_sha256sum("")


def test_signature_candidates() -> None:
    assert signature_candidates("/d/daily.cvd") == ["/d/daily.cvd", "/d/daily.cld"]
    assert signature_candidates("/d/main.cld") == ["/d/main.cld", "/d/main.cvd"]
    assert signature_candidates("/d/custom.ndb") == ["/d/custom.ndb"]


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="together"):
        AvEdrSpec(engine_path="/x")
    with pytest.raises(ValueError, match="absolute"):
        AvEdrSpec(signature_dbs=["daily.cvd"])
    with pytest.raises(ValueError, match="systemd unit"):
        AvEdrSpec(updater_unit="--now")


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline
    from tests.conftest import REPO_ROOT

    baseline = load_baseline(REPO_ROOT / "examples" / "baselines" / "av_edr.json")
    assert list(baseline.resources()) == ["av_edr"]
