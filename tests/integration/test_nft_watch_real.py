"""The nftables watch against real nft in a throwaway network namespace: a rule
added or the ruleset flushed hints the nftables kinds; nft killed -> down,
then live again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from reconciler.runtime.nft_watch import NftMonitorWatch
from specs.watch import WatchTargets
from tests.harness.netns import NetNamespace

pytestmark = pytest.mark.integration
DEADLINE = 20.0


def wait_for(cond: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_ruleset_changes_hint_the_nftables_kinds_and_a_killed_monitor_recovers(
    netns: NetNamespace,
) -> None:
    hints: list[str] = []
    watch = NftMonitorWatch(hints.append,
                            argv=["ip", "netns", "exec", netns.name, "nft", "-j", "monitor",
                                  "ruleset"])
    watch.set_targets({"firewall": WatchTargets.of(paths=["/x"], nftables=True),
                       "egress": WatchTargets.of(nftables=True),
                       "services": WatchTargets.of(units=["a.service"])})
    watch.start()
    try:
        assert wait_for(lambda: watch.health().up), watch.health()
        assert sorted(hints) == ["egress", "firewall"]  # the resync when it went live
        hints.clear()
        netns.check(["nft", "add", "table", "inet", "intruder"])
        netns.check(["nft", "add", "chain", "inet", "intruder", "c"])
        assert wait_for(lambda: {"firewall", "egress"} <= set(hints))
        assert "services" not in hints
        hints.clear()
        netns.check(["nft", "flush", "ruleset"])
        assert wait_for(lambda: {"firewall", "egress"} <= set(hints))

        proc = watch._proc  # the monitor process, killed from outside
        assert proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        assert wait_for(lambda: not watch.health().up)
        assert watch.health().reason == "Lost" and "exited" in watch.health().message
        assert wait_for(lambda: watch.health().up), watch.health()
        hints.clear()
        netns.check(["nft", "add", "table", "inet", "again"])
        assert wait_for(lambda: "firewall" in hints)
    finally:
        watch.stop()
    assert watch.health().reason == "Stopped"
