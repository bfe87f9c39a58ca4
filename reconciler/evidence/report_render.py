"""A `ComplianceReport` as JSON, CSV or Markdown (HTML: report_html, OSCAL: oscal).

CSV is one flat table an auditor can filter in a spreadsheet: a `section`
column (check, citation, episode, remediation, deferral, alert, silence,
event, chain-problem, rejected-bundle) and the same columns for all of them;
`bundle_ids` is space-separated.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import datetime

from reconciler.evidence.report_model import CheckReport, ComplianceReport, State

CSV_COLUMNS = ("section", "check", "hipaa", "start", "end", "state_or_outcome",
               "percent_compliant", "reason", "detail", "bundle_ids")


def render_json(report: ComplianceReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"


def ts(value: datetime | None) -> str:
    """Seconds precision, UTC: what a reader needs (bundles keep the microseconds)."""
    return "" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    parts.append(f"{mins}m")
    return " ".join(parts)


def _rows(report: ComplianceReport) -> Iterator[dict[str, str]]:
    for c in report.checks:
        yield {"section": "check", "check": c.check, "hipaa": " ".join(c.hipaa),
               "start": ts(report.since), "end": ts(report.until),
               "state_or_outcome": c.end_state.value,
               "percent_compliant": f"{c.percent(State.compliant):.2f}",
               "detail": f"{c.bundles} bundles; drifted {c.percent(State.drifted):.2f}%; "
                         f"no evidence {c.percent(State.unknown):.2f}%",
               "bundle_ids": c.last_bundle or ""}
        for e in c.episodes:
            yield {"section": "episode", "check": c.check, "start": ts(e.start),
                   "end": ts(e.end), "state_or_outcome": e.resolution,
                   "detail": " ".join(e.outcomes),
                   "bundle_ids": " ".join(b for b in (e.opened_by, e.closed_by) if b)}
        for r in c.remediations:
            yield {"section": "remediation", "check": c.check, "start": ts(r.at),
                   "state_or_outcome": r.outcome,
                   "detail": "; ".join(f"{a.get('action')}: {a.get('result')}"
                                       for a in r.actions),
                   "bundle_ids": r.bundle_id}
        for d in c.deferrals:
            yield {"section": "deferral", "check": c.check, "start": ts(d.at),
                   "state_or_outcome": "deferred", "reason": d.reason, "detail": d.message,
                   "bundle_ids": d.bundle_id}
        for a in c.alerts:
            yield {"section": "alert", "check": c.check, "start": ts(a.first), "end": ts(a.last),
                   "state_or_outcome": "remediable" if a.remediable else "not-remediable",
                   "reason": a.reason, "detail": a.message, "bundle_ids": " ".join(a.bundle_ids)}
        for s in c.silences:
            yield {"section": "silence", "check": c.check, "start": ts(s.start), "end": ts(s.end),
                   "state_or_outcome": "unknown", "detail": "no evidence (passes missed)",
                   "bundle_ids": s.after_bundle or ""}
    for cit in report.citations:
        yield {"section": "citation", "hipaa": cit.citation, "check": " ".join(cit.checks),
               "start": ts(report.since), "end": ts(report.until),
               "state_or_outcome": cit.end_state.value,
               "percent_compliant": f"{cit.percent(State.compliant):.2f}",
               "reason": cit.title, "detail": "NIST SP 800-53r5: " + " ".join(cit.controls)}
    for ev in report.events:
        yield {"section": "event", "check": ev.check, "start": ts(ev.at),
               "state_or_outcome": ev.outcome, "detail": ev.error or "",
               "reason": ev.order_id or "", "bundle_ids": ev.bundle_id}
    for p in report.coverage.chain_problems:
        yield {"section": "chain-problem", "detail": p}
    for bad in report.coverage.rejected:
        yield {"section": "rejected-bundle", "reason": bad["reason"],
               "detail": f"{bad['file']}: {bad['message']}", "bundle_ids": bad["bundle_id"]}


def render_csv(report: ComplianceReport) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in _rows(report):
        w.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
    return out.getvalue()


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: ComplianceReport) -> str:
    cov = report.coverage
    lines = [
        f"# Compliance report: {report.host_id} ({report.site_id})", "",
        f"Period {ts(report.since)} to {ts(report.until)}; generated {ts(report.generated_at)} "
        f"from signed evidence (key {', '.join(k[:16] for k in report.keyids)}).", "",
        f"Evidence chain: **{'intact' if cov.chain_ok else 'PROBLEMS FOUND'}** "
        f"({cov.chain_checked} bundles verified, {cov.bundles_in_period} in the period, "
        f"{len(cov.rejected)} unusable).", "",
        "## By HIPAA Security Rule citation", "",
        "| Citation | Safeguard | Checks | Compliant | Drifted | No evidence | End | "
        "NIST SP 800-53r5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cit in report.citations:
        lines.append(
            f"| {cit.citation} | {_md(cit.title)} | {', '.join(cit.checks)} | "
            f"{cit.percent(State.compliant):.1f}% | {cit.percent(State.drifted):.1f}% | "
            f"{cit.percent(State.unknown):.1f}% | {cit.end_state.value} | "
            f"{', '.join(c.upper() for c in cit.controls)} |")
    lines += ["", "## By check", "",
              "| Check | Compliant | Drifted | No evidence | Episodes | Bundles | End |",
              "|---|---|---|---|---|---|---|"]
    for c in report.checks:
        lines.append(
            f"| {c.check} | {c.percent(State.compliant):.1f}% | {c.percent(State.drifted):.1f}% "
            f"| {c.percent(State.unknown):.1f}% | {len(c.episodes)} | {c.bundles} | "
            f"{c.end_state.value} |")
    for c in report.checks:
        items = _check_items(c)
        if items:
            lines += ["", f"### {c.check}", "", *items]
    lines += ["", "## Evidence coverage", ""]
    lines += [f"- chain problem: {_md(p)}" for p in cov.chain_problems]
    lines += [f"- note: {_md(n)}" for n in cov.chain_notes]
    lines += [f"- unusable bundle {r['bundle_id']} ({r['reason']}): {_md(r['message'])}"
              for r in cov.rejected]
    lines += [f"- no evidence for {s.check} from {ts(s.start)} to {ts(s.end)} "
              f"({duration((s.end - s.start).total_seconds())})" for s in cov.silences]
    if report.events:
        lines += ["", "## Events (orders, baselines, pruning)", ""]
        lines += [f"- {ts(e.at)} {e.check} {e.outcome}: {_md(e.error or '')} "
                  f"(bundle {e.bundle_id})" for e in report.events]
    src = report.crosswalk_source
    lines += ["", f"Crosswalk: {src.get('title', '')} ({src.get('url', '')}).", ""]
    return "\n".join(lines)


def _check_items(c: CheckReport) -> list[str]:
    out = []
    for e in c.episodes:
        out.append(f"- drift {ts(e.start)} to {ts(e.end) or 'still open'} ({e.resolution}): "
                   f"opened by bundle {e.opened_by}"
                   + (f", closed by {e.closed_by}" if e.closed_by else ""))
    for r in c.remediations:
        acts = "; ".join(f"{a.get('action')} {a.get('result')}" for a in r.actions)
        out.append(f"- remediated {ts(r.at)}: {_md(acts)} (bundle {r.bundle_id})")
    for d in c.deferrals:
        out.append(f"- deferred {ts(d.at)}: {d.reason}: {_md(d.message)} (bundle {d.bundle_id})")
    for a in c.alerts:
        kind = "held by a guard" if a.remediable else "not remediable by the agent"
        out.append(f"- alert ({kind}) {ts(a.first)} to {ts(a.last)}: {a.reason}: "
                   f"{_md(a.message)} ({len(a.bundle_ids)} bundles, first {a.bundle_ids[0]})")
    return out
