"""Signed baselines are bound to a site and host, on the agent's side too.

The root actuator checks the same binding (tests/unit/test_actuator_boundary.py);
here the agent refuses a document signed for another host before it ever
applies it, and hands the one it applies to the actuator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.delivery.baseline_resolver import BaselineResolver
from reconciler.delivery.client import BaselineFetch
from reconciler.store.database import Store, open_store
from reconciler.trust.dsse import envelope_bytes
from specs.baseline import BASELINE_PAYLOAD_TYPE
from specs.config import AgentConfig, load_config
from tests.unit.test_trust_support import HOST, MCP_SIGNER, SITE, write_config


class OneDocument:
    def __init__(self, envelope: bytes) -> None:
        self.envelope = envelope

    def fetch_baseline(self, etag: str | None = None) -> BaselineFetch:
        return BaselineFetch(envelope=self.envelope, etag='"e1"')


def signed(**body: Any) -> bytes:
    payload = {"version": 5, "policy_version": "5", **body}
    payload = {k: v for k, v in payload.items() if v is not None}
    return envelope_bytes(MCP_SIGNER.sign_envelope(json.dumps(payload).encode(),
                                                   BASELINE_PAYLOAD_TYPE))


@pytest.fixture
def cfg(tmp_path: Path) -> AgentConfig:
    (tmp_path / "baseline.json").write_text(json.dumps({"version": 1, "policy_version": "1"}))
    return load_config(write_config(tmp_path))


@pytest.fixture
def store(cfg: AgentConfig) -> Iterator[Store]:
    cfg.state_directory.mkdir(parents=True, exist_ok=True)
    s = open_store(cfg.database_path)
    yield s
    s.close()


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        ({"site_id": SITE, "host_id": "other-host"}, "BaselineWrongHost"),
        ({"site_id": "other-site", "host_id": HOST}, "BaselineWrongSite"),
        ({"site_id": SITE, "host_id": None}, "InvalidBaseline"),
        ({"site_id": None, "host_id": None}, "InvalidBaseline"),
    ],
)
def test_a_baseline_signed_for_another_host_is_rejected(
    cfg: AgentConfig, store: Store, binding: dict[str, Any], reason: str
) -> None:
    src = BaselineResolver(cfg, OneDocument(signed(**binding)), store, cfg.mcp_public_keys)
    base, where = src.current()
    assert base.version == 1 and "local" in where
    assert [r.reason for r in src.take_rejections()] == [reason]


@pytest.mark.parametrize("host", [HOST, "*"])
def test_a_baseline_for_this_host_or_its_whole_site_applies_and_is_published(
    cfg: AgentConfig, store: Store, host: str
) -> None:
    offered: list[bytes] = []
    envelope = signed(site_id=SITE, host_id=host)
    src = BaselineResolver(cfg, OneDocument(envelope), store, cfg.mcp_public_keys,
                         publish=offered.append)
    assert src.current()[0].version == 5
    assert offered == [envelope]
    # The next pass reads it back from the database and offers the same document.
    again = BaselineResolver(cfg, None, store, cfg.mcp_public_keys, publish=offered.append)
    assert again.current()[0].version == 5 and offered == [envelope, envelope]
