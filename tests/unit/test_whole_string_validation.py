"""Whole-string validation: a pattern must match the entire value.

Python's `$` also matches before a trailing newline, so `re.match(r"^x$")`
accepts "x\n"; every validator uses `fullmatch` (or pydantic's Rust-regex
`pattern`, whose `$` is the end of the text).
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from specs.orders import OrderPayload, RebuildParams, RestartServiceParams
from tests.unit.test_trust_support import order_payload


@pytest.mark.parametrize(
    "over",
    [
        {"nonce": "ab" * 16 + "\n"},
        {"order_id": "ord-1\n"},
    ],
)
def test_order_fields_with_a_trailing_newline_are_invalid(over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        OrderPayload.model_validate(order_payload(**over))


def test_order_params_with_a_trailing_newline_are_invalid() -> None:
    with pytest.raises(ValidationError):
        RestartServiceParams.model_validate({"unit": "sshd.service\n"})
    with pytest.raises(ValidationError):
        RebuildParams.model_validate({"target": "github:org/repo#host\n"})
    with pytest.raises(ValidationError):
        RebuildParams.model_validate({"target": "/nix/store/" + "a" * 32 + "-sys\n"})


def test_config_patterns_refuse_a_trailing_newline() -> None:
    from specs.window import MaintenanceWindow

    with pytest.raises(ValueError):
        MaintenanceWindow.parse("02:00-04:00\n")


def test_kind_names_refuse_a_trailing_newline() -> None:
    from specs.kinds.backup import BackupJob
    from specs.kinds.firewall import FirewallSpec

    with pytest.raises(ValidationError):
        FirewallSpec.model_validate({"ruleset_path": "/etc/x.nft", "ruleset_sha256": "a" * 64,
                                     "unmanaged_tables": ["inet filter\n"]})
    with pytest.raises(ValidationError):
        BackupJob.model_validate({"name": "daily\n", "repository": "/srv/repo"})
