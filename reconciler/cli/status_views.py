"""`status` and `describe` for people, from the JSON documents the daemon's
status socket serves (and the store fallback produces in the same shape).

Standard library only (see reconciler.cli.common). Nothing is cut silently:
`text` wraps long messages to the terminal, `wide` prints them on one line.
"""

from __future__ import annotations

import json
import os
import textwrap
from datetime import datetime
from typing import Any

from reconciler.cli.common import paint

STATUS_COLOUR = {"True": "green", "False": "red", "Unknown": "yellow"}
SUMMARY_COLOUR = {"Current": "green", "InProgress": "yellow", "Failed": "red"}
MIN_MESSAGE_WIDTH = 30


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


def terminal_width(default: int = 100) -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:  # not a terminal: a width for pipes and files
        return int(os.environ.get("COLUMNS", default))


def table(rows: list[list[str]], *, colour: bool = False, colour_cols: tuple[int, ...] = (),
          wrap_last: int | None = None, indent: str = "") -> list[str]:
    """Aligned columns; `colour_cols` by value (True/False/Unknown); the last column
    wrapped to `wrap_last` characters when given (continuation lines aligned)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lead = len(indent) + sum(w + 3 for w in widths)
    out = []
    for n, r in enumerate(rows):
        cells = []
        for i, cell in enumerate(r[:-1]):
            padded = cell.ljust(widths[i])
            if n and i in colour_cols:
                padded = paint(cell, STATUS_COLOUR.get(cell, "bold"), colour) + \
                    " " * (widths[i] - len(cell))
            cells.append(padded)
        last = r[-1]
        chunks = [last]
        if wrap_last is not None and n:
            chunks = textwrap.wrap(last, max(MIN_MESSAGE_WIDTH, wrap_last - lead)) or [""]
        out.append((indent + "   ".join([*cells, chunks[0]])).rstrip())
        out.extend(" " * lead + c for c in chunks[1:])
    return out


def _cond(resource: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in resource.get("conditions") or [] if c.get("type") == type_), None)


def render_status(doc: dict[str, Any], now: datetime, *, wide: bool = False,
                  colour: bool = False) -> str:
    header = ["KIND", "READY", "DRIFTED", "REASON", "LAST TRANSITION", "LAST PASS", "OUTCOME"]
    if wide:
        header += ["GENERATION", "MESSAGE"]
    rows = [header]
    for r in doc.get("resources") or []:
        ready, drifted = _cond(r, "Ready"), _cond(r, "Drifted")
        reason = ready["reason"] if ready else (drifted["reason"] if drifted else "-")
        row = [
            r["kind"],
            ready["status"] if ready else "Unknown",
            drifted["status"] if drifted else "Unknown",
            reason,
            age(ready.get("last_transition_time"), now) if ready else "-",
            age(r.get("last_pass_at"), now),
            r.get("last_outcome") or "-",
        ]
        if wide:
            row += [str(r.get("generation") or "-"), (ready or drifted or {}).get("message") or ""]
        rows.append(row)
    summary = doc.get("summary", "Unknown")
    host = paint(f"HOST {summary}", SUMMARY_COLOUR.get(summary, "bold"), colour)
    tail = _tail(doc, now)
    if len(rows) == 1:
        return f"{host}: no resources reconciled yet ({tail})"
    # the last column is OUTCOME (text) or MESSAGE (wide, never wrapped): a dummy
    # column keeps `table`'s "last column" rule from touching OUTCOME's alignment
    lines = table([[*row, ""] for row in rows] if not wide else rows, colour=colour,
                  colour_cols=(1, 2))
    return "\n".join(lines) + f"\n\n{host}  ({tail})"


def _tail(doc: dict[str, Any], now: datetime) -> str:
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
    watches = doc.get("watches")
    if watches and isinstance(watches.get("condition"), dict):
        cond = watches["condition"]
        tail += ("; watches: live" if cond.get("status") == "True"
                 else f"; watches: {cond.get('reason')} {cond.get('message', '')}".rstrip())
    if doc.get("loop_healthy") is False:
        tail += "; daemon loop UNHEALTHY (see journalctl -u compliance-agent)"
    return tail


def render_describe(status: dict[str, Any], history: list[dict[str, Any]] | None,
                    now: datetime, *, wide: bool = False, colour: bool = False) -> str:
    last_pass = status.get("last_pass_at")
    out = [f"Kind:        {status['kind']}",
           f"Generation:  {status.get('generation')}",
           f"Last pass:   {last_pass or '-'} ({age(last_pass, now)} ago)",
           f"Outcome:     {status.get('last_outcome') or '-'}",
           "Conditions:"]
    rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
    for c in status.get("conditions") or []:
        rows.append([c["type"], c["status"], c["reason"], age(c.get("last_transition_time"), now),
                     c.get("message") or ""])
    out.extend(table(rows, colour=colour, colour_cols=(1,), indent="  ",
                     wrap_last=None if wide else terminal_width()))
    out.append("History (newest first):")
    if history is None:
        out.append("  (needs read access to the state database: run as root or as the "
                   "agent's user, e.g. sudo -u compliance-agent compliance-agent describe ...)")
    elif history:
        hrows = [["AT", "TYPE", "STATUS", "REASON", "MESSAGE" if wide else ""]]
        hrows += [[str(h["at"]), h["type"], h["status"], h["reason"],
                   (h.get("message") or "") if wide else ""] for h in history]
        out.extend(table(hrows, colour=colour, colour_cols=(2,), indent="  "))
    else:
        out.append("  (none)")
    out.append("Last actions:")
    for a in status.get("last_actions") or []:
        exit_code = a.get("exit_code")
        out.append(f"  {a['step']}. {a['action']}: {' '.join(a.get('command') or [])} -> "
                   f"{a['result']}" + (f" (exit {exit_code})" if exit_code is not None else "")
                   + (f" {a['detail']}" if a.get("detail") else ""))
    if not status.get("last_actions"):
        out.append("  (none)")
    out.append("Last observation:")
    observed = status.get("observed")
    body = json.dumps(observed, indent=2, default=str) if observed else "(none)"
    out.extend("  " + line for line in body.splitlines())
    return "\n".join(out)
