"""The controller contract.

A controller reconciles one resource kind in three steps:

* ``observe(host, spec)`` reads the real state through ``host`` and returns a
  typed model of it. It must not change the host. It may raise; the runtime
  then marks the resource ``Ready=Unknown`` with reason ``ObserveFailed`` and
  retries with backoff.
* ``diff(spec, observed)`` is pure: the list of differences. Empty means the
  resource is at its desired state (Ready=True, Drifted=False).
* ``plan(spec, observed, drifts)`` is pure: the typed actions that would remove
  the drifts with ``remedy == remediate``. Alert-only drifts get no action.

The runtime does the rest: guards decide whether each action may run, the
actuator runs it, and the runtime observes again; the diff after acting
decides the outcome. Nothing depends on having seen an earlier pass: every
pass reads the whole state again (level-triggered).

``facts(spec, observed)`` returns the kind-specific evidence fields (e.g.
``ruleset_hash``, ``nixos_revision``, a snapshot id); default none.
"""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel

from specs.actions import Action
from specs.drift import Drift
from specs.host import Host
from specs.resource import ResourceSpec

SpecT = TypeVar("SpecT", bound=ResourceSpec, contravariant=True)
ObservedT = TypeVar("ObservedT", bound=BaseModel)


@runtime_checkable
class Controller(Protocol[SpecT]):
    kind: str

    def observe(self, host: Host, spec: SpecT) -> BaseModel: ...

    def diff(self, spec: SpecT, observed: Any) -> list[Drift]: ...

    def plan(self, spec: SpecT, observed: Any, drifts: list[Drift]) -> list[Action]: ...

    def facts(self, spec: SpecT, observed: Any) -> dict[str, Any]: ...


class ControllerBase(Generic[SpecT]):
    """Convenience base giving the optional parts their defaults."""

    kind: str = ""

    def facts(self, spec: SpecT, observed: Any) -> dict[str, Any]:
        return {}
