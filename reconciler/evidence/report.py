"""Compliance over a period, from signed evidence only.

`load_observations` reads the bundles the index lists for the period (plus,
per check, the last one before it, which tells the state the period starts
in), verifies every envelope's signature (`reconciler.trust.dsse`) and drops
what does not verify; `summarize` is pure and turns the verified
observations into a `ComplianceReport`:

* per check: time compliant / drifted / unknown, drift episodes (start, end,
  the bundles that opened and closed them), remediations (actions run),
  deferrals (which guard held what, and why), alerts (and whether the agent
  could ever fix them), and silences (passes missed);
* per HIPAA citation: the same times over all checks that cite it (drifted
  if any is, unknown if any is and none drifted), with the NIST SP 800-53
  controls the SP 800-66r2 crosswalk maps it to;
* coverage: the whole chain's verification (gaps, bad signatures, pruned
  ranges), bundles that failed verification, and silences.

The state a bundle records holds until the check's next bundle, but not
longer than `max_silence`: the agent writes a snapshot per check at least
every `evidenceSnapshotInterval` (at the first pass after it), so a longer
silence means passes were missed (agent down, loop stuck), and that time is
`unknown`, never counted as compliant. Every item carries bundle ids.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from reconciler.evidence.chain import ChainReport
from reconciler.evidence.report_model import (
    Alert,
    CheckReport,
    CitationReport,
    ComplianceReport,
    Coverage,
    Deferral,
    Episode,
    Observation,
    Remediation,
    Silence,
    State,
    state_of,
)
from reconciler.store.database import Store
from reconciler.store.evidence_index import IndexRow, all_rows
from reconciler.trust.dsse import TrustedKeys, TrustError, loads_strict, verify_envelope
from specs.evidence import EVIDENCE_PAYLOAD_TYPE, PRUNE_CHECK, EvidenceStatement
from specs.orders import format_rfc3339, parse_rfc3339_utc

# Checks whose bundles record events (order verdicts, rejected baselines,
# pruning), not the state of a resource: listed, but no time in compliance.
EVENT_CHECKS = frozenset({"order", "baseline", "prune", PRUNE_CHECK})
CROSSWALK_RESOURCE = "data/hipaa-sp800-53r5.json"


# -- crosswalk -------------------------------------------------------------------
def load_crosswalk() -> dict[str, Any]:
    """The HIPAA -> NIST SP 800-53r5 crosswalk shipped as package data (source named inside)."""
    text = resources.files("reconciler.evidence").joinpath(CROSSWALK_RESOURCE).read_text()
    data: dict[str, Any] = json.loads(text)
    return data


# -- loading ---------------------------------------------------------------------
def rows_for_period(rows: Iterable[IndexRow], since: datetime, until: datetime) -> list[IndexRow]:
    """Live rows created in [since, until], plus each check's last row before `since`."""
    lo, hi = format_rfc3339(since), format_rfc3339(until)
    before: dict[str, IndexRow] = {}
    inside: list[IndexRow] = []
    for r in rows:
        if r.pruned or r.created_at > hi:
            continue
        if r.created_at < lo:
            before[r.check] = r  # rows come in sequence order: the last one wins
        else:
            inside.append(r)
    return sorted([*before.values(), *inside], key=lambda r: r.sequence)


def verify_observation(
    row: IndexRow, data: bytes, keys: TrustedKeys
) -> Observation:
    """The bundle as an Observation once its signature and identity check out.

    Raises TrustError (signature, shape) or ValueError (not the bundle the index names).
    """
    payload = verify_envelope(data, EVIDENCE_PAYLOAD_TYPE, keys)
    try:
        st = EvidenceStatement.model_validate(loads_strict(payload, "statement"))
    except ValidationError as e:
        raise ValueError(f"not an evidence statement: {e.error_count()} problem(s)") from None
    p = st.predicate
    if p.bundle_id != row.bundle_id or p.sequence != row.sequence:
        raise ValueError("the signed bundle is not the one the index names")
    return Observation(
        bundle_id=p.bundle_id,
        sequence=p.sequence,
        check=p.check,
        outcome=p.outcome.value,
        started=parse_rfc3339_utc(p.timestamp_start),
        at=parse_rfc3339_utc(p.timestamp_end),
        hipaa=tuple(p.hipaa_controls),
        actions=tuple(a.model_dump(mode="json") for a in p.action_taken),
        refusals=tuple(v for v in p.guard_verdicts if v.get("allowed") is False),
        error=p.error,
        order_id=p.order_id,
    )


def load_observations(
    rows: Sequence[IndexRow], evidence_dir: Path, keys: TrustedKeys
) -> tuple[list[Observation], list[dict[str, str]]]:
    """Verified observations, and the bundles that could not be used (file, reason)."""
    good: list[Observation] = []
    rejected: list[dict[str, str]] = []
    for row in rows:
        try:
            data = (evidence_dir / row.file_name).read_bytes()
            good.append(verify_observation(row, data, keys))
        except TrustError as e:
            rejected.append({"file": row.file_name, "bundle_id": row.bundle_id,
                             "reason": e.reason, "message": e.message})
        except (OSError, ValueError) as e:
            rejected.append({"file": row.file_name, "bundle_id": row.bundle_id,
                             "reason": "Unreadable", "message": str(e)})
    return good, rejected


# -- summarizing -----------------------------------------------------------------
@dataclass(frozen=True)
class _Span:
    start: datetime
    end: datetime
    state: State


def _spans(obs: Sequence[Observation], since: datetime, until: datetime,
           max_silence: timedelta) -> tuple[list[_Span], list[Silence]]:
    """The check's states over [since, until], and the silences inside it."""
    spans: list[_Span] = []
    silences: list[Silence] = []

    def add(start: datetime, end: datetime, state: State, after: str | None) -> None:
        start, end = max(start, since), min(end, until)
        if end <= start:
            return
        spans.append(_Span(start, end, state))
        if state is State.unknown:
            silences.append(Silence(obs[0].check if obs else "", start, end, after))

    first = obs[0].at if obs else until
    add(since, first, State.unknown, None)
    for i, o in enumerate(obs):
        nxt = obs[i + 1].at if i + 1 < len(obs) else until
        valid_to = min(nxt, o.at + max_silence)
        add(o.at, valid_to, state_of(o.outcome), o.bundle_id)
        add(valid_to, nxt, State.unknown, o.bundle_id)
    return spans, silences


def _seconds(spans: Iterable[_Span]) -> dict[str, float]:
    out = {s.value: 0.0 for s in State}
    for sp in spans:
        out[sp.state.value] += (sp.end - sp.start).total_seconds()
    return out


def _fixed(o: Observation) -> bool:
    return any(a.get("result") == "ok" for a in o.actions)


def _episodes(obs: Sequence[Observation], since: datetime) -> list[Episode]:
    """Runs of drifted bundles, closed by the next compliant one. A compliant
    bundle whose own actions fixed drift found in the same reconcile is an
    episode too (it began when that reconcile observed, and ended with it)."""
    episodes: list[Episode] = []
    open_: list[Observation] = []
    for o in obs:
        if state_of(o.outcome) is State.drifted:
            open_.append(o)
            continue
        if open_:
            ran = _fixed(o) or any(_fixed(d) for d in open_)
            episodes.append(Episode(o.check, open_[0].at, o.at, open_[0].bundle_id, o.bundle_id,
                                    tuple(d.outcome for d in open_),
                                    "remediated" if ran else "resolved"))
            open_ = []
        elif _fixed(o):
            episodes.append(Episode(o.check, o.started, o.at, o.bundle_id, o.bundle_id,
                                    (o.outcome,), "remediated"))
    if open_:
        episodes.append(Episode(open_[0].check, open_[0].at, None, open_[0].bundle_id, None,
                                tuple(d.outcome for d in open_), "open"))
    return [e for e in episodes if e.end is None or e.end >= since]


def _alerts(obs: Sequence[Observation]) -> list[Alert]:
    alerts: list[Alert] = []
    for o in obs:
        if o.outcome != "alert":
            continue
        held = o.refusals[0] if o.refusals else None
        reason = str(held.get("reason")) if held else "NotRemediable"
        message = str(held.get("message", "")) if held else (o.error or "alert-only drift")
        last = alerts[-1] if alerts else None
        if last and (last.check, last.reason, last.message) == (o.check, reason, message):
            last.last = o.at
            last.bundle_ids.append(o.bundle_id)
            continue
        alerts.append(Alert(o.check, reason, message, held is not None, o.at, o.at,
                            [o.bundle_id]))
    return alerts


def _check_report(check: str, obs: list[Observation], since: datetime, until: datetime,
                  max_silence: timedelta) -> tuple[CheckReport, list[_Span]]:
    spans, silences = _spans(obs, since, until, max_silence)
    in_period = [o for o in obs if o.at >= since]
    last = obs[-1] if obs else None
    rep = CheckReport(
        check=check,
        hipaa=sorted({c for o in obs for c in o.hipaa}),
        bundles=len(in_period),
        seconds=_seconds(spans),
        last_outcome=last.outcome if last else None,
        last_bundle=last.bundle_id if last else None,
        episodes=_episodes(obs, since),
        remediations=[Remediation(o.check, o.at, o.bundle_id, o.outcome, o.actions)
                      for o in in_period
                      if any(a.get("result") in ("ok", "failed", "timeout") for a in o.actions)],
        deferrals=[Deferral(o.check, o.at, o.bundle_id,
                            str(o.refusals[0].get("reason")) if o.refusals else "Pending",
                            str(o.refusals[0].get("message", "")) if o.refusals
                            else (o.error or "remediation started; the next pass judges it"))
                   for o in in_period if o.outcome == "deferred"],
        alerts=_alerts(in_period),
        silences=silences,
        end_state=spans[-1].state if spans else State.unknown,
    )
    return rep, spans


def _combine(per_check: Sequence[Sequence[_Span]]) -> list[_Span]:
    """Spans of several checks at once: drifted if any is, unknown if any is, else compliant.

    One sweep over the sorted breakpoints with a cursor per check (each check's
    spans are sorted and do not overlap), so a month of evidence stays cheap.
    """
    points = sorted({t for spans in per_check for sp in spans for t in (sp.start, sp.end)})
    cursors = [0] * len(per_check)
    out: list[_Span] = []
    for a, b in itertools.pairwise(points):
        states = set()
        for i, spans in enumerate(per_check):
            while cursors[i] < len(spans) and spans[cursors[i]].end <= a:
                cursors[i] += 1
            cur = spans[cursors[i]] if cursors[i] < len(spans) else None
            states.add(cur.state if cur is not None and cur.start <= a else State.unknown)
        state = (State.drifted if State.drifted in states else
                 State.unknown if State.unknown in states else State.compliant)
        if out and out[-1].state is state and out[-1].end == a:
            out[-1] = _Span(out[-1].start, b, state)
        else:
            out.append(_Span(a, b, state))
    return out


def summarize(
    observations: Sequence[Observation],
    *,
    site_id: str,
    host_id: str,
    since: datetime,
    until: datetime,
    generated_at: datetime,
    max_silence: timedelta,
    chain: ChainReport,
    rejected: list[dict[str, str]],
    pruned_in_period: list[str],
    keyids: list[str],
    crosswalk: dict[str, Any],
) -> ComplianceReport:
    """The report over [since, min(until, generated_at)] (pure: no I/O)."""
    until = min(until, generated_at)
    by_check: dict[str, list[Observation]] = {}
    events: list[Observation] = []
    for o in sorted(observations, key=lambda o: o.sequence):
        if o.check in EVENT_CHECKS:
            if o.at >= since:
                events.append(o)
        else:
            by_check.setdefault(o.check, []).append(o)
    checks: list[CheckReport] = []
    spans_of: dict[str, list[_Span]] = {}
    for check in sorted(by_check):
        rep, spans = _check_report(check, by_check[check], since, until, max_silence)
        checks.append(rep)
        spans_of[check] = spans
    citations: list[CitationReport] = []
    mapped = crosswalk.get("citations", {})
    for citation in sorted({c for rep in checks for c in rep.hipaa}):
        names = [rep.check for rep in checks if citation in rep.hipaa]
        combined = _combine([spans_of[n] for n in names])
        entry = mapped.get(citation, {})
        citations.append(CitationReport(
            citation=citation,
            title=str(entry.get("title", "")),
            controls=list(entry.get("controls", [])),
            checks=names,
            seconds=_seconds(combined),
            episodes=sum(len(rep.episodes) for rep in checks if rep.check in names),
            end_state=combined[-1].state if combined else State.unknown,
        ))
    coverage = Coverage(
        chain_ok=chain.ok,
        chain_checked=chain.checked,
        chain_problems=[str(p) for p in chain.problems],
        chain_notes=list(chain.notes),
        bundles_in_period=sum(rep.bundles for rep in checks) + len(events),
        rejected=rejected,
        pruned_in_period=pruned_in_period,
        silences=[s for rep in checks for s in rep.silences],
    )
    return ComplianceReport(
        site_id=site_id, host_id=host_id, since=since, until=until,
        generated_at=generated_at, keyids=keyids, checks=checks, citations=citations,
        coverage=coverage, events=events,
        crosswalk_source={k: str(v) for k, v in crosswalk.get("source", {}).items()},
    )


def build_report(
    store: Store,
    evidence_dir: Path,
    keys: TrustedKeys,
    *,
    site_id: str,
    host_id: str,
    since: datetime,
    until: datetime,
    now: datetime,
    max_silence: timedelta,
) -> ComplianceReport:
    """Read, verify and summarize the evidence of [since, until] (read-only)."""
    from reconciler.evidence.checkpoint import origin_for
    from reconciler.evidence.logverify import verify_local

    with store.begin() as conn:
        rows = all_rows(conn)
    lo, hi = format_rfc3339(since), format_rfc3339(until)
    observations, rejected = load_observations(rows_for_period(rows, since, until),
                                               evidence_dir, keys)
    return summarize(
        observations, site_id=site_id, host_id=host_id, since=since, until=until,
        generated_at=now, max_silence=max_silence,
        chain=verify_local(store, evidence_dir, keys, origin_for(site_id, host_id)),
        rejected=rejected,
        pruned_in_period=[r.bundle_id for r in rows if r.pruned and lo <= r.created_at <= hi],
        keyids=sorted(keys.by_keyid), crosswalk=load_crosswalk(),
    )
