"""The baseline: versioned desired state, one typed spec per resource kind.

A kind left out (null) is not managed on this host. The same model parses the
local file (`baselinePath`) and the payload of a signed baseline from the
control plane (`application/vnd.compliance-agent.baseline+json`).

A signed baseline is bound to where it may apply: `site_id` must be this
host's site and `host_id` this host (or "*", a baseline the control plane
signed for every host of the site). Without the binding, a document signed
for one clinic's host would be accepted on any other. The local file needs
no binding: the host's own NixOS configuration wrote it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specs.errors import ComplianceAgentError
from specs.kinds.av_edr import AvEdrSpec
from specs.kinds.backup import BackupSpec
from specs.kinds.egress import EgressSpec
from specs.kinds.encryption import EncryptionSpec
from specs.kinds.firewall import FirewallSpec
from specs.kinds.logging_ import LoggingSpec
from specs.kinds.patching import PatchingSpec
from specs.kinds.services import ServicesSpec
from specs.kinds.time_ import TimeSpec
from specs.resource import ResourceSpec

BASELINE_PAYLOAD_TYPE = "application/vnd.compliance-agent.baseline+json"
SITE_WIDE_HOST = "*"


class Baseline(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(ge=0, description="Monotonic; a lower version is never applied.")
    policy_version: str = Field(min_length=1)
    site_id: str | None = Field(
        None, min_length=1, max_length=256,
        description="Site this baseline is for; required in a signed baseline.",
    )
    host_id: str | None = Field(
        None, min_length=1, max_length=256,
        description="Host this baseline is for, or '*' for every host of the site; required "
        "in a signed baseline.",
    )
    firewall: FirewallSpec | None = None
    services: ServicesSpec | None = None
    egress: EgressSpec | None = None
    patching: PatchingSpec | None = None
    time: TimeSpec | None = None
    encryption: EncryptionSpec | None = None
    backup: BackupSpec | None = None
    av_edr: AvEdrSpec | None = None
    logging: LoggingSpec | None = None

    def resources(self) -> dict[str, ResourceSpec]:
        """Managed kinds in a stable order, keyed by kind name (the workqueue key)."""
        out: dict[str, ResourceSpec] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, ResourceSpec):
                out[name] = value
        return out


def binding_problem(baseline: Baseline, site_id: str, host_id: str) -> tuple[str, str] | None:
    """Why a signed baseline does not apply to this host, as (CamelCase reason, message);
    None when it does. Shared by the agent and the root actuator so they never disagree."""
    if baseline.site_id is None or baseline.host_id is None:
        return "InvalidBaseline", "a signed baseline must name site_id and host_id"
    if baseline.site_id != site_id:
        return "BaselineWrongSite", f"signed for site {baseline.site_id[:64]!r}, not {site_id!r}"
    if baseline.host_id not in (host_id, SITE_WIDE_HOST):
        return "BaselineWrongHost", f"signed for host {baseline.host_id[:64]!r}, not {host_id!r}"
    return None


class BaselineError(ComplianceAgentError):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def parse_baseline(data: Any, source: str = "<memory>") -> Baseline:
    try:
        return Baseline.model_validate(data)
    except ValidationError as err:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in err.errors()
        ]
        raise BaselineError(source, problems) from None


def load_baseline(path: Path) -> Baseline:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BaselineError(str(path), [f"cannot read: {e.strerror}"]) from None
    except json.JSONDecodeError as e:
        raise BaselineError(str(path), [f"not valid JSON: {e.msg} at line {e.lineno}"]) from None
    return parse_baseline(data, str(path))
