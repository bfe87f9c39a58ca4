"""Rendering for operators: the pass/plan report, the status table, describe."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.runtime.agent import PassReport
from reconciler.runtime.reconcile import ReconcileResult
from specs.config import AgentConfig
from specs.status import ConditionType, ResourceStatus


def age(since: datetime | str | None, now: datetime) -> str:
    """kubectl-style age: 45s, 12m, 3h, 4d."""
    if since is None:
        return "-"
    if isinstance(since, str):
        since = datetime.fromisoformat(since)
    secs = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows
    )


# -- reconcile --once -------------------------------------------------------------
def render_pass(report: PassReport, as_json: bool) -> Any:
    if as_json:
        return {
            "summary": report.summary.value,
            "error": report.error,
            "wall_seconds": round(report.wall_seconds, 4),
            "cpu_seconds": round(report.cpu_seconds, 4),
            "resources": [_result_json(r) for r in report.results],
        }
    lines: list[str] = []
    dry = any(r.dry_run for r in report.results)
    if report.error:
        lines.append(f"error: {report.error}")
    for r in report.results:
        lines.extend(_result_lines(r))
    verb = "would change" if dry else "changed"
    n_actions = sum(1 for r in report.results for a in r.results
                    if any(rec.result in ("ok", "failed", "dry_run") for rec in a.records))
    lines.append("")
    lines.append(
        f"{'Plan' if dry else 'Pass'}: {len(report.results)} resources, "
        f"{sum(1 for r in report.results if r.drifts)} drifted, {n_actions} action(s) {verb}; "
        f"host {report.summary.value} ({report.wall_seconds * 1000:.0f} ms)"
    )
    return "\n".join(lines)


def _result_lines(r: ReconcileResult) -> list[str]:
    mark = "ok" if r.ready else r.outcome.value.upper()
    out = [f"[{mark}] {r.kind} (generation {r.generation[:12]})"]
    if r.error:
        out.append(f"    error: {r.error}")
    for d in r.drifts:
        tag = " (alert only)" if d.remedy.value == "alert" else ""
        out.append(f"    ~ {d.reason}: {d.field}: expected {d.expected}, found {d.actual}{tag}")
    for action, verdicts in zip(r.results, r.verdicts, strict=False):
        held = next((v for v in verdicts if not v.allowed), None)
        for rec in action.records:
            cmd = " ".join(rec.command)
            if rec.result == "dry_run" and held is not None and held.reason != "DryRun":
                label = f"would be held by {held.guard} ({held.reason})"
            elif rec.result == "dry_run":
                label = "would run"
            elif held is not None:
                label = f"held by {held.guard} ({held.reason})"
            else:
                label = f"ran -> {rec.result}"
                if rec.exit_code not in (None, 0):
                    label += f" (exit {rec.exit_code})"
            out.append(f"    > {rec.action}: {cmd}  [{label}]")
        if held is not None and held.reason != "DryRun":
            out.append(f"      {held.message}")
        if held is not None and held.reason == "DryRun":
            out.append("      " + ("disruptive; " if action.action.disruptive else "")
                       + "guards: " + ", ".join(f"{v.guard}={v.reason}" for v in verdicts[:-1]))
    if r.drifts and not r.remaining and not r.dry_run:
        out.append("    = remediated")
    return out


def _result_json(r: ReconcileResult) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "generation": r.generation,
        "outcome": r.outcome.value,
        "ready": r.ready,
        "error": r.error,
        "drifts": [d.model_dump(mode="json") for d in r.drifts],
        "remaining": [d.model_dump(mode="json") for d in r.remaining],
        "actions": [
            {
                "action": a.action.model_dump(mode="json"),
                "disruptive": a.action.disruptive,
                "records": [rec.model_dump(mode="json") for rec in a.records],
                "verdicts": [v.model_dump(mode="json") for v in vs],
            }
            for a, vs in zip(r.results, r.verdicts, strict=False)
        ],
        "facts": r.facts,
    }


# -- status -----------------------------------------------------------------------
def render_status_table(doc: dict[str, Any], now: datetime) -> str:
    rows = [["KIND", "READY", "DRIFTED", "REASON", "LAST TRANSITION", "LAST PASS", "OUTCOME"]]
    for raw in doc["resources"]:
        s = ResourceStatus.model_validate(raw)
        ready = s.condition(ConditionType.Ready)
        drifted = s.condition(ConditionType.Drifted)
        reason = ready.reason if ready else (drifted.reason if drifted else "-")
        rows.append([
            s.kind,
            ready.status.value if ready else "Unknown",
            drifted.status.value if drifted else "Unknown",
            reason,
            age(ready.last_transition_time, now) if ready else "-",
            age(s.last_pass_at, now),
            s.last_outcome.value if s.last_outcome else "-",
        ])
    lp = doc.get("last_pass")
    tail = (f"last pass {age(lp['finished_at'], now)} ago, {lp['duration_sec'] * 1000:.0f} ms"
            if lp else "no pass recorded yet")
    queue = doc.get("evidence_queue")
    if queue:
        tail += (f"; evidence: {queue['depth']} queued, {queue['dead']} dead letter(s), "
                 f"{queue['delivered']} delivered")
    wakeups = doc.get("order_wakeups")
    if wakeups:
        tail += f"; order wake-ups: {wakeups.get('state')}"
    if len(rows) == 1:
        return f"HOST {doc['summary']}: no resources reconciled yet ({tail})"
    return _table(rows) + f"\n\nHOST {doc['summary']}  ({tail})"


def render_describe(status: ResourceStatus, history: list[dict[str, Any]], now: datetime) -> str:
    out = [f"Kind:        {status.kind}",
           f"Generation:  {status.generation}",
           f"Last pass:   {status.last_pass_at.isoformat() if status.last_pass_at else '-'} "
           f"({age(status.last_pass_at, now)} ago)",
           f"Outcome:     {status.last_outcome.value if status.last_outcome else '-'}",
           "Conditions:"]
    rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
    for c in status.conditions:
        rows.append([c.type.value, c.status.value, c.reason, age(c.last_transition_time, now),
                     c.message[:100]])
    out.extend("  " + line for line in _table(rows).splitlines())
    out.append("History (newest first):")
    if history:
        hrows = [["AT", "TYPE", "STATUS", "REASON"]]
        hrows += [[h["at"], h["type"], h["status"], h["reason"]] for h in history]
        out.extend("  " + line for line in _table(hrows).splitlines())
    else:
        out.append("  (none)")
    out.append("Last actions:")
    if status.last_actions:
        for a in status.last_actions:
            out.append(f"  {a.step}. {a.action}: {' '.join(a.command)} -> {a.result}"
                       + (f" (exit {a.exit_code})" if a.exit_code is not None else "")
                       + (f" {a.detail}" if a.detail else ""))
    else:
        out.append("  (none)")
    out.append("Last observation:")
    import json

    body = json.dumps(status.observed, indent=2, default=str) if status.observed else "(none)"
    out.extend("  " + line for line in body.splitlines())
    return "\n".join(out)


def render_options() -> str:
    rows = [["OPTION", "TYPE", "DEFAULT", "DESCRIPTION"]]
    for name, f in AgentConfig.model_fields.items():
        ann = str(f.annotation).replace("typing.", "").replace("pathlib.", "")
        ann = ann.replace("<class '", "").replace("'>", "")
        default = "required" if f.is_required() else (
            "hostname" if f.default_factory is not None and name == "host_id" else
            repr(f.get_default(call_default_factory=True)))
        rows.append([f.alias or name, ann, default, f.description or ""])
    return _table(rows)
