"""The nftables watch: `nft -j monitor ruleset`, one line per change of the live
ruleset, for the kinds whose targets say `nftables` (firewall, egress).

The lines are change notices only: their content is never parsed or kept (the
controller lists the ruleset again). Listening needs CAP_NET_ADMIN, so the
daemon runs this watch only when it changes the host itself (no root
actuator); behind the root actuator the actuator streams the notices
(`reconciler.runtime.actuator_nft_watch`). `nft` exiting or not starting is
a lost session: down, retried with backoff, every covered kind queued on
recovery. A flush that removes a hundred rules prints a hundred lines; the
debouncer makes them one reconcile per kind.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Sequence

from reconciler.runtime.watch import Emit, SupervisedWatch, WatchLost
from specs.watch import WatchTargets

NFT_MONITOR_ARGV = ("nft", "-j", "monitor", "ruleset")
EARLY_EXIT_SECONDS = 0.3


class NftMonitorWatch(SupervisedWatch):
    def __init__(self, emit: Emit, *, argv: Sequence[str] = NFT_MONITOR_ARGV,
                 name: str = "nftables") -> None:
        super().__init__(name, emit)
        self._argv = list(argv)
        self._proc_lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None

    def covers(self, targets: WatchTargets) -> bool:
        return targets.nftables

    def interrupt(self) -> None:
        if not self.stopping():
            return  # new targets are read per notice: no new session needed
        with self._proc_lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def session(self) -> None:
        proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True)
        with self._proc_lock:
            self._proc = proc
        try:
            assert proc.stdout is not None
            try:  # nft refusing (no CAP_NET_ADMIN) exits at once: not live
                code = proc.wait(EARLY_EXIT_SECONDS)
                raise WatchLost(f"{self._argv[0]} monitor exited with {code}")
            except subprocess.TimeoutExpired:
                pass
            self.live(" ".join(self._argv))
            for _notice in proc.stdout:  # content ignored: a notice, not state
                for key, t in self.targets().items():
                    if t.nftables:
                        self.hint(key)
            if not self.stopping():
                raise WatchLost(f"{self._argv[0]} monitor exited with {proc.wait(5)}")
        finally:
            with self._proc_lock:
                self._proc = None
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
