"""The scenario both nftables end-to-end tests assert (direct, and behind the root
actuator): a running daemon with a 1 h poll re-applies a flushed ruleset on the
watch's notice, once, and its own apply does not start a cycle."""

from __future__ import annotations

import time
from collections.abc import Callable

from reconciler.runtime.daemon import Daemon
from tests.harness.netns import NetNamespace
from tests.harness.wait import wait_for


def assert_flush_repaired_on_the_notice(
    daemon: Daemon, applied: list[float], ns: NetNamespace, watch_up: Callable[[], bool]
) -> None:
    """`applied` gets one entry per executed action (a reconcile listener)."""
    assert wait_for(lambda: daemon.passes_completed == 1)
    assert len(applied) == 1, "the first pass applied the baseline ruleset"
    assert wait_for(watch_up), daemon.watch_hub.status()
    assert wait_for(lambda: not daemon.hints.pending() and not daemon.queue.processing())
    time.sleep(2.5)  # bounded look, past the echo window of the first apply
    assert len(applied) == 1, "the apply's own notices did not make another apply"

    ns.check(["nft", "flush", "ruleset"])  # drift: the firewall is gone
    # seen at once; applied when the first apply's action backoff (the firewall's
    # default, 10 s) ends: the daemon retries then, not at the next pass
    assert wait_for(lambda: len(applied) == 2, timeout=30.0), "the flush was not repaired"
    assert daemon.passes_completed == 1, "repaired on the nft notice, not by a pass"
    assert "table" in ns.check(["nft", "list", "ruleset"]).stdout
    time.sleep(3.0)  # bounded look: the repair's own notices must not start a cycle
    assert len(applied) == 2
