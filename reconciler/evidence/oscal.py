"""A `ComplianceReport` as an OSCAL 1.1 assessment-results document (JSON).

Shape (only fields OSCAL 1.1.2 defines; validated in the tests with
compliance-trestle's pydantic OSCAL models):

* one `result` for the period (`start`/`end`), whose `local-definitions`
  name the agent (a software component) and the host (an inventory item);
* one `observation` per check: method TEST (automated), time in compliance,
  drift episodes and alerts as props and remarks, and `relevant-evidence`
  pointing at the signed bundles that establish it (bundle file name and id);
* one `finding` per HIPAA Security Rule citation and NIST SP 800-53 rev5
  control the SP 800-66r2 crosswalk maps it to: target `objective-id` = the
  800-53 control, status `satisfied` when every check citing it ended the
  period compliant, `not-satisfied` otherwise (drifted, or no evidence);
  the HIPAA citation is a prop. `reviewed-controls` lists those controls.

OSCAL `import-ap` must reference an assessment plan; the agent's baseline is
that plan, so it points at a back-matter resource describing it. The
crosswalk's source is another back-matter resource.

Identifiers: OSCAL wants UUIDs. They are UUIDv5 of stable names (site, host,
period, check, citation), so the same evidence gives the same document.
"""

from __future__ import annotations

import uuid
from typing import Any

from reconciler.evidence.report_model import CheckReport, ComplianceReport, State
from specs.orders import format_rfc3339

OSCAL_VERSION = "1.1.2"
NS = "https://compliance-agent.dev/ns/oscal"
_ROOT = uuid.UUID("6f1c3d4e-2b7a-5c9e-8d1f-3a4b5c6d7e8f")
MAX_EVIDENCE_LINKS = 20  # per observation: the newest bundles, the rest are counted


def _uuid(*parts: str) -> str:
    return str(uuid.uuid5(_ROOT, "/".join(parts)))


def _prop(name: str, value: str) -> dict[str, str]:
    return {"name": name, "ns": NS, "value": value}



def _observation(report: ComplianceReport, rep: CheckReport, key: str,
                 inventory_uuid: str, component_uuid: str) -> dict[str, Any]:
    pct = rep.percent(State.compliant)
    lines = [
        f"Check {rep.check}: compliant {pct:.1f}% of the period, drifted "
        f"{rep.percent(State.drifted):.1f}%, no evidence {rep.percent(State.unknown):.1f}%; "
        f"{len(rep.episodes)} drift episode(s), {len(rep.remediations)} remediation(s), "
        f"{len(rep.deferrals)} deferral(s), {len(rep.alerts)} alert group(s)."
    ]
    for ep in rep.episodes:
        end = format_rfc3339(ep.end) if ep.end else "still open"
        lines.append(f"Drift {format_rfc3339(ep.start)} to {end} ({ep.resolution}); "
                     f"opened by bundle {ep.opened_by}"
                     + (f", closed by bundle {ep.closed_by}" if ep.closed_by else ""))
    for al in rep.alerts:
        kind = "held by a guard" if al.remediable else "not remediable by the agent"
        lines.append(f"Alert ({kind}) {al.reason}: {al.message} "
                     f"[{len(al.bundle_ids)} bundle(s), first {al.bundle_ids[0]}]")
    bundle_ids = [ep.opened_by for ep in rep.episodes]
    bundle_ids += [ep.closed_by for ep in rep.episodes if ep.closed_by]
    bundle_ids += [r.bundle_id for r in rep.remediations]
    bundle_ids += [d.bundle_id for d in rep.deferrals]
    bundle_ids += [a.bundle_ids[0] for a in rep.alerts]
    if rep.last_bundle:
        bundle_ids.append(rep.last_bundle)
    unique = list(dict.fromkeys(bundle_ids))
    evidence = [
        {"href": f"urn:uuid:{b}" if _is_uuid(b) else f"#{b}",
         "props": [_prop("bundle-id", b)],
         "description": f"Signed evidence bundle {b} (DSSE envelope, in-toto statement)."}
        for b in unique[-MAX_EVIDENCE_LINKS:]
    ]
    obs: dict[str, Any] = {
        "uuid": _uuid(key, "observation", rep.check),
        "title": f"{rep.check} check over the period",
        "description": " ".join(lines[:1]),
        "props": [
            _prop("check", rep.check),
            _prop("percent-compliant", f"{pct:.2f}"),
            _prop("drift-episodes", str(len(rep.episodes))),
            _prop("bundles", str(rep.bundles)),
            _prop("end-state", rep.end_state.value),
        ],
        "methods": ["TEST"],
        "types": ["finding"] if rep.end_state is not State.compliant else ["control-objective"],
        "origins": [{"actors": [{"type": "tool", "actor-uuid": component_uuid}]}],
        "subjects": [{"subject-uuid": inventory_uuid, "type": "inventory-item"}],
        "collected": format_rfc3339(report.until),
        "remarks": "\n".join(lines),
    }
    if evidence:
        obs["relevant-evidence"] = evidence
    return obs


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def assessment_results(report: ComplianceReport, tool_version: str) -> dict[str, Any]:
    """The OSCAL assessment-results document (a JSON-ready dict)."""
    key = "/".join((report.site_id, report.host_id, format_rfc3339(report.since),
                    format_rfc3339(report.until)))
    component_uuid = _uuid(key, "component")
    inventory_uuid = _uuid(key, "host")
    plan_uuid = _uuid(key, "plan")
    crosswalk_uuid = _uuid(key, "crosswalk")
    observations = [_observation(report, rep, key, inventory_uuid, component_uuid)
                    for rep in report.checks]
    obs_uuid = {rep.check: o["uuid"] for rep, o in zip(report.checks, observations, strict=True)}
    findings: list[dict[str, Any]] = []
    controls: list[str] = []
    for cit in report.citations:
        satisfied = cit.end_state is State.compliant
        for control in cit.controls or []:
            controls.append(control)
            findings.append({
                "uuid": _uuid(key, "finding", cit.citation, control),
                "title": f"HIPAA {cit.citation} {cit.title} / NIST SP 800-53 {control.upper()}",
                "description": (
                    f"45 CFR {cit.citation} ({cit.title}), checked by {', '.join(cit.checks)}: "
                    f"compliant {cit.percent(State.compliant):.1f}% of the period, drifted "
                    f"{cit.percent(State.drifted):.1f}%, no evidence "
                    f"{cit.percent(State.unknown):.1f}%; {cit.episodes} drift episode(s). "
                    f"Ended the period {cit.end_state.value}."),
                "props": [_prop("hipaa-citation", cit.citation),
                          _prop("percent-compliant", f"{cit.percent(State.compliant):.2f}")],
                "target": {
                    "type": "objective-id",
                    "target-id": control,
                    "status": {"state": "satisfied" if satisfied else "not-satisfied"},
                },
                "related-observations": [{"observation-uuid": obs_uuid[c]} for c in cit.checks],
            })
    result: dict[str, Any] = {
        "uuid": _uuid(key, "result"),
        "title": f"Compliance of {report.host_id} ({report.site_id})",
        "description": (
            f"Continuous assessment by compliance-agent from signed, hash-chained evidence "
            f"between {format_rfc3339(report.since)} and {format_rfc3339(report.until)}. "
            f"Evidence chain {'intact' if report.coverage.chain_ok else 'HAS PROBLEMS'} "
            f"({report.coverage.chain_checked} bundles verified)."),
        "start": format_rfc3339(report.since),
        "end": format_rfc3339(report.until),
        "local-definitions": {
            "components": [{
                "uuid": component_uuid, "type": "software", "title": "compliance-agent",
                "description": "Host agent that keeps the host at its compliance baseline "
                               "and signs evidence of every outcome.",
                "props": [_prop("version", tool_version)],
                "status": {"state": "operational"},
            }],
            "inventory-items": [{
                "uuid": inventory_uuid,
                "description": f"Host {report.host_id} at site {report.site_id}",
                "props": [_prop("host-id", report.host_id), _prop("site-id", report.site_id)],
            }],
        },
        "reviewed-controls": {
            "control-selections": [{
                "description": "NIST SP 800-53 rev5 controls the SP 800-66r2 crosswalk maps "
                               "the checked HIPAA Security Rule citations to.",
                "include-controls": [{"control-id": c} for c in dict.fromkeys(controls)],
            }] if controls else [{"description": "no mapped controls", "include-all": {}}],
        },
    }
    if observations:
        result["observations"] = observations
    if findings:
        result["findings"] = findings
    source = report.crosswalk_source
    return {
        "assessment-results": {
            "uuid": _uuid(key, "assessment-results", format_rfc3339(report.generated_at)),
            "metadata": {
                "title": f"compliance-agent assessment results: {report.host_id}",
                "last-modified": format_rfc3339(report.generated_at),
                "version": tool_version,
                "oscal-version": OSCAL_VERSION,
            },
            "import-ap": {"href": f"#{plan_uuid}"},
            "results": [result],
            "back-matter": {"resources": [
                {"uuid": plan_uuid, "title": "compliance-agent baseline (the assessment plan)",
                 "description": "The host's signed compliance baseline: the checks, and their "
                                "HIPAA citations, that this assessment covers."},
                {"uuid": crosswalk_uuid,
                 "title": source.get("title", "HIPAA to NIST SP 800-53 crosswalk"),
                 "rlinks": [{"href": source.get("url", "https://csrc.nist.gov/pubs/sp/800/66/r2/final")}]},
            ]},
        }
    }
