"""What a resource's observation depends on, as hints for the watches.

A controller names the systemd units and the files (or links) its `observe`
reads; the watches turn a change of any of them into "reconcile this kind
now". A target is only a hint: the controller still reads everything again
(level-triggered), and the periodic pass still comes.
"""

from __future__ import annotations

from dataclasses import dataclass

# The key a watch emits when the desired state itself may have changed (the
# baseline file): not one kind, but a whole pass that reads the specs again.
EVERY_KIND = "*"


@dataclass(frozen=True)
class WatchTargets:
    units: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    nftables: bool = False  # the live nftables ruleset

    @staticmethod
    def of(units: list[str] | tuple[str, ...] = (), paths: list[str] | tuple[str, ...] = (),
           nftables: bool = False) -> WatchTargets:
        return WatchTargets(frozenset(u for u in units if u),
                            frozenset(p for p in paths if p and p.startswith("/")), nftables)


NO_TARGETS = WatchTargets()
