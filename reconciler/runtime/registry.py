"""Which controller reconciles which kind. Imported lazily: a host that does
not manage a kind never pays for importing its controller."""

from __future__ import annotations

import importlib
from typing import Any

CONTROLLERS: dict[str, str] = {
    "time": "controllers.time_:ClockController",
    "firewall": "controllers.firewall:FirewallController",
    "services": "controllers.services:ServicesController",
    "egress": "controllers.egress:EgressController",
    "patching": "controllers.patching:PatchingController",
    "av_edr": "controllers.av_edr:AvEdrController",
    "backup": "controllers.backup:BackupController",
    "logging": "controllers.logging_:LoggingController",
    "encryption": "controllers.encryption:EncryptionController",
}

# `time` first: its observation feeds the clock-sanity guard of every other kind.
ORDER = list(CONTROLLERS)


def load_controller(kind: str) -> Any:
    try:
        target = CONTROLLERS[kind]
    except KeyError:
        raise KeyError(f"no controller for kind {kind!r}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)()
