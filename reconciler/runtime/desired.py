"""Desired state: the baseline, completed by spec defaults, plus triggers.

Read again on every pass (level-triggered): an edited baseline file, a newer
signed baseline or a newly admitted order simply show up in the next pass.
Where each part comes from is given at construction: the baseline loader
(local file, or the newest verified signed baseline), the spec-defaults
steps (values a baseline leaves to the host's config) and the trigger source
(admitted orders).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from specs.baseline import Baseline, BaselineError, load_baseline
from specs.resource import ResourceSpec, Trigger

log = logging.getLogger("compliance_agent.desired")

# -> (baseline, where it came from); raises BaselineError when invalid.
BaselineLoader = Callable[[], tuple[Baseline, str]]
# A baseline with what it left unset filled in from the host's config.
SpecDefaults = Callable[[Baseline], Baseline]
# Triggers of admitted orders by kind ("*": every kind).
TriggerSource = Callable[[], Mapping[str, Sequence[Trigger]]]


def local_baseline(path: Path) -> BaselineLoader:
    def load() -> tuple[Baseline, str]:
        return load_baseline(path), str(path)

    return load


def no_triggers() -> Mapping[str, Sequence[Trigger]]:
    return {}


class DesiredState:
    def __init__(
        self,
        loader: BaselineLoader,
        *,
        defaults: Sequence[SpecDefaults] = (),
        triggers: TriggerSource = no_triggers,
    ) -> None:
        self.loader = loader
        self.defaults = tuple(defaults)
        self.triggers = triggers
        self.last_good: Baseline | None = None
        self.source = ""

    def current(self) -> tuple[Baseline, dict[str, ResourceSpec]]:
        """The baseline and the effective per-kind specs; raises BaselineError if
        there has never been a valid baseline."""
        try:
            baseline, self.source = self.loader()
            self.last_good = baseline
        except BaselineError as e:
            if self.last_good is None:
                raise
            log.error("baseline invalid; keeping the last good one",
                      extra={"reason": "BaselineInvalid", "detail": str(e)})
            baseline = self.last_good
        for fill in self.defaults:
            baseline = fill(baseline)
        specs = baseline.resources()
        triggers = self.triggers()
        for kind, spec in list(specs.items()):
            extra = triggers.get(kind) or triggers.get("*")
            if extra:
                specs[kind] = spec.model_copy(update={"triggers": [*spec.triggers, *extra]})
        return baseline, specs
