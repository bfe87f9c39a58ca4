"""Which controller reconciles which kind, and how it is built. Imported
lazily: a host that does not manage a kind never pays for importing its
controller."""

from __future__ import annotations

import importlib
from collections.abc import Callable
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


def _firewall_args() -> dict[str, Any]:
    from reconciler.actuator.nft_sandbox import script_argv

    return {"sandbox_argv": script_argv()}


# Constructor arguments a controller needs from the runtime's side.
CONSTRUCTOR_ARGS: dict[str, Callable[[], dict[str, Any]]] = {"firewall": _firewall_args}

# `time` first: its observation feeds the clock-sanity guard of every other kind.
ORDER = list(CONTROLLERS)


def load_controller(kind: str) -> Any:
    try:
        target = CONTROLLERS[kind]
    except KeyError:
        raise KeyError(f"no controller for kind {kind!r}") from None
    module, _, cls = target.partition(":")
    args = CONSTRUCTOR_ARGS.get(kind, dict)()
    return getattr(importlib.import_module(module), cls)(**args)
