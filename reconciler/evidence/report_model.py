"""The compliance report's data: what `reconciler.evidence.report` computes
from verified evidence and every renderer (HTML, Markdown, CSV, JSON, OSCAL)
reads. Times are UTC datetimes; every item names its evidence bundles."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from specs.orders import format_rfc3339


class State(StrEnum):
    compliant = "compliant"
    drifted = "drifted"
    unknown = "unknown"


def state_of(outcome: str) -> State:
    """success is compliant; every other resource outcome leaves drift in place."""
    return State.compliant if outcome == "success" else State.drifted


@dataclass(frozen=True)
class Observation:
    """One verified bundle, reduced to what the report uses."""

    bundle_id: str
    sequence: int
    check: str
    outcome: str
    started: datetime  # timestamp_start: when the reconcile began observing
    at: datetime  # timestamp_end: when the outcome was known
    hipaa: tuple[str, ...]
    actions: tuple[dict[str, Any], ...]
    refusals: tuple[dict[str, Any], ...]  # guard verdicts that held an action
    error: str | None
    order_id: str | None


@dataclass(frozen=True)
class Episode:
    check: str
    start: datetime
    end: datetime | None  # None: still drifted at the end of the period
    opened_by: str
    closed_by: str | None
    outcomes: tuple[str, ...]
    resolution: str  # remediated | resolved | open


@dataclass(frozen=True)
class Remediation:
    check: str
    at: datetime
    bundle_id: str
    outcome: str
    actions: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Deferral:
    check: str
    at: datetime
    bundle_id: str
    reason: str
    message: str


@dataclass
class Alert:
    """Consecutive alert bundles of one check with the same reason and message."""

    check: str
    reason: str
    message: str
    remediable: bool  # False: no action exists; a person has to act
    first: datetime
    last: datetime
    bundle_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Silence:
    check: str
    start: datetime
    end: datetime
    after_bundle: str | None


@dataclass
class CheckReport:
    check: str
    hipaa: list[str]
    bundles: int
    seconds: dict[str, float]
    last_outcome: str | None
    last_bundle: str | None
    episodes: list[Episode] = field(default_factory=list)
    remediations: list[Remediation] = field(default_factory=list)
    deferrals: list[Deferral] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    silences: list[Silence] = field(default_factory=list)
    end_state: State = State.unknown

    def percent(self, state: State) -> float:
        total = sum(self.seconds.values())
        return 100.0 * self.seconds[state.value] / total if total else 0.0


@dataclass
class CitationReport:
    citation: str
    title: str
    controls: list[str]
    checks: list[str]
    seconds: dict[str, float]
    episodes: int
    end_state: State

    def percent(self, state: State) -> float:
        total = sum(self.seconds.values())
        return 100.0 * self.seconds[state.value] / total if total else 0.0


@dataclass
class Coverage:
    chain_ok: bool
    chain_checked: int
    chain_problems: list[str]
    chain_notes: list[str]
    bundles_in_period: int
    rejected: list[dict[str, str]]  # bundle files that failed verification
    pruned_in_period: list[str]
    silences: list[Silence]


@dataclass
class ComplianceReport:
    site_id: str
    host_id: str
    since: datetime
    until: datetime
    generated_at: datetime
    keyids: list[str]
    checks: list[CheckReport]
    citations: list[CitationReport]
    coverage: Coverage
    events: list[Observation]
    crosswalk_source: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=_json_default))  # type: ignore[no-any-return]


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return format_rfc3339(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
