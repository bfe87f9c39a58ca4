"""What the reseller integrations announce: a short summary of a stored bundle."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass

from specs.errors import ComplianceAgentError


class IntegrationError(ComplianceAgentError):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class EvidenceSummary:
    bundle_id: str
    check: str
    outcome: str
    site: str
    host: str
    timestamp: str
    sequence: int | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


def summarize(envelope: bytes) -> EvidenceSummary:
    """The summary of an evidence envelope the agent itself signed and stored."""
    try:
        env = json.loads(envelope)
        pred = json.loads(base64.b64decode(env["payload"]))["predicate"]
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise IntegrationError(f"not an evidence envelope: {e}", retryable=False) from None
    seq = pred.get("sequence")
    return EvidenceSummary(
        bundle_id=str(pred.get("bundle_id", "")),
        check=str(pred.get("check", "")),
        outcome=str(pred.get("outcome", "")),
        site=str(pred.get("site_id", "")),
        host=str(pred.get("host_id", "")),
        timestamp=str(pred.get("timestamp_end") or pred.get("timestamp_start") or ""),
        sequence=seq if isinstance(seq, int) else None,
    )
