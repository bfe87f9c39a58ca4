"""A `ComplianceReport` as one self-contained, printable HTML file.

No scripts, fonts, images or stylesheets from anywhere: the CSS is inline and
the bars are CSS widths, so the file opens the same offline, in an email
attachment or in a browser's print-to-PDF years later. Every value that
comes from evidence is HTML-escaped.
"""

from __future__ import annotations

from html import escape

from reconciler.evidence.report_model import CheckReport, ComplianceReport, State
from reconciler.evidence.report_render import duration, ts

CSS = """
:root { --ok: #1b7f3b; --bad: #b42318; --unk: #8a8f98; --ink: #1d2330; --line: #d9dde3; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); margin: 2rem auto; max-width: 72rem; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 2px solid var(--ink); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .4rem; }
.meta { color: #4a5261; margin: 0 0 1rem; }
.cards { display: flex; gap: 1rem; flex-wrap: wrap; margin: 1rem 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .7rem 1rem; min-width: 11rem; }
.card b { display: block; font-size: 1.5rem; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .unk { color: var(--unk); }
table { border-collapse: collapse; width: 100%; margin: .4rem 0 1rem; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; }
td.num { text-align: right; white-space: nowrap; }
.bar { display: flex; height: .8rem; width: 12rem; border-radius: 3px; overflow: hidden;
       background: var(--unk); }
.bar span { display: block; height: 100%; }
.bar .c { background: var(--ok); } .bar .d { background: var(--bad); }
code, .id { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .82rem;
            word-break: break-all; }
.pill { display: inline-block; padding: 0 .45rem; border-radius: 9px; font-size: .8rem;
        color: #fff; background: var(--unk); }
.pill.compliant { background: var(--ok); } .pill.drifted { background: var(--bad); }
ul.items { margin: .2rem 0 .8rem; padding-left: 1.2rem; }
footer { margin-top: 2rem; color: #4a5261; font-size: .85rem; }
@media print {
  body { margin: 0; max-width: none; font-size: 11px; }
  h2 { break-after: avoid; } table, .card, li { break-inside: avoid; }
  .bar, .pill, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _bar(seconds: dict[str, float]) -> str:
    total = sum(seconds.values()) or 1.0
    c = 100.0 * seconds[State.compliant.value] / total
    d = 100.0 * seconds[State.drifted.value] / total
    return (f'<div class="bar" title="compliant {c:.1f}%, drifted {d:.1f}%">'
            f'<span class="c" style="width:{c:.2f}%"></span>'
            f'<span class="d" style="width:{d:.2f}%"></span></div>')


def _pill(state: State) -> str:
    return f'<span class="pill {state.value}">{state.value}</span>'


def _id(bundle_id: str | None) -> str:
    return f'<span class="id">{escape(bundle_id or "")}</span>'


def _check_section(c: CheckReport) -> str:
    items: list[str] = []
    for e in c.episodes:
        span = (f"{ts(e.start)} to {ts(e.end)} ({escape(e.resolution)})" if e.end
                else f"since {ts(e.start)}, still open at the end of the period")
        items.append(f"<li><b>Drift</b> {span}; "
                     f"opened by {_id(e.opened_by)}"
                     + (f", closed by {_id(e.closed_by)}" if e.closed_by else "") + "</li>")
    for r in c.remediations:
        acts = "; ".join(f"{a.get('action')} ({a.get('result')})" for a in r.actions)
        items.append(f"<li><b>Remediated</b> {ts(r.at)}: {escape(acts)}, outcome "
                     f"{escape(r.outcome)}; bundle {_id(r.bundle_id)}</li>")
    for d in c.deferrals:
        items.append(f"<li><b>Deferred</b> {ts(d.at)}: {escape(d.reason)}: "
                     f"{escape(d.message)}; bundle {_id(d.bundle_id)}</li>")
    for a in c.alerts:
        kind = ("held by a guard" if a.remediable
                else "not remediable by the agent: a person must act")
        more = f" and {len(a.bundle_ids) - 1} more" if len(a.bundle_ids) > 1 else ""
        items.append(f'<li><b class="bad">Alert</b> ({kind}) {ts(a.first)} to {ts(a.last)}: '
                     f"{escape(a.reason)}: {escape(a.message)}; bundle "
                     f"{_id(a.bundle_ids[0])}{more}</li>")
    for s in c.silences:
        items.append(f'<li><b class="unk">No evidence</b> {ts(s.start)} to {ts(s.end)} '
                     f"({duration((s.end - s.start).total_seconds())})"
                     + (f"; last bundle before it {_id(s.after_bundle)}" if s.after_bundle else "")
                     + "</li>")
    body = "".join(items) or "<li>Compliant throughout; nothing to report.</li>"
    return (f"<h3>{escape(c.check)} {_pill(c.end_state)}</h3>"
            f'<ul class="items">{body}</ul>')


def render_html(report: ComplianceReport) -> str:
    cov = report.coverage
    drifted_now = [c.check for c in report.checks if c.end_state is State.drifted]
    never = sum(1 for c in report.checks for a in c.alerts if not a.remediable)
    cards = (
        f'<div class="card">Evidence chain<b class="{"ok" if cov.chain_ok else "bad"}">'
        f'{"intact" if cov.chain_ok else "problems"}</b>{cov.chain_checked} bundles verified</div>'
        f'<div class="card">Checks drifted at the end<b class="{"bad" if drifted_now else "ok"}">'
        f"{len(drifted_now)}</b>of {len(report.checks)}</div>"
        f'<div class="card">Drift episodes<b>{sum(len(c.episodes) for c in report.checks)}</b>'
        f"{sum(len(c.remediations) for c in report.checks)} remediations</div>"
        f'<div class="card">Alerts a person must fix<b class="{"bad" if never else "ok"}">'
        f"{never}</b>never remediable by the agent</div>"
    )
    cit_rows = "".join(
        f"<tr><td><b>{escape(c.citation)}</b></td><td>{escape(c.title)}</td>"
        f"<td>{escape(', '.join(c.checks))}</td><td>{_bar(c.seconds)}</td>"
        f'<td class="num">{c.percent(State.compliant):.1f}%</td>'
        f'<td class="num">{c.percent(State.drifted):.1f}%</td>'
        f'<td class="num">{c.percent(State.unknown):.1f}%</td><td>{_pill(c.end_state)}</td>'
        f"<td><code>{escape(', '.join(x.upper() for x in c.controls))}</code></td></tr>"
        for c in report.citations)
    check_rows = "".join(
        f"<tr><td><b>{escape(c.check)}</b></td><td>{escape(', '.join(c.hipaa))}</td>"
        f"<td>{_bar(c.seconds)}</td>"
        f'<td class="num">{c.percent(State.compliant):.1f}%</td>'
        f'<td class="num">{len(c.episodes)}</td><td class="num">{len(c.remediations)}</td>'
        f'<td class="num">{len(c.deferrals)}</td><td class="num">{c.bundles}</td>'
        f"<td>{_pill(c.end_state)}</td></tr>"
        for c in report.checks)
    cov_items = [f'<li class="bad">{escape(p)}</li>' for p in cov.chain_problems]
    cov_items += [f"<li>{escape(n)}</li>" for n in cov.chain_notes]
    cov_items += [f'<li class="bad">Unusable bundle {_id(r["bundle_id"])} '
                  f'({escape(r["reason"])}): {escape(r["message"])}</li>' for r in cov.rejected]
    cov_items += [f"<li>{len(cov.pruned_in_period)} bundle(s) of the period pruned by retention "
                  "(explained by signed prune bundles)</li>"] if cov.pruned_in_period else []
    silent = sum((s.end - s.start).total_seconds() for s in cov.silences)
    cov_items.append(f"<li>Time without evidence, summed over checks: {duration(silent)} "
                     f"({len(cov.silences)} period(s); details per check above)</li>")
    events = "".join(
        f"<tr><td>{ts(e.at)}</td><td>{escape(e.check)}</td><td>{escape(e.outcome)}</td>"
        f"<td>{escape(e.error or '')}</td><td>{_id(e.bundle_id)}</td></tr>"
        for e in report.events)
    src = report.crosswalk_source
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Compliance report {escape(report.host_id)} {ts(report.since)} to {ts(report.until)}</title>
<style>{CSS}</style></head>
<body>
<h1>Compliance report: {escape(report.host_id)}</h1>
<p class="meta">Site <b>{escape(report.site_id)}</b> &middot; period {ts(report.since)} to
{ts(report.until)} &middot; generated {ts(report.generated_at)} from signed evidence
(signing key {escape(", ".join(k[:16] for k in report.keyids))}&hellip;)</p>
<div class="cards">{cards}</div>
<h2>By HIPAA Security Rule citation</h2>
<table><thead><tr><th>Citation</th><th>Safeguard</th><th>Checks</th><th>Time</th>
<th>Compliant</th><th>Drifted</th><th>No evidence</th><th>End</th><th>NIST SP 800-53r5</th>
</tr></thead><tbody>{cit_rows}</tbody></table>
<h2>By check</h2>
<table><thead><tr><th>Check</th><th>HIPAA</th><th>Time</th><th>Compliant</th>
<th>Episodes</th><th>Remediations</th><th>Deferrals</th><th>Bundles</th><th>End</th>
</tr></thead><tbody>{check_rows}</tbody></table>
{"".join(_check_section(c) for c in report.checks)}
<h2>Evidence coverage</h2>
<ul class="items">{"".join(cov_items)}</ul>
{"<h2>Events</h2><table><thead><tr><th>Time</th><th>Kind</th><th>Outcome</th><th>Detail</th>"
 "<th>Bundle</th></tr></thead><tbody>" + events + "</tbody></table>" if events else ""}
<footer>Each line names the signed evidence bundle it comes from; check any of them with
<code>compliance-agent evidence show ID</code> and the whole chain with
<code>compliance-agent evidence verify --all</code>. A state holds until the check's next
bundle, at most the expected snapshot interval; longer silences count as no evidence.
NIST SP 800-53 mapping: {escape(src.get("title", ""))} ({escape(src.get("url", ""))}).</footer>
</body></html>
"""
