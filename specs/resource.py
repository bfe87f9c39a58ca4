"""Base of every per-kind resource spec in a baseline."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def canonical_json(data: Any) -> bytes:
    """Deterministic JSON: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Trigger(BaseModel):
    """A one-shot request folded into desired state by an admitted order.

    Level-triggered: a controller treats a trigger as satisfied once the
    observed state shows the effect happened after `requested_at` (e.g. a
    snapshot newer than it), so a restart or a missed event cannot lose it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    order_id: str
    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    requested_at: datetime


class ResourceSpec(BaseModel):
    """Desired state of one resource kind.

    `generation` is the SHA-256 of the spec's canonical JSON: any change of
    desired state yields a new generation, which conditions record as
    `observedGeneration`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    triggers: list[Trigger] = Field(
        default_factory=list,
        description="One-shot requests from admitted orders (filled by the agent, not the file).",
    )

    @property
    def generation(self) -> str:
        body = canonical_json(self.model_dump(mode="json"))
        return hashlib.sha256(body).hexdigest()
