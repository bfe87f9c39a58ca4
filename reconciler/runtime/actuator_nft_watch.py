"""The nftables watch behind the root actuator: its change notices, over the socket.

Under the NixOS module the agent has no CAP_NET_ADMIN and cannot run `nft
monitor` itself (`NftMonitorWatch` is for an agent that changes the host
itself). It asks the actuator for a watch stream instead
(`ActuatorClient.watch_nftables`, reconciler.actuator.watch_stream): the
actuator runs the monitor and sends `{"changed": "ruleset"}`, coalesced, with
no ruleset data; each notice hints the kinds whose targets say `nftables`
(firewall, egress), which then read the ruleset again through the actuator.

A closed or broken stream (the actuator restarted, its monitor was killed) is
a lost session: down, retried with backoff, everything covered hinted once on
recovery. An actuator that refuses the request (one older than it answers
`MalformedRequest`; a newer one would say `UnknownRequest`) does not offer
watches: the watch shows that as Unavailable and asks again only at the
backoff's cap; polling covers the ruleset meanwhile. The agent's own applies
show up as notices too; the debouncer's echo window absorbs them, as for units.
"""

from __future__ import annotations

import threading

from reconciler.actuator.client import (
    WATCH_SILENCE_TIMEOUT,
    ActuatorClient,
    ActuatorError,
    ActuatorRefused,
    NoticeStream,
)
from reconciler.actuator.protocol import Refusal
from reconciler.runtime.watch import Emit, SupervisedWatch, WatchLost, WatchUnsupported
from specs.watch import WatchTargets

# Refusals that only an actuator without watch streams gives for this request.
NOT_OFFERED = frozenset({Refusal.UnknownRequest, Refusal.MalformedRequest})


class ActuatorNftWatch(SupervisedWatch):
    def __init__(self, emit: Emit, *, client: ActuatorClient, name: str = "nftables",
                 silence_timeout: float = WATCH_SILENCE_TIMEOUT) -> None:
        super().__init__(name, emit)
        self._client = client
        self._silence_timeout = silence_timeout
        self._stream_lock = threading.Lock()
        self._stream: NoticeStream | None = None

    def covers(self, targets: WatchTargets) -> bool:
        return targets.nftables

    def interrupt(self) -> None:
        if not self.stopping():
            return  # new targets are read per notice: no new session needed
        with self._stream_lock:
            stream = self._stream
        if stream is not None:
            stream.interrupt()

    def session(self) -> None:
        try:
            stream = self._client.watch_nftables(silence_timeout=self._silence_timeout)
        except ActuatorRefused as e:
            if e.reason in NOT_OFFERED:
                raise WatchUnsupported(
                    f"the actuator does not offer nftables watches ({e.reason}: "
                    f"{e.message[:120]}); upgrade it to get notices") from None
            raise
        with self._stream_lock:
            self._stream = stream
        try:
            if self.stopping():
                return
            self.live(f"nftables notices from the actuator at {self._client.socket_path}")
            while True:
                try:
                    notice = stream.next()
                except ActuatorError as e:
                    if self.stopping():
                        return
                    raise WatchLost(str(e)) from None
                if notice.ended is not None:
                    raise WatchLost(f"the actuator ended the stream: {notice.ended} "
                                    f"{notice.message}".strip())
                if notice.changed is not None:
                    for key, t in self.targets().items():
                        if t.nftables:
                            self.hint(key)
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()
