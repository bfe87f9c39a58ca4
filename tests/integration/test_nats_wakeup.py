"""Order wake-ups through a real nats-server (TLS with client certificates).

A wake-up makes the agent poll at once, so a signed order is admitted long
before the 300 s poll interval would have fetched it; junk and floods cost at
most rate-limited polls and change nothing else; with NATS killed polling goes
on, and once NATS is back wake-ups resume.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from reconciler.delivery.wakeup import BURST, POLLS_PER_MINUTE, WatchState, wakeup_subject
from reconciler.store.meta import MetaStore
from tests.support.nats_stack import HOST, SITE, signed_order, wait_until, wakeup_stack

pytestmark = pytest.mark.integration


def publish(url: str, tls_files: object, subject: str, payloads: list[bytes]) -> None:
    import nats

    async def run() -> None:
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))  # type: ignore[attr-defined]
        ctx.load_cert_chain(str(tls_files.client_cert), str(tls_files.client_key))  # type: ignore[attr-defined]
        nc = await nats.connect(url, tls=ctx)
        for p in payloads:
            await nc.publish(subject, p)
        await nc.flush()
        await nc.close()

    asyncio.run(run())


def test_a_wakeup_makes_the_agent_fetch_and_admit_an_order_long_before_the_poll(
    tmp_path: Path,
) -> None:
    with wakeup_stack(tmp_path, poll_interval=300) as st:
        wait_until(lambda: st.watcher.snapshot().state is WatchState.connected, 15, "connected")
        wait_until(lambda: st.loop.stats.polls >= 1, 15, "the first interval poll")
        st.queue_order()
        wait_until(lambda: st.loop.stats.orders_admitted == 1, 30,
                   "the order to be admitted (the next interval poll is 270+ s away)")
        assert st.loop.stats.requested_polls >= 1
        assert st.loop.stats.polls == 1 + st.loop.stats.requested_polls  # no interval poll
        assert st.watcher.snapshot().wakeups >= 1
        doc = json.loads(MetaStore(st.svc.agent.store).get("order_wakeups") or "null")
        assert doc is not None and doc["state"] == "connected" and doc["polls_requested"] >= 1
        metrics = st.svc.agent.metrics.exposition().decode()
        assert 'compliance_agent_order_wakeup_watch_state{state="connected"} 1.0' in metrics
        assert "compliance_agent_order_wakeup_polls_total" in metrics


def test_forged_and_flooding_wakeups_cause_only_rate_limited_polls(tmp_path: Path) -> None:
    with wakeup_stack(tmp_path, poll_interval=300) as st:
        wait_until(lambda: st.watcher.snapshot().state is WatchState.connected, 15, "connected")
        wait_until(lambda: st.loop.stats.polls >= 1, 15, "the first interval poll")
        forged = json.dumps(signed_order(st.cp.signing_key)).encode()  # content is ignored
        junk = [forged, b"", b"\x00" * 60000, b"poll now!", b'{"orders": []}'] * 100
        subject = wakeup_subject(SITE, HOST)


        started = time.monotonic()
        publish(st.nats.url, st.tls, subject, junk)
        wait_until(lambda: st.watcher.snapshot().wakeups >= len(junk), 30, "all junk received")
        elapsed = time.monotonic() - started
        snap = st.watcher.snapshot()
        allowed = BURST + POLLS_PER_MINUTE / 60.0 * elapsed + 1
        assert snap.polls_requested <= allowed, (snap, elapsed)
        assert st.loop.stats.requested_polls <= snap.polls_requested
        assert snap.throttled >= len(junk) - allowed
        # nothing else: no order seen, no verdict, no trigger; the watch stays up
        assert st.loop.stats.orders_admitted == 0
        assert not st.loop.recent_verdicts
        assert not st.svc.triggers.active(st.loop.clock())
        assert snap.state is WatchState.connected
        assert st.loop.stats.poll_errors == 0


def test_nats_killed_polling_continues_then_wakeups_resume(tmp_path: Path) -> None:
    with wakeup_stack(tmp_path, poll_interval=2) as st:
        wait_until(lambda: st.watcher.snapshot().state is WatchState.connected, 15, "connected")
        st.nats.stop(kill=True)
        wait_until(lambda: st.watcher.snapshot().state is not WatchState.connected, 30,
                   "the watch to notice the server is gone")
        polls = st.loop.stats.polls
        wait_until(lambda: st.loop.stats.polls >= polls + 2, 30, "interval polls without NATS")
        st.queue_order()
        wait_until(lambda: st.loop.stats.orders_admitted == 1, 30, "admission by polling")
        store_doc = json.loads(MetaStore(st.svc.agent.store).get("order_wakeups") or "null")
        assert store_doc is not None and store_doc["state"] in ("backoff", "connecting")
        assert store_doc["last_error"]

        st.nats.start()  # same port, same JetStream store
        wait_until(lambda: st.watcher.snapshot().state is WatchState.connected, 90,
                   "the watch to reconnect with backoff")
        assert st.watcher.snapshot().connects >= 2
        wakeups = st.watcher.snapshot().wakeups
        st.queue_order()
        wait_until(lambda: st.watcher.snapshot().wakeups > wakeups, 30, "a wake-up again")
        wait_until(lambda: st.loop.stats.orders_admitted == 2, 30, "the second order")


@pytest.mark.parametrize(("greeting", "error"), [
    (None, "no INFO"),  # accepts TCP, then says nothing
    (b'INFO {"max_payload": 1048576}\r\n', "does not offer TLS"),  # plaintext only
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "expected INFO"),  # not NATS at all
])
def test_a_silent_or_hostile_server_leaves_polling_alone(
    tmp_path: Path, greeting: bytes | None, error: str
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                peer, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(peer)
            if greeting is not None:
                peer.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with wakeup_stack(tmp_path, poll_interval=1,
                          nats_url=f"tls://localhost:{port}") as st:
            wait_until(lambda: (st.watcher.snapshot().last_error or "").find(error) >= 0, 30,
                       f"the watch to fail with {error!r}")
            assert st.watcher.snapshot().state is not WatchState.connected
            wait_until(lambda: st.loop.stats.polls >= 2, 30, "interval polls meanwhile")
            st.queue_order()
            wait_until(lambda: st.loop.stats.orders_admitted == 1, 30, "admission by polling")
            assert st.loop.stats.requested_polls == 0
            assert accepted  # it did dial the hostile server
    finally:
        stop.set()
        thread.join(5)
        for peer in accepted:
            peer.close()
        listener.close()


def test_the_real_daemon_watches_wakeups_and_shows_it_in_status(tmp_path: Path) -> None:
    import base64
    import subprocess
    import sys

    from nacl.signing import SigningKey

    from demo.control_plane.fanout import FanOut, client_tls
    from reconciler.trust.keys import generate_key_file
    from tests.support.control_plane import REPO_ROOT, ControlPlaneThread
    from tests.support.nats_stack import start_nats
    from tests.support.tls import make_tls

    tls = make_tls(tmp_path / "tls")
    nats = start_nats(tmp_path / "nats", tls)
    signer = generate_key_file(tmp_path / "signing.key")
    (tmp_path / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0", "encryption": {"devices": []}}))
    cp_key = SigningKey.generate()
    config = tmp_path / "config.json"
    try:
        with ControlPlaneThread(tls, tmp_path / "cp.db", [signer.public_key_hex],
                                signing_key=cp_key) as cp:
            fanout = FanOut(cp.storage, nats.url, client_tls(tls.ca_cert, tls.server_pem, None))
            fanout.start()
            config.write_text(json.dumps({
                "siteId": SITE, "hostId": HOST, "deploymentMode": "direct",
                "baselinePath": str(tmp_path / "baseline.json"),
                "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),
                "signingKeyFile": str(tmp_path / "signing.key"), "caCertFile": str(tls.ca_cert),
                "mcpPublicKeys": [bytes(cp_key.verify_key).hex()], "mcpUrl": cp.url(),
                "allowedHosts": ["localhost"], "natsUrl": nats.url_for("localhost"),
                "stateDirectory": str(tmp_path / "state"), "statusSocket": None,
                "pollInterval": 300,
            }))

            def status() -> dict[str, object]:
                out = subprocess.run(
                    [sys.executable, "-m", "reconciler.cli", "status", "--output", "json",
                     "--config", str(config)], cwd=REPO_ROOT, capture_output=True, text=True,
                    timeout=60)
                return json.loads(out.stdout) if out.returncode == 0 else {}

            def order_evidence() -> list[dict[str, object]]:
                preds = [json.loads(base64.b64decode(json.loads(e.envelope)["payload"]))
                         ["predicate"] for e in cp.storage.evidence()]
                return [p for p in preds if p.get("check") == "order"]

            log = (tmp_path / "daemon.log").open("ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "reconciler.cli", "run", "--config", str(config)],
                cwd=REPO_ROOT, stdout=log, stderr=log)
            try:
                wait_until(lambda: (status().get("order_wakeups") or {}).get("state")
                           == "connected", 60, "status to show the watch connected")
                cp.storage.add_order(SITE, HOST, signed_order(cp_key))
                wait_until(order_evidence, 60, "the order's verdict to reach the control plane "
                           "(the next poll is 300 s away)")
                assert order_evidence()[0]["outcome"] == "success"
            finally:
                proc.terminate()
                assert proc.wait(20) == 0
                log.close()
                fanout.stop()
        assert (status().get("order_wakeups") or {}).get("state") == "stopped"
        assert "order wake-ups: stopped" in subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "status", "--config", str(config)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60).stdout
    finally:
        nats.stop()
