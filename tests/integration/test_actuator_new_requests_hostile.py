"""A compromised agent against the actuator's newer requests: the nftables watch
stream, backup reads and `collect_finished` (docs/threat-model.md, position 3).

The actuator is the real process, root, inside a throwaway network namespace
(its `nft` is the namespace's), on a unix socket 0660 root:65534; every
attacker is a forked child that dropped to uid 65534, the allowed agent user
here, so what SO_PEERCRED reports is what the actuator decides on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.actuator.server import CONNECTION_TIMEOUT, MAX_CONNECTIONS
from tests.harness.actuator_process import (
    ActuatorProcess,
    fd_count,
    nft_children,
    settled,
    thread_count,
    write_config,
)
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.harness.unprivileged import NOBODY, run_as
from tests.harness.wait import wait_for

pytestmark = pytest.mark.integration

FW_RULESET = "table inet n_fw {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n"
LIST = json.dumps({"observe": ["nft", "-j", "list", "ruleset"]}).encode()
WATCH = json.dumps({"watch": "nftables"}).encode()


@pytest.fixture
def actuator() -> Iterator[ActuatorProcess]:
    require_root()
    require_tool("nft")
    require_tool("ip")
    # Outside pytest's 0700 tmp tree, so uid 65534 can reach the socket.
    work = Path(tempfile.mkdtemp(prefix="act-new-req-", dir="/tmp"))
    work.chmod(0o755)
    ruleset = work / "baseline.nft"
    ruleset.write_text(FW_RULESET)
    config = write_config(work, {"firewall": {
        "ruleset_path": str(ruleset),
        "ruleset_sha256": hashlib.sha256(FW_RULESET.encode()).hexdigest()}})
    try:
        with NetNamespace("act-new") as ns:
            act = ActuatorProcess(ns, work, config)
            act.start()
            try:
                yield act
            finally:
                act.stop()
                print(act.log())  # the per-request lines, shown when a test fails
    finally:
        shutil.rmtree(work, ignore_errors=True)


def exchange(path: Path, body: bytes, timeout: float = 10.0) -> dict[str, Any]:
    """One request, its first reply frame (or {"closed": why})."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        with contextlib.suppress(OSError):
            s.sendall(struct.pack(">I", len(body)) + body)
        return first_frame(s)


def first_frame(s: socket.socket) -> dict[str, Any]:
    try:
        head = s.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return {"closed": f"{len(head)} header bytes"}
        (size,) = struct.unpack(">I", head)
        return json.loads(s.recv(size, socket.MSG_WAITALL))  # type: ignore[no-any-return]
    except (OSError, ValueError) as e:
        return {"closed": str(e)}


def test_drip_fed_requests_cannot_hold_the_request_slots(actuator: ActuatorProcess) -> None:
    """Slowloris: every slot held by a peer that sends one byte of its request per
    second (each recv well inside the read timeout). A peer has CONNECTION_TIMEOUT
    for its whole request, so after that the slots are free again and a request is
    served, however long the drip would go on."""

    def attack() -> dict[str, Any]:
        drippers = []
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2.0)
            s.connect(str(actuator.socket))
            s.sendall(struct.pack(">I", 4096) + b"{")  # a big frame, sent a byte at a time
            drippers.append(s)
        started = time.monotonic()
        deadline = started + CONNECTION_TIMEOUT + 15
        busy = 0
        served_after = None
        while time.monotonic() < deadline:
            for s in drippers:
                with contextlib.suppress(OSError):
                    s.send(b" ")
            reply = exchange(actuator.socket, LIST, timeout=5)
            if reply.get("status") == "ok":
                served_after = time.monotonic() - started
                break
            busy += reply.get("reason") == "Busy"
            time.sleep(1.0)
        cut = [first_frame(s) for s in drippers]
        for s in drippers:
            s.close()
        return {"busy": busy, "served_after": served_after, "cut": cut}

    out = run_as(NOBODY, attack)
    assert out["busy"] >= 1, f"the drip-feeders never held the slots: {out}"
    assert out["served_after"] is not None, f"the slots stayed held: {out}"
    assert out["served_after"] < CONNECTION_TIMEOUT + 5, out
    for reply in out["cut"]:
        assert reply.get("reason") == "MalformedRequest" or "closed" in reply, reply
    assert "reading request" in actuator.log()


def test_racing_watch_requests_open_one_stream_and_one_monitor(
    actuator: ActuatorProcess,
) -> None:
    """As many watch requests at once as there are request slots (more would meet
    the slots' own Busy): one stream, every other one Busy; never more than one
    `nft monitor`, and nothing of them left once all hang up."""
    idle_threads = settled(lambda: thread_count(actuator.pid))
    idle_fds = settled(lambda: fd_count(actuator.pid))
    most = [0]
    sampling = threading.Event()
    sampling.set()

    def sample() -> None:
        while sampling.is_set():
            most[0] = max(most[0], len(nft_children(actuator.pid)))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    def attack() -> list[dict[str, Any]]:
        socks = []
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(str(actuator.socket))
            socks.append(s)
        go = threading.Barrier(len(socks))
        firsts: list[dict[str, Any]] = [{} for _ in socks]

        def one(i: int) -> None:
            go.wait(10)
            socks[i].sendall(struct.pack(">I", len(WATCH)) + WATCH)
            firsts[i] = first_frame(socks[i])

        workers = [threading.Thread(target=one, args=(i,)) for i in range(len(socks))]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
        for s in socks:
            s.close()
        return firsts

    try:
        firsts = run_as(NOBODY, attack)
        assert wait_for(lambda: nft_children(actuator.pid) == [])
    finally:
        sampling.clear()
        sampler.join(10)
    opened = [f for f in firsts if f.get("watching") == "nftables"]
    busy = [f for f in firsts if f.get("reason") == "Busy"]
    kinds = sorted(f.get("closed") or f"{f.get('reason')}: {f.get('message', '')[:30]}" for f in firsts)
    assert len(opened) == 1 and len(busy) == len(firsts) - 1, "; ".join(kinds)
    assert most[0] <= 1, f"{most[0]} nft monitors at once"
    # a leak shows as more than at idle (never fewer)
    assert wait_for(lambda: thread_count(actuator.pid) <= idle_threads)
    assert wait_for(lambda: fd_count(actuator.pid) <= idle_fds), "no socket or pipe left open"


# The new request kinds, malformed every way a peer can, and what the same parser
# failed on: each a stable refusal.
MALFORMED: list[tuple[bytes, set[str]]] = [
    (b'{"watch": null}', {"InvalidParams"}),
    (b'{"watch": 1}', {"InvalidParams"}),
    (b'{"watch": ["nftables"]}', {"InvalidParams"}),
    (b'{"watch": {"nftables": true}}', {"InvalidParams"}),
    (b'{"watch": "NFTABLES"}', {"InvalidParams"}),
    (b'{"watch": "nftables\\u0000"}', {"InvalidParams"}),
    (b'{"watch": "nftables", "interval": 0}', {"InvalidParams"}),
    (b'{"watch": "nftables", "observe": ["nft", "-j", "list", "ruleset"]}', {"InvalidParams"}),
    (b'{"watch": "nftables", "watch": "ruleset"}', {"InvalidParams"}),
    (json.dumps({"watch": "n" * 1_900_000}).encode(), {"InvalidParams"}),
    (b'{"watch": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {"MalformedRequest"}),
    (b'{"watch": ' + b"[" * 900 + b"]" * 900 + b"}", {"InvalidParams", "MalformedRequest"}),
    # past Python's limit on digits in an int: json.loads raises a plain ValueError
    (b'{"watch": 1' + b"0" * 5000 + b"}", {"MalformedRequest"}),
    (b'{"collect_finished": -' + b"9" * 4400 + b"}", {"MalformedRequest"}),
    (b'{"observe": ["nft"], "timeout": ' + b"1" * 4301 + b"}", {"MalformedRequest"}),
    (b'{"collect_finished": null}', {"InvalidParams"}),
    (b'{"collect_finished": ["NixosRebuild"]}', {"InvalidParams"}),
    (b'{"collect_finished": "RestartUnit"}', {"InvalidParams"}),
    (b'{"collect_finished": "NixosRebuild", "txid": "abc"}', {"InvalidParams"}),
    (b'{"collect_finished": "NixosRebuild", "watch": "nftables"}', {"InvalidParams"}),
    (b'{"observe": ["restic"], "timeout": 1e400}', {"InvalidParams"}),
    (b'{"observe": ["nft", "-j", "list", "ruleset"], "timeout": NaN}', {"InvalidParams"}),
    (b'{"observe": ["nft", "-j", "list", "ruleset"], "timeout": 31}', {"InvalidParams"}),
    # an action type that cannot be looked up (unhashable)
    (b'{"action": {"type": ["NixosRebuild"]}}', {"UnknownAction"}),
    (b'{"action": {"type": {"NixosRebuild": 1}}}', {"UnknownAction"}),
    (b'["watch", "nftables"]', {"MalformedRequest"}),
    (b'"watch"', {"MalformedRequest"}),
]


def test_malformed_new_requests_are_refused_and_the_actuator_keeps_serving(
    actuator: ActuatorProcess,
) -> None:
    def attack() -> list[dict[str, Any]]:
        return [exchange(actuator.socket, body, timeout=30) for body, _ in MALFORMED]

    replies = run_as(NOBODY, attack)
    for (body, reasons), reply in zip(MALFORMED, replies, strict=True):
        assert reply.get("status") == "refused" and reply.get("reason") in reasons, \
            (body[:80], reply)
    assert nft_children(actuator.pid) == [], "no malformed watch started a monitor"
    assert actuator.proc is not None and actuator.proc.poll() is None
    served = run_as(NOBODY, lambda: exchange(actuator.socket, LIST))
    assert served["status"] == "ok", served
    stream = run_as(NOBODY, lambda: exchange(actuator.socket, WATCH))
    assert stream.get("watching") == "nftables", stream
    assert "InternalError" not in actuator.log() and "Traceback" not in actuator.log()
    # every request is on record, with its verdict
    assert actuator.log().count(f"peer_uid={NOBODY} ") >= len(MALFORMED) + 2


def test_collect_finished_without_a_transaction_hands_over_nothing(
    actuator: ActuatorProcess,
) -> None:
    """No journal: ok and no result, twice; nothing written to the actuator's state."""
    body = json.dumps({"collect_finished": "NixosRebuild"}).encode()
    replies = run_as(NOBODY, lambda: [exchange(actuator.socket, body) for _ in range(2)])
    for reply in replies:
        assert reply["status"] == "ok" and reply["result"] is None, reply
    state = actuator.workdir / "actuator-state"
    assert not state.exists() or not any(p.name.startswith("rebuild") for p in state.iterdir())
