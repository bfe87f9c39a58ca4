"""Rendering for operators: the pass/plan report and the config options
(`status` and `describe` are in status_views, which imports no models)."""

from __future__ import annotations

from typing import Any

from reconciler.runtime.agent import PassReport
from reconciler.runtime.reconcile import ReconcileResult
from specs.config import AgentConfig


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


def option_rows() -> list[dict[str, str]]:
    """Every config option: name (as written in the JSON), type, default, meaning."""
    out = []
    for name, f in AgentConfig.model_fields.items():
        ann = str(f.annotation).replace("typing.", "").replace("pathlib.", "")
        ann = ann.replace("<class '", "").replace("'>", "")
        default = "required" if f.is_required() else (
            "hostname" if f.default_factory is not None and name == "host_id" else
            repr(f.get_default(call_default_factory=True)))
        out.append({"option": f.alias or name, "type": ann, "default": default,
                    "description": f.description or ""})
    return out


def render_options() -> str:
    rows = [["OPTION", "TYPE", "DEFAULT", "DESCRIPTION"]]
    rows += [[r["option"], r["type"], r["default"], r["description"]] for r in option_rows()]
    return _table(rows)
