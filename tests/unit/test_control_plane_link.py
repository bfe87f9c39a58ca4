"""The control-plane connection as a daemon companion (built after READY)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from reconciler.service import ControlPlaneLink


class FakeLoop:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stats = SimpleNamespace(http_offset_ms=-2500.0)

    def start(self) -> None:
        self.calls.append("start")

    def kick(self) -> None:
        self.calls.append("kick")

    def stop(self) -> None:
        self.calls.append("stop")


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_built_once_started_kicked_and_stopped() -> None:
    built: list[FakeLoop] = []

    def build() -> Any:
        built.append(FakeLoop())
        return built[-1]

    link = ControlPlaneLink(build)
    assert link.loop is None and link.http_offset_ms() is None
    link.pass_done()  # nothing built yet: nothing to kick, no error
    link.start()
    wait_for(lambda: bool(built) and built[0].calls == ["start"])
    assert link.connect() is built[0] and len(built) == 1
    assert link.http_offset_ms() == -2500.0
    link.pass_done()
    link.stop()
    assert built[0].calls == ["start", "kick", "stop"]


def test_stop_during_set_up_never_starts_the_loop() -> None:
    building, release, built = threading.Event(), threading.Event(), threading.Event()
    loop = FakeLoop()

    def slow_build() -> Any:
        building.set()
        release.wait(5)
        built.set()
        return loop

    link = ControlPlaneLink(slow_build)
    link.start()
    assert building.wait(5)
    link.stop()
    assert not built.is_set(), "stop() returned without waiting for the set-up"
    release.set()
    wait_for(lambda: loop.calls == ["stop"])
    assert "start" not in loop.calls


def test_offline_when_the_client_cannot_be_built() -> None:
    link = ControlPlaneLink(lambda: None)
    link.start()
    link.stop()
    assert link.connect() is None and link.http_offset_ms() is None
