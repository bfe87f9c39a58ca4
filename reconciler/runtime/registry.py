"""Which controller reconciles which kind, and how it is built.

Each built-in kind has a factory that imports its controller module on first
use: a host that does not manage a kind never pays for importing it. Tests,
the benchmark and the demo pass `overrides` (e.g. a firewall controller with
another sandbox command).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping

from controllers.base import KindController
from specs.errors import ComplianceAgentError

ControllerFactory = Callable[[], KindController]


class UnknownKindError(ComplianceAgentError, KeyError):
    """A baseline names a kind no controller reconciles."""


def _time() -> KindController:
    from controllers.time_ import ClockController

    return ClockController()


def _firewall() -> KindController:
    from controllers.firewall import FirewallController
    from reconciler.actuator.nft_sandbox import script_argv

    # the controller runs the sandbox through the Host; where it lives is ours to say
    return FirewallController(sandbox_argv=script_argv())


def _services() -> KindController:
    from controllers.services import ServicesController

    return ServicesController()


def _egress() -> KindController:
    from controllers.egress import EgressController

    return EgressController()


def _patching() -> KindController:
    from controllers.patching import PatchingController

    return PatchingController()


def _av_edr() -> KindController:
    from controllers.av_edr import AvEdrController

    return AvEdrController()


def _backup() -> KindController:
    from controllers.backup import BackupController

    return BackupController()


def _logging() -> KindController:
    from controllers.logging_ import LoggingController

    return LoggingController()


def _encryption() -> KindController:
    from controllers.encryption import EncryptionController

    return EncryptionController()


# Also the order in which reports list kinds (within a phase).
BUILTIN: dict[str, ControllerFactory] = {
    "time": _time,
    "firewall": _firewall,
    "services": _services,
    "egress": _egress,
    "patching": _patching,
    "av_edr": _av_edr,
    "backup": _backup,
    "logging": _logging,
    "encryption": _encryption,
}


class ControllerRegistry(Mapping[str, KindController]):
    """Controllers by kind, each built on first lookup (thread-safe)."""

    def __init__(
        self,
        overrides: Mapping[str, KindController] | None = None,
        factories: Mapping[str, ControllerFactory] = BUILTIN,
    ) -> None:
        self._factories = dict(factories)
        self._loaded: dict[str, KindController] = dict(overrides or {})
        self._lock = threading.Lock()

    def __getitem__(self, kind: str) -> KindController:
        with self._lock:
            ctrl = self._loaded.get(kind)
            if ctrl is None:
                factory = self._factories.get(kind)
                if factory is None:
                    raise UnknownKindError(f"no controller for kind {kind!r}")
                ctrl = self._loaded[kind] = factory()
            return ctrl

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*self._factories, *self._loaded]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*self._factories, *self._loaded]))

    def rank(self, kind: str) -> int:
        """Position of `kind` in the reporting order (unknown kinds last)."""
        order = list(self)
        return order.index(kind) if kind in order else len(order)
