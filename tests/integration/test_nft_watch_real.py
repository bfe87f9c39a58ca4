"""The nftables watch against real nft in a throwaway network namespace: a rule
added or the ruleset flushed hints the nftables kinds; nft killed -> down,
then live again; the real firewall controller repairs a flushed ruleset on the
notice, long before the next pass."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from reconciler.actuator.local import LocalActuator
from reconciler.ops.sdnotify import Notifier
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.runtime.nft_watch import NftMonitorWatch
from reconciler.service import new_agent
from specs.watch import WatchTargets
from tests.harness.netns import NetNamespace
from tests.harness.require import require_tool
from tests.harness.wait import wait_for
from tests.support.nft_repair import assert_flush_repaired_on_the_notice
from tests.unit.conftest import make_config

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "nft"

pytestmark = pytest.mark.integration
DEADLINE = 20.0




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


def test_a_flushed_ruleset_is_repaired_on_the_nft_notice_long_before_the_next_pass(
    netns: NetNamespace, tmp_path: Path
) -> None:
    require_tool("nft")
    ruleset = tmp_path / "nftables.rules"
    shutil.copy(FIX / "baseline.nft", ruleset)
    (tmp_path / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0",
        "firewall": {"ruleset_path": str(ruleset),
                     "ruleset_sha256": hashlib.sha256(ruleset.read_bytes()).hexdigest()},
    }))
    applied: list[float] = []
    agent = new_agent(make_config(tmp_path, allowDisruptiveOutsideWindow=True), host=netns,
                      actuator=LocalActuator(netns),
                      listeners=(lambda r: applied.extend(time.monotonic()
                                                          for _ in r.executed),))
    monitor = ["ip", "netns", "exec", netns.name, "nft", "-j", "monitor", "ruleset"]
    daemon = Daemon(agent, DaemonPolicy(poll_interval=3600, workers=2),
                    notifier=Notifier(environ={}),
                    watches=[lambda emit: NftMonitorWatch(emit, argv=monitor)])
    runner = threading.Thread(target=daemon.run, name="daemon-under-test", daemon=True)
    runner.start()
    try:
        assert_flush_repaired_on_the_notice(daemon, applied, netns, lambda: all(h.up for h in daemon.watch_hub.health()))
    finally:
        daemon.stop()
        runner.join(10)
