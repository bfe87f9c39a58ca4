from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from freezegun import freeze_time

from specs.window import MaintenanceWindow, WindowFormatError


def at(h: int, m: int, s: int = 0) -> datetime:
    return datetime(2026, 11, 26, h, m, s, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "when", "inside"),
    [
        ("02:00-04:00", at(2, 0), True),  # start inclusive
        ("02:00-04:00", at(3, 59, 59), True),
        ("02:00-04:00", at(4, 0), False),  # end exclusive
        ("02:00-04:00", at(1, 59, 59), False),
        ("02:00-04:00", at(12, 0), False),
        ("22:00-02:00", at(22, 0), True),  # crosses midnight
        ("22:00-02:00", at(23, 59, 59), True),
        ("22:00-02:00", at(0, 0), True),
        ("22:00-02:00", at(1, 59), True),
        ("22:00-02:00", at(2, 0), False),
        ("22:00-02:00", at(21, 59, 59), False),
        ("22:00-02:00", at(12, 0), False),
        ("00:00-23:59", at(23, 58), True),
        ("00:00-23:59", at(23, 59), False),
    ],
)
def test_contains(window: str, when: datetime, inside: bool) -> None:
    assert MaintenanceWindow.parse(window).contains(when) is inside


def test_other_timezones_are_converted_to_utc() -> None:
    w = MaintenanceWindow.parse("02:00-04:00")
    berlin = timezone(timedelta(hours=1))
    assert w.contains(datetime(2026, 11, 26, 3, 30, tzinfo=berlin))  # 02:30Z
    assert not w.contains(datetime(2026, 11, 26, 2, 30, tzinfo=berlin))  # 01:30Z


def test_naive_datetime_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        MaintenanceWindow.parse("02:00-04:00").contains(datetime(2026, 1, 1, 3, 0))


@pytest.mark.parametrize("bad", ["2:00-04:00", "02:00-24:00", "02:60-03:00", "02:00", "", "02:00-02:00"])
def test_bad_formats(bad: str) -> None:
    with pytest.raises(WindowFormatError):
        MaintenanceWindow.parse(bad)


def test_next_opening_with_frozen_clock() -> None:
    w = MaintenanceWindow.parse("22:00-02:00")
    with freeze_time("2026-11-26T12:00:00Z"):
        now = datetime.now(UTC)
        assert w.next_opening(now) == at(22, 0)
    with freeze_time("2026-11-26T23:00:00Z"):
        now = datetime.now(UTC)
        assert w.next_opening(now) == now  # already open
    with freeze_time("2026-11-26T22:30:00Z"):
        assert MaintenanceWindow.parse("02:00-04:00").next_opening(datetime.now(UTC)) == at(2, 0) + timedelta(days=1)
