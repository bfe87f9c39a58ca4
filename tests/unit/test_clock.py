"""Clock sanity controller: parsers against recorded timedatectl/chronyc output."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.time_ import (
    HTTP_DATE_TOLERANCE_MS,
    ClockController,
    ClockParseError,
    TimeObserved,
    offset_from_http_date,
    parse_chrony_tracking_csv,
    parse_timespan_ms,
    parse_timesync_status,
)
from specs.drift import Remedy
from specs.host import CommandNotFound, Completed, FileStat
from specs.kinds.time_ import TimeSpec

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "clock"


def fx(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


class FakeHost:
    """Answers run() from a table: argv tuple -> (exit, stdout, stderr) or missing tool."""

    def __init__(self, table: dict[tuple[str, ...], tuple[int, str, str] | None]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        self.calls.append(list(argv))
        entry = self.table.get(tuple(argv))
        if entry is None:
            raise CommandNotFound(argv)
        code, out, err = entry
        return Completed(argv=list(argv), exit_code=code, stdout=out, stderr=err, duration=0.001)

    def read_text(self, path: str) -> str:
        raise FileNotFoundError(path)

    def stat(self, path: str) -> FileStat:
        raise FileNotFoundError(path)


TD = ("timedatectl", "timesync-status")
CH = ("chronyc", "-c", "tracking")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("+1.234ms", 1.234),
        ("-12.345s", -12345.0),
        ("-76us", -0.076),
        ("+412μs", 0.412),
        ("+2min 3.5s", 123500.0),
        ("1h 2min", 3_720_000.0),
        ("0", 0.0),
        ("+250ns", 0.00025),
    ],
)
def test_timespan_units(text: str, ms: float) -> None:
    assert parse_timespan_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "fast", "1.2 parsecs", "12", "1ms junk", "--1ms"])
def test_timespan_rejects_garbage(text: str) -> None:
    with pytest.raises(ClockParseError):
        parse_timespan_ms(text)


@given(st.text(max_size=40))
def test_timespan_never_crashes_unexpectedly(text: str) -> None:
    with contextlib.suppress(ClockParseError):
        parse_timespan_ms(text)


def test_timesyncd_synced() -> None:
    o = parse_timesync_status(fx("timesyncd_synced.txt"))
    assert o.source == "timesyncd"
    assert o.synchronized
    assert o.offset_ms == pytest.approx(1.234)
    assert o.server == "192.168.10.1 (ntp.clinic.lan)"
    assert o.packet_count == 27
    assert o.stratum == 2


def test_timesyncd_no_server_yet() -> None:
    o = parse_timesync_status(fx("timesyncd_no_server.txt"))
    assert not o.synchronized
    assert o.offset_ms is None
    assert o.server is None
    assert o.packet_count == 0


def test_timesyncd_negative_seconds_and_mu_and_minutes() -> None:
    assert parse_timesync_status(fx("timesyncd_skewed_negative.txt")).offset_ms == pytest.approx(
        -12345.0
    )
    assert parse_timesync_status(fx("timesyncd_small_negative_mu.txt")).offset_ms == pytest.approx(
        -0.076
    )
    assert parse_timesync_status(fx("timesyncd_minutes_mu.txt")).offset_ms == pytest.approx(
        123500.0
    )


def test_timesyncd_server_not_synchronized() -> None:
    o = parse_timesync_status(fx("timesyncd_leap_unsynchronized.txt"))
    assert not o.synchronized
    assert o.leap == "not-synchronized"


def test_timesyncd_garbage() -> None:
    with pytest.raises(ClockParseError):
        parse_timesync_status("Failed to connect to bus\n")


def test_chrony_synced_sign_convention() -> None:
    # chrony's field 4 is the correction still to apply: negative = clock fast = ahead.
    o = parse_chrony_tracking_csv(fx("chrony_synced.csv"))
    assert o.source == "chrony"
    assert o.synchronized
    assert o.offset_ms == pytest.approx(-0.012345)
    assert o.server == "162.159.200.123"
    assert o.stratum == 4


def test_chrony_slow_clock_positive_offset() -> None:
    o = parse_chrony_tracking_csv(fx("chrony_slow_7s.csv"))
    assert o.offset_ms == pytest.approx(7500.123456)


def test_chrony_not_synchronised() -> None:
    o = parse_chrony_tracking_csv(fx("chrony_not_synchronised.csv"))
    assert not o.synchronized
    assert o.offset_ms is None
    assert o.leap == "Not synchronised"


def test_chrony_leap_insert_is_still_synchronised() -> None:
    o = parse_chrony_tracking_csv(fx("chrony_leap_insert.csv"))
    assert o.synchronized
    assert o.leap == "Insert second"
    assert o.server == "PPS"


@pytest.mark.parametrize(
    "text", ["", "506 Cannot talk to daemon\n", "a,b,c\n", "x,y,z,1,2,3,4,5,6,7,8,9,10,11\n"]
)
def test_chrony_garbage(text: str) -> None:
    with pytest.raises(ClockParseError):
        parse_chrony_tracking_csv(text)


def test_observe_prefers_timesyncd() -> None:
    host = FakeHost(
        {TD: (0, fx("timesyncd_synced.txt"), ""), CH: (0, fx("chrony_slow_7s.csv"), "")}
    )
    o = ClockController().observe(host, TimeSpec())
    assert o.source == "timesyncd"
    assert host.calls == [list(TD)]


def test_observe_falls_back_to_chrony_when_timesyncd_absent() -> None:
    host = FakeHost({TD: (1, "", fx("timedatectl_not_running.stderr")),
                     CH: (0, fx("chrony_slow_7s.csv"), "")})
    o = ClockController().observe(host, TimeSpec())
    assert o.source == "chrony"
    assert o.offset_ms == pytest.approx(7500.123456)
    assert "unit is masked" in o.problems[0]


def test_observe_no_source_alerts_with_reasons() -> None:
    host = FakeHost({TD: None, CH: (1, fx("chrony_cannot_talk.txt"), "")})
    ctrl = ClockController()
    spec = TimeSpec()
    o = ctrl.observe(host, spec)
    assert o.source is None
    drifts = ctrl.diff(spec, o)
    assert [d.reason for d in drifts] == ["NoTimeSource"]
    assert "command not found" in drifts[0].message
    assert "Cannot talk to daemon" in drifts[0].message
    assert ctrl.facts(spec, o)["ntp_offset_ms"] is None


def test_diff_skewed_is_alert_only_and_fact_recorded() -> None:
    ctrl = ClockController()
    spec = TimeSpec(max_skew_ms=5000)
    o = parse_timesync_status(fx("timesyncd_skewed_negative.txt"))
    drifts = ctrl.diff(spec, o)
    assert [d.reason for d in drifts] == ["ClockSkewed"]
    assert drifts[0].remedy is Remedy.alert
    assert "ahead of" in drifts[0].message
    assert ctrl.plan(spec, o, drifts) == []
    assert ctrl.facts(spec, o)["ntp_offset_ms"] == -12345.0


def test_diff_within_limit_is_clean() -> None:
    ctrl = ClockController()
    o = parse_timesync_status(fx("timesyncd_synced.txt"))
    assert ctrl.diff(TimeSpec(max_skew_ms=2), o) == []
    assert [d.reason for d in ctrl.diff(TimeSpec(max_skew_ms=1), o)] == ["ClockSkewed"]


def test_unsynchronized_alert_can_be_disabled() -> None:
    ctrl = ClockController()
    o = parse_timesync_status(fx("timesyncd_no_server.txt"))
    assert [d.reason for d in ctrl.diff(TimeSpec(), o)] == ["ClockUnsynchronized"]
    assert ctrl.diff(TimeSpec(require_synchronized=False), o) == []


def test_observed_round_trips_as_json() -> None:
    o = parse_chrony_tracking_csv(fx("chrony_synced.csv"))
    assert TimeObserved.model_validate_json(o.model_dump_json()) == o


def test_http_date_offset_centred_in_the_second() -> None:
    now = datetime(2026, 11, 26, 2, 0, 0, 250_000, tzinfo=UTC)
    off = offset_from_http_date("Thu, 26 Nov 2026 02:00:00 GMT", now)
    assert off == pytest.approx(HTTP_DATE_TOLERANCE_MS - 250.0)


def test_http_date_detects_large_skew() -> None:
    now = datetime(2026, 11, 26, 2, 0, 0, tzinfo=UTC) + timedelta(seconds=30)
    off = offset_from_http_date("Thu, 26 Nov 2026 02:00:00 GMT", now)
    assert off == pytest.approx(-29_500.0)  # local clock 30 s ahead, minus the centring


@pytest.mark.parametrize("header", ["", "yesterday", "Thu, 99 Nov 2026 02:00:00 GMT"])
def test_http_date_rejects_garbage(header: str) -> None:
    with pytest.raises(ValueError):
        offset_from_http_date(header, datetime(2026, 1, 1, tzinfo=UTC))


def test_http_date_needs_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        offset_from_http_date("Thu, 26 Nov 2026 02:00:00 GMT", datetime(2026, 11, 26))


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline

    b = load_baseline(FIX.parents[2] / "examples" / "baselines" / "time.json")
    assert b.time == TimeSpec(max_skew_ms=5000, require_synchronized=True)
    assert "time" in b.resources()


@given(st.text(max_size=300))
def test_tool_parsers_fail_only_with_clock_parse_error(text: str) -> None:
    for parse in (parse_timesync_status, parse_chrony_tracking_csv):
        with contextlib.suppress(ClockParseError):
            parse(text)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_timespan_round_trip_like_systemd(usec: int) -> None:
    # systemd's format_timespan: largest units first, seconds with a fraction.
    sign = "-" if usec < 0 else "+"
    rest = abs(usec)
    parts = []
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("min", 60_000_000)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest >= 1_000_000:
        parts.append(f"{rest / 1_000_000:.6f}".rstrip("0").rstrip(".") + "s")
    elif rest >= 1000:
        parts.append(f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "ms")
    elif rest or not parts:
        parts.append(f"{rest}us")
    assert parse_timespan_ms(sign + " ".join(parts)) == pytest.approx(usec / 1000, abs=1e-6)
