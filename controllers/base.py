"""The controller contract.

A controller reconciles one resource kind, typed by its spec model
(``SpecT``, e.g. ``ServicesSpec``) and its observation model (``ObservedT``,
e.g. ``ServicesObserved``), in three steps:

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

The rest of the contract has defaults in ``ControllerBase``:

* ``facts(spec, observed)``: kind-specific evidence fields (e.g.
  ``ruleset_hash``, ``nixos_revision``, a snapshot id); default none.
* ``backoff(spec)``: ``(base, cap)`` seconds of the per-action backoff the
  runtime applies when an action ran and its drift came back; default
  ``DEFAULT_BACKOFF``.
* ``targets(spec)``: the units and files ``observe`` reads, so that a watch
  can queue the kind as soon as one changes (a hint only: the next reconcile
  reads everything again); default none.
* ``phase``: when the kind runs within a pass. Every kind of a phase is
  reconciled before any kind of a later phase starts, with any number of
  workers. A kind whose reading the guards of other kinds judge (the clock)
  is ``Phase.guard_inputs``; everything else is ``Phase.changes``.

The loop holds controllers of many kinds in one map, so it sees each through
``KindController``: the kind, the phase, and ``run_with(steps, spec)``, which
checks that ``spec`` is this controller's ``spec_type`` and hands both,
at their own types, to the runtime's ``steps``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel

from specs.actions import Action
from specs.drift import Drift
from specs.errors import ComplianceAgentError
from specs.host import Host
from specs.resource import ResourceSpec
from specs.watch import NO_TARGETS, WatchTargets

SpecT = TypeVar("SpecT", bound=ResourceSpec)
ObservedT = TypeVar("ObservedT", bound=BaseModel)

DEFAULT_BACKOFF = (10.0, 900.0)


class Phase(IntEnum):
    """Order of kinds within one pass (lower first)."""

    guard_inputs = 0  # its reading is what the guards of later phases judge (the clock)
    changes = 1  # may plan actions, disruptive ones included


class SpecTypeError(ComplianceAgentError, TypeError):
    """A controller was handed a spec of another kind (a wiring bug, not bad input)."""


class Controller(Protocol[SpecT, ObservedT]):
    """One resource kind: observe -> diff -> plan, at the kind's own types."""

    kind: str
    phase: Phase
    spec_type: type[SpecT]
    # Action types the actuator may finish after their request was lost (a
    # journaled transaction across restarts): each reconcile collects such a
    # result first, so its steps reach the evidence even when nothing is planned.
    transactional_actions: frozenset[str]

    def observe(self, host: Host, spec: SpecT) -> ObservedT: ...

    def diff(self, spec: SpecT, observed: ObservedT) -> list[Drift]: ...

    def plan(self, spec: SpecT, observed: ObservedT, drifts: list[Drift]) -> list[Action]: ...

    def facts(self, spec: SpecT, observed: ObservedT) -> dict[str, Any]: ...

    def backoff(self, spec: SpecT) -> tuple[float, float]: ...

    def targets(self, spec: SpecT) -> WatchTargets: ...


class ReconcileSteps(Protocol):
    """The runtime's part, generic over whichever controller it is given."""

    def __call__(self, controller: Controller[SpecT, ObservedT], spec: SpecT, /) -> None: ...


class KindController(Protocol):
    """A controller as the generic loop holds it: its spec and observation types sealed in."""

    @property
    def kind(self) -> str: ...

    @property
    def phase(self) -> Phase: ...

    def run_with(self, steps: ReconcileSteps, spec: ResourceSpec) -> None: ...

    def watch_targets(self, spec: ResourceSpec) -> WatchTargets: ...


class ControllerBase(ABC, Generic[SpecT, ObservedT]):
    """Base of every controller: the defaults, and the sealed view the loop uses."""

    kind: str = ""
    phase: Phase = Phase.changes
    spec_type: type[SpecT]
    transactional_actions: frozenset[str] = frozenset()

    @abstractmethod
    def observe(self, host: Host, spec: SpecT) -> ObservedT: ...

    @abstractmethod
    def diff(self, spec: SpecT, observed: ObservedT) -> list[Drift]: ...

    @abstractmethod
    def plan(self, spec: SpecT, observed: ObservedT, drifts: list[Drift]) -> list[Action]: ...

    def facts(self, spec: SpecT, observed: ObservedT) -> dict[str, Any]:
        return {}

    def backoff(self, spec: SpecT) -> tuple[float, float]:
        return DEFAULT_BACKOFF

    def targets(self, spec: SpecT) -> WatchTargets:
        return NO_TARGETS

    def watch_targets(self, spec: ResourceSpec) -> WatchTargets:
        """`targets` for the loop, which holds specs of every kind."""
        return self.targets(spec) if isinstance(spec, self.spec_type) else NO_TARGETS

    def run_with(self, steps: ReconcileSteps, spec: ResourceSpec) -> None:
        if not isinstance(spec, self.spec_type):
            raise SpecTypeError(
                f"{type(self).__name__} reconciles {self.spec_type.__name__}, "
                f"not {type(spec).__name__}"
            )
        steps(self, spec)
