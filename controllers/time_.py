"""Clock sanity (guardrail 6): how far the clock is from its NTP reference.

Sign convention, used everywhere (`ntp_offset_ms`): NTP's theta =
reference - local, so a positive offset means the local clock is BEHIND.
timesyncd prints exactly that ("Offset: +1.2ms"); chrony's CSV "system time"
field is the correction still to apply, positive when the clock is slow, which
is the same sign. Drifts are alert-only: the agent never steps the clock.
"""

from __future__ import annotations

import csv
import math
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase, Phase
from specs.actions import Action
from specs.drift import Drift, Remedy
from specs.errors import ComplianceAgentError
from specs.host import Host, HostError
from specs.kinds.time_ import TimeSpec

TIMEDATECTL = ["timedatectl", "timesync-status"]
CHRONYC = ["chronyc", "-c", "tracking"]
COMMAND_TIMEOUT = 5.0

# HTTP Date (RFC 9110) has whole-second resolution and servers truncate, so the
# server's clock at the moment it wrote the header lies in [Date, Date + 1 s).
# offset_from_http_date() centres the estimate (+500 ms): its error is then
# within +-HTTP_DATE_TOLERANCE_MS plus half the request's round trip.
HTTP_DATE_TOLERANCE_MS = 500.0

# systemd format_timespan() units, largest first; 'us' is printed as 'μs' in
# newer systemd under a UTF-8 locale.
_UNIT_MS: dict[str, float] = {
    "y": 31_557_600_000.0,
    "month": 2_629_800_000.0,
    "w": 604_800_000.0,
    "d": 86_400_000.0,
    "h": 3_600_000.0,
    "min": 60_000.0,
    "s": 1000.0,
    "ms": 1.0,
    "us": 0.001,
    "μs": 0.001,
    "µs": 0.001,
    "ns": 0.000001,
}
_SPAN_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(month|min|ms|us|μs|µs|ns|y|w|d|h|s)")


class ClockParseError(ComplianceAgentError, ValueError):
    """Output of a time tool that does not have the expected shape."""


class TimeObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: Literal["timesyncd", "chrony"] | None  # None: no time daemon answered
    synchronized: bool
    offset_ms: float | None  # reference - local; None when never measured
    server: str | None = None
    packet_count: int | None = None
    stratum: int | None = None
    leap: str | None = None
    problems: list[str] = []  # why a source was not usable (shown in the drift message)


def parse_timespan_ms(text: str) -> float:
    """A systemd timespan ('1.234ms', '-12.345s', '1min 2.5s', '+76us') in milliseconds."""
    s = text.strip()
    sign = 1.0
    if s and s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:].strip()
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    for m in _SPAN_PART_RE.finditer(s):
        if s[pos:m.start()].strip():
            raise ClockParseError(f"unexpected text {s[pos:m.start()]!r} in timespan {text!r}")
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise ClockParseError(f"{text!r} is not a systemd timespan like '1.234ms'")
    return sign * total


def parse_timesync_status(text: str) -> TimeObserved:
    """`timedatectl timesync-status` (systemd-timesyncd), keyed 'Name: value' lines."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "Server" not in fields or "Packet count" not in fields:
        raise ClockParseError("timesync-status output has no 'Server:'/'Packet count:' lines")
    try:
        packets = int(fields["Packet count"])
    except ValueError:
        raise ClockParseError(f"bad packet count {fields['Packet count']!r}") from None
    server = fields["Server"]
    if server.startswith(("n/a", "(null)")) or not server:
        server_name: str | None = None
    else:
        server_name = server
    offset = parse_timespan_ms(fields["Offset"]) if "Offset" in fields else None
    leap = fields.get("Leap")
    stratum = int(fields["Stratum"]) if fields.get("Stratum", "").isdigit() else None
    synchronized = (
        packets > 0 and offset is not None and leap != "not-synchronized" and stratum != 0
    )
    return TimeObserved(
        source="timesyncd", synchronized=synchronized, offset_ms=offset, server=server_name,
        packet_count=packets, stratum=stratum, leap=leap,
    )


def parse_chrony_tracking_csv(text: str) -> TimeObserved:
    """`chronyc -c tracking`: one CSV line of 14 fields.

    0 ref id (hex), 1 ref name/IP, 2 stratum, 3 ref time (epoch s), 4 system time
    (s; the correction chronyd still applies, positive = clock slow), 5 last offset,
    6 RMS offset, 7 frequency ppm, 8 residual freq, 9 skew, 10 root delay,
    11 root dispersion, 12 update interval, 13 leap status ("Normal",
    "Insert second", "Delete second", "Not synchronised").
    """
    rows = [r for r in csv.reader(text.strip().splitlines()) if r]
    if len(rows) != 1 or len(rows[0]) < 14:
        raise ClockParseError("chronyc -c tracking: expected one CSV line of 14 fields")
    row = rows[0]
    try:
        stratum = int(row[2])
        correction_s = float(row[4])
    except ValueError:
        raise ClockParseError(f"chronyc -c tracking: bad stratum/system time in {row!r}") from None
    if not math.isfinite(correction_s):
        raise ClockParseError(f"chronyc -c tracking: system time {row[4]!r} is not finite")
    leap = row[13]
    synchronized = leap != "Not synchronised" and row[0] != "00000000" and stratum > 0
    return TimeObserved(
        source="chrony", synchronized=synchronized,
        # an unsynchronised chronyd reports 0.0: that is "never measured", not "exact"
        offset_ms=None if not synchronized and correction_s == 0.0 else correction_s * 1000.0,
        server=row[1] or None, stratum=stratum, leap=leap,
    )


def offset_from_http_date(date_header: str, local_now: datetime) -> float:
    """Offset (reference - local, ms) from a server's HTTP `Date` header.

    `local_now` is the local time when the response arrived (aware datetime).
    The header has 1 s resolution; the result is centred in that second, so it
    is accurate to +-HTTP_DATE_TOLERANCE_MS plus half the round trip. Compare it
    with a limit widened by that tolerance, never with the bare limit.
    Raises ValueError for a header that is not an HTTP date.
    """
    if local_now.tzinfo is None:
        raise ValueError("local_now must be timezone-aware (UTC)")
    try:
        server = parsedate_to_datetime(date_header.strip())
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{date_header[:64]!r} is not an HTTP date") from None
    if server.tzinfo is None:  # '-0000' means UTC of unknown origin; HTTP dates are GMT
        server = server.replace(tzinfo=UTC)
    return http_date_offset_ms(server, local_now)


def http_date_offset_ms(server: datetime, local_now: datetime) -> float:
    """Offset (reference - local, ms) from a parsed HTTP `Date`, centred in its second."""
    centred = server + timedelta(milliseconds=HTTP_DATE_TOLERANCE_MS)
    return (centred - local_now).total_seconds() * 1000.0


class ClockController(ControllerBase[TimeSpec, TimeObserved]):
    spec_type = TimeSpec
    kind = "time"
    # The clock guard of every other kind judges this reading: it is taken first.
    phase = Phase.guard_inputs

    def observe(self, host: Host, spec: TimeSpec) -> TimeObserved:
        problems: list[str] = []
        for argv, parse in ((TIMEDATECTL, parse_timesync_status),
                            (CHRONYC, parse_chrony_tracking_csv)):
            try:
                done = host.run(argv, timeout=COMMAND_TIMEOUT)
            except HostError as e:
                problems.append(f"{' '.join(argv)}: {e}")
                continue
            if done.exit_code != 0:
                why = (done.stderr or done.stdout).strip().splitlines()
                problems.append(
                    f"{' '.join(argv)} exited {done.exit_code}: {why[-1] if why else ''}".strip()
                )
                continue
            try:
                observed = parse(done.stdout)
            except ClockParseError as e:
                problems.append(f"{' '.join(argv)}: {e}")
                continue
            return observed.model_copy(update={"problems": problems})
        return TimeObserved(source=None, synchronized=False, offset_ms=None, problems=problems)

    def diff(self, spec: TimeSpec, observed: TimeObserved) -> list[Drift]:
        drifts: list[Drift] = []
        if observed.source is None:
            drifts.append(Drift(
                field="source", reason="NoTimeSource", expected="timesyncd or chrony",
                actual="none",
                message="no time daemon answered (" + "; ".join(observed.problems)
                + "); enable services.timesyncd or services.chrony",
                remedy=Remedy.alert,
            ))
            return drifts
        if spec.require_synchronized and not observed.synchronized:
            drifts.append(Drift(
                field="synchronized", reason="ClockUnsynchronized", expected="true",
                actual="false",
                message=f"{observed.source} is not synchronized (server "
                f"{observed.server or 'none'}, leap {observed.leap or 'unknown'}); check that "
                "an NTP server is reachable",
                remedy=Remedy.alert,
            ))
        # The agent fills an unset limit from ntpMaxSkewMs (TimeSpec.with_config_defaults);
        # only a spec used outside the agent can come without one.
        limit = spec.max_skew_ms
        if observed.offset_ms is not None and limit is not None and abs(observed.offset_ms) > limit:
            direction = "behind" if observed.offset_ms > 0 else "ahead of"
            drifts.append(Drift(
                field="max_skew_ms", reason="ClockSkewed", expected=f"<= {limit} ms",
                actual=f"{observed.offset_ms:+.3f} ms",
                message=f"clock is {abs(observed.offset_ms):.0f} ms "
                f"{direction} {observed.server or 'its reference'}; "
                "disruptive actions are skipped while it exceeds ntpMaxSkewMs",
                remedy=Remedy.alert,
            ))
        return drifts

    def plan(self, spec: TimeSpec, observed: TimeObserved, drifts: list[Drift]) -> list[Action]:
        return []  # alert-only: setting the clock is the time daemon's job

    def facts(self, spec: TimeSpec, observed: TimeObserved) -> dict[str, Any]:
        offset = None if observed.offset_ms is None else round(observed.offset_ms, 3)
        return {"ntp_offset_ms": offset, "time_source": observed.source}
