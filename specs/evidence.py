"""Evidence bundles: in-toto Statement v1 payloads inside DSSE envelopes.

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<site>/<host>/<check>",
                  "digest": {"sha256": sha256(canonical_json(post_state))}}],
     "predicateType": "https://compliance-agent.dev/evidence/v1",
     "predicate": EvidencePredicate}

Every predicate field is always present (null when unknown), so consumers
never have to guess whether a field was forgotten or unknown. `sequence`
starts at 1 and has no gaps; `prev_digest` is the lowercase hex SHA-256 of
the previous envelope's exact bytes (null for sequence 1), which makes a
deleted, altered or reordered bundle detectable.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from specs.status import ActionRecord, Outcome

EVIDENCE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://compliance-agent.dev/evidence/v1"
PRUNE_CHECK = "evidence_prune"
# Written when the chain could not be continued at start (reconciler.evidence.recovery):
# names where the verified chain ended and lists the sequences declared lost.
CHAIN_BREAK_CHECK = "evidence_chain_break"

# HIPAA Security Rule citations (45 CFR) per check. The first six are fixed
# by the product; the rest are our reading of the rule:
#   services -> 164.308(a)(1)(ii)(B) risk management: required safeguards keep running
#   time     -> 164.312(b) audit controls: audit records need trustworthy timestamps
#   clock_step -> 164.312(b) likewise: a wall-clock step the agent noticed
#   egress   -> 164.312(e)(1) transmission security: only allowed destinations
#   order    -> 164.312(d) person or entity authentication of remote requests
#   evidence_prune / prune -> 164.316(b)(2)(i) documentation retention
HIPAA_CONTROLS: dict[str, list[str]] = {
    "patching": ["164.308(a)(5)(ii)(B)"],
    "av_edr": ["164.308(a)(5)(ii)(B)", "164.312(b)"],
    "backup": ["164.308(a)(7)(ii)(A)"],
    "logging": ["164.312(b)", "164.308(a)(1)(ii)(D)"],
    "firewall": ["164.312(a)(1)", "164.312(e)(1)"],
    "encryption": ["164.312(a)(2)(iv)", "164.312(e)(2)(ii)"],
    "services": ["164.308(a)(1)(ii)(B)"],
    "time": ["164.312(b)"],
    "clock_step": ["164.312(b)"],
    "egress": ["164.312(e)(1)"],
    "order": ["164.312(d)"],
    "prune": ["164.316(b)(2)(i)"],
    PRUNE_CHECK: ["164.316(b)(2)(i)"],
}


def hipaa_controls_for(check: str) -> list[str]:
    """Citations for `check`; [] for a check we have no mapping for."""
    return list(HIPAA_CONTROLS.get(check, []))


class EvidencePredicate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle_id: str
    site_id: str
    host_id: str
    deployment_mode: str | None
    reseller_id: str | None
    policy_version: str | None
    timestamp_start: str  # RFC 3339 UTC
    timestamp_end: str
    check: str
    hipaa_controls: list[str]
    pre_state: Any
    post_state: Any
    action_taken: list[ActionRecord]
    rollback_available: bool
    rollback_generation: int | str | None
    outcome: Outcome
    error: str | None
    order_id: str | None
    ruleset_hash: str | None
    nixos_revision: str | None
    derivation_digest: str | None
    ntp_offset_ms: float | None
    guard_verdicts: list[dict[str, Any]]
    facts: dict[str, Any] = Field(
        description="Other non-secret facts (snapshot ids, ...) not covered by a field."
    )
    sequence: int = Field(ge=1)
    prev_digest: str | None = Field(pattern=r"^[0-9a-f]{64}$")


class Subject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    digest: dict[str, str]


class EvidenceStatement(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type_: str = Field(alias="_type")
    subject: list[Subject] = Field(min_length=1)
    predicateType: str
    predicate: EvidencePredicate
