"""Fault injection on the real daemon (issue 14): `compliance-agent run` against
the demo control plane over mutual TLS on loopback.

* SIGKILL during order admission while the control plane serves hundreds of
  orders: every valid order is admitted exactly once, with its evidence; no
  valid order is ever recorded as a replay; forged replays are still refused.
* Wall-clock steps both ways with libfaketime (the monotonic clock stays
  real): snapshots and delivery continue, the control plane never sees a gap,
  and each step is logged and recorded.
* Two daemons on one state directory: the second exits non-zero at once,
  naming the first one's pid; the first one's status socket stays.

Each test adds one line (kills, orders, bundles, gaps, duplicates) to the
"fault campaign" section of the pytest terminal summary.
"""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from demo.control_plane.app import build_summary
from demo.control_plane.dsse import ORDER_TYPE, canonical, sign
from reconciler.ops.status_server import unix_get
from reconciler.store.database import StoreError, open_store
from reconciler.trust.keys import generate_key_file
from tests.harness.require import require_tool, unavailable
from tests.support.control_plane import REPO_ROOT, ControlPlaneThread, wait_for
from tests.support.fault_report import report
from tests.support.tls import TlsFiles, make_tls

pytestmark = pytest.mark.integration

SITE, HOST = "clinic-1", "host-fault"
ORDERS = int(os.environ.get("FAULT_TEST_ORDERS", "300"))
KILLS = int(os.environ.get("FAULT_TEST_KILLS", "15"))
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1")


# -- helpers -----------------------------------------------------------------------

def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the agent's state DB, read-only; [] while it does not exist yet."""
    if not db.exists():
        return []
    try:
        store = open_store(db, readonly=True)
    except StoreError:
        return []  # created but not migrated yet: the daemon was killed early
    try:
        with store.begin() as conn:
            return [tuple(r) for r in conn.execute(text(sql)).all()]
    except OperationalError:
        return []
    finally:
        store.close()


def _order_rows(db: Path) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in _query(
        db, "SELECT order_id, outcome FROM evidence_bundles WHERE check_name = 'order'")]


def _undelivered(db: Path) -> int:
    rows = _query(db, "SELECT COUNT(*) FROM outbox WHERE state != 'delivered'")
    return int(rows[0][0]) if rows else -1


def _bundles(db: Path, check: str | None = None) -> int:
    where = f" WHERE check_name = '{check}'" if check else ""
    rows = _query(db, f"SELECT COUNT(*) FROM evidence_bundles{where}")
    return int(rows[0][0]) if rows else 0


def _periodic_snapshots(evidence_dir: Path) -> int:
    """Bundles written because the snapshot interval elapsed (not for a condition
    change or an action): the timer a wall-clock step must not stop."""
    count = 0
    for f in evidence_dir.glob("*.json"):
        try:
            env = json.loads(f.read_bytes())
            facts = json.loads(base64.b64decode(env["payload"]))["predicate"]["facts"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written
        count += facts.get("evidence_reason") == "periodic snapshot"
    return count


class Agent:
    """Config, state and log of one agent under test, and its daemon processes."""

    def __init__(self, tmp: Path, tls: TlsFiles, cp: ControlPlaneThread, **extra: Any) -> None:
        self.tmp = tmp
        (tmp / "baseline.json").write_text(json.dumps({
            "version": 1, "policy_version": "1.0", "encryption": {"devices": []}}))
        self.config = tmp / "config.json"
        self.config.write_text(json.dumps({
            "siteId": SITE, "hostId": HOST, "deploymentMode": "direct",
            "baselinePath": str(tmp / "baseline.json"),
            "clientCertFile": str(tls.client_cert), "clientKeyFile": str(tls.client_key),
            "signingKeyFile": str(tmp / "signing.key"), "caCertFile": str(tls.ca_cert),
            "mcpPublicKeys": [bytes(cp.signing_key.verify_key).hex()], "mcpUrl": cp.url(),
            "allowedHosts": ["localhost"], "stateDirectory": str(tmp / "state"),
            "statusSocket": None, "pollInterval": 1, "orderTtl": 3600, **extra,
        }))
        self.db = tmp / "state" / "state.db"
        self.log_path = tmp / "daemon.log"

    def started_runs(self) -> int:
        """How many daemon runs have logged that they are up (READY)."""
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count("msg=started")

    def start(self, env: dict[str, str] | None = None,
              stderr: int | None = None) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "reconciler.cli", "run", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log,
                                    stderr=stderr if stderr is not None else log,
                                    env={**os.environ, **(env or {})})


def parts(tmp: Path) -> tuple[TlsFiles, str]:
    """TLS files and the agent's signing key (its public half for the control plane)."""
    return make_tls(tmp / "tls"), generate_key_file(tmp / "signing.key").public_key_hex


@contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0, "the daemon stops cleanly on SIGTERM"


def signed_order(cp: ControlPlaneThread, order_id: str, nonce: str, action: str,
                 host: str = HOST) -> dict[str, Any]:
    payload = {
        "order_id": order_id, "site_id": SITE, "host_id": host, "nonce": nonce,
        "issued_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ttl_seconds": 3600, "action": action, "params": {},
    }
    return sign(cp.signing_key, canonical(payload), ORDER_TYPE)


def assert_all_delivered_or_queued(db: Path, cp: ControlPlaneThread) -> None:
    """Nothing lost, nothing foreign: every indexed bundle is at the control plane or
    still queued (one written while the daemon stopped), and it holds nothing else."""
    index = {r[0] for r in _query(db, "SELECT bundle_id FROM evidence_bundles")}
    queued = {r[0] for r in _query(db, "SELECT bundle_id FROM outbox WHERE state = 'queued'")}
    at_cp = {e.bundle_id for e in cp.storage.evidence()}
    assert at_cp <= index, "the control plane holds bundles the agent never indexed"
    assert index - at_cp <= queued, "indexed bundles neither delivered nor queued"
    assert len(queued - at_cp) <= 3, "more than a stop's worth of bundles left undelivered"


class GapWatch:
    """Samples the control plane's chain while the test runs: a gap is a bundle
    stored there while an earlier one of the chain is not."""

    def __init__(self, cp: ControlPlaneThread) -> None:
        self.cp = cp
        self.max_gaps = 0
        self.samples = 0

    def sample(self) -> dict[str, Any]:
        summary = build_summary(self.cp.storage)
        self.samples += 1
        self.max_gaps = max(self.max_gaps, summary["gaps"])
        return summary

    def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        def check() -> bool:
            self.sample()
            return predicate()

        wait_for(check, timeout, what)


# -- SIGKILL during order admission --------------------------------------------------

def test_sigkill_during_order_admission_admits_every_order_exactly_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED", str(time.time_ns())))
    rng = random.Random(seed)
    tls, agent_key = parts(tmp_path)
    with ControlPlaneThread(tls, tmp_path / "cp.db", [agent_key]) as cp:
        agent = Agent(tmp_path, tls, cp, evidenceSnapshotInterval=3600)
        valid: list[str] = []
        foreign: list[str] = []
        forged: list[str] = []
        nonces: list[str] = []

        def add_orders(n: int) -> None:
            for _ in range(n):
                r = rng.random()
                oid = "ord_" + secrets.token_hex(6)
                if r < 0.05 and nonces:  # a forged replay: another order reusing a nonce
                    forged.append(oid)
                    env = signed_order(cp, oid, rng.choice(nonces), "reconcile_now")
                elif r < 0.10:  # for another host: refused
                    foreign.append(oid)
                    env = signed_order(cp, oid, secrets.token_hex(16), "reconcile_now",
                                       host="someone-else")
                else:
                    nonce = secrets.token_hex(16)
                    nonces.append(nonce)
                    valid.append(oid)
                    env = signed_order(cp, oid, nonce,
                                       rng.choice(["reconcile_now", "collect_evidence"]))
                cp.storage.add_order(SITE, HOST, env)

        kills = 0
        kills_mid_page = 0
        added = 0
        deadline = time.monotonic() + 240
        per_round = max(2, ORDERS // KILLS)
        while (added < ORDERS or kills < KILLS) and time.monotonic() < deadline:
            # Every round brings new orders (so the run has admission work to be
            # killed in), some rounds more than a page of them.
            batch = rng.choice([per_round // 2, per_round, per_round * 4])
            add_orders(batch)
            added += batch
            handled = len(_order_rows(agent.db))
            with running(agent.start()) as proc:
                wait_for(lambda p=proc, h=handled: p.poll() is not None
                         or len(_order_rows(agent.db)) > h, 60, "an order to be handled")
                assert proc.poll() is None, "daemon exited on its own: see daemon.log"
                time.sleep(rng.uniform(0.0, 0.1))  # the random kill point, not a wait
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                kills += 1
            if len({o for o, _ in _order_rows(agent.db)}) < added:
                kills_mid_page += 1  # killed with orders still to handle
        # A last run handles what is left and drains the outbox, then stops cleanly.
        total_orders = len(valid) + len(foreign) + len(forged)
        gaps = GapWatch(cp)
        up = agent.started_runs()
        with running(agent.start()) as proc:
            # Up first (SIGTERM before start-up ends is not the clean stop tested here).
            wait_for(lambda: agent.started_runs() > up, 60, "the last run to start")
            gaps.until(lambda: {o for o, _ in _order_rows(agent.db)} >= set(valid + foreign
                                                                              + forged),
                       120, "every order to be handled")
            gaps.until(lambda: _undelivered(agent.db) == 0, 120, "the outbox to drain")
            stop(proc)

        rows = _order_rows(agent.db)
        per_order = Counter(o for o, _ in rows)
        outcomes = {(o, oc) for o, oc in rows}
        double = [o for o in valid if per_order[o] != 1]
        refused_valid = [o for o in valid if (o, "rejected") in outcomes]
        summary = gaps.sample()
        index = _query(agent.db, "SELECT bundle_id FROM evidence_bundles ORDER BY sequence")
        triggers = {r[0] for r in _query(agent.db, "SELECT order_id FROM order_triggers")}
        report(request.config, (
            f"order admission under SIGKILL: kills={kills} (mid-page {kills_mid_page}) "
            f"orders={total_orders} valid={len(valid)} admitted_once="
            f"{sum(per_order[o] == 1 for o in valid)} forged_replays={len(forged)} "
            f"foreign={len(foreign)} spurious_replayed={len(refused_valid)} "
            f"bundles={len(index)} gaps={summary['gaps']} "
            f"duplicates={len(double) + sum(len(h['forks']) for h in summary['hosts'].values())}"
            f" redeliveries_deduplicated={summary['duplicates_suppressed']} seed={seed}"))
        assert len(valid) >= ORDERS * 0.8 and kills >= KILLS
        assert kills_mid_page >= 3, "too few kills landed while orders were being admitted"
        assert not double, f"valid orders not admitted exactly once: {double[:5]}"
        assert not refused_valid, f"valid orders recorded as refused: {refused_valid[:5]}"
        assert all((o, "success") in outcomes for o in valid)
        assert set(valid) <= triggers and not (set(forged) | set(foreign)) & triggers
        assert all((o, "rejected") in outcomes for o in forged + foreign)
        assert summary["chain_intact"] and summary["gaps"] == 0 and gaps.max_gaps == 0
        assert_all_delivered_or_queued(agent.db, cp)


# -- wall-clock steps (libfaketime) ----------------------------------------------------

def _faketime_lib() -> str:
    require_tool("faketime")  # Debian package faketime (scripts/debian-packages.txt)
    for lib in FAKETIME_LIBS:
        if Path(lib).exists():
            return lib
    unavailable("libfaketimeMT.so.1 not found (install the Debian package faketime)")


def test_wall_clock_steps_neither_stall_nor_reorder_snapshots_and_delivery(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    lib = _faketime_lib()
    offset = tmp_path / "faketime.offset"
    offset.write_text("+0s\n")
    env = {
        "LD_PRELOAD": lib,
        "FAKETIME_TIMESTAMP_FILE": str(offset),  # read again on every call:
        "FAKETIME_NO_CACHE": "1",  # so rewriting it steps the daemon's clock
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # the monotonic clock stays real
    }
    tls, agent_key = parts(tmp_path)
    with ControlPlaneThread(tls, tmp_path / "cp.db", [agent_key]) as cp:
        agent = Agent(tmp_path, tls, cp, evidenceSnapshotInterval=1)
        gaps = GapWatch(cp)

        def delivered() -> int:
            return len(cp.storage.evidence())

        def more_snapshots(n: int) -> Callable[[], bool]:
            start = _periodic_snapshots(agent.tmp / "state" / "evidence")
            return lambda: _periodic_snapshots(agent.tmp / "state" / "evidence") >= start + n

        phases: list[str] = []
        with running(agent.start(env=env)) as proc:
            gaps.until(lambda: delivered() >= 3, 60, "the first bundles to arrive")
            # +3 days while the control plane is down: retries get scheduled then.
            cp.set_outage(True)
            offset.write_text("+3d\n")
            gaps.until(lambda: _query(agent.db, "SELECT COUNT(*) FROM outbox WHERE"
                                      " state = 'queued' AND attempts > 0")[0][0] >= 3,
                       60, "bundles to fail delivery with the clock 3 days ahead")
            gaps.until(more_snapshots(3), 60, "snapshots with the clock 3 days ahead")
            phases.append("+3d outage")
            # Corrected, and the control plane is back: everything drains, in order.
            offset.write_text("+0s\n")
            cp.set_outage(False)
            gaps.until(more_snapshots(3), 60, "snapshots after the correction")
            gaps.until(lambda: _undelivered(agent.db) == 0, 90,
                       "the queue to drain after the correction (nothing parked 72 h ahead)")
            phases.append("-3d")
            # 2 h back: periodic snapshots must go on, and be delivered.
            offset.write_text("-2h\n")
            gaps.until(more_snapshots(3), 60, "snapshots with the clock 2 h back")
            gaps.until(lambda: _undelivered(agent.db) == 0, 90, "delivery with the clock 2 h back")
            phases.append("-2h")
            offset.write_text("+0s\n")
            gaps.until(more_snapshots(2), 60, "snapshots after the clock came back")
            gaps.until(lambda: _undelivered(agent.db) == 0, 90, "the final drain")
            phases.append("+2h")
            stop(proc)

        summary = gaps.sample()
        index = _query(agent.db, "SELECT bundle_id FROM evidence_bundles ORDER BY sequence")
        steps = _bundles(agent.db, "clock_step")
        log = agent.log_path.read_text()
        report(request.config, (
            f"wall-clock steps {' '.join(phases)}: kills=0 orders=0 bundles={len(index)} "
            f"delivered={delivered()} gaps_max_seen={gaps.max_gaps} (samples {gaps.samples}) "
            f"duplicates={sum(len(h['forks']) for h in summary['hosts'].values())} "
            f"clock_step_bundles={steps}"))
        assert gaps.max_gaps == 0, "the control plane saw a bundle before its predecessor"
        assert summary["chain_intact"] and summary["gaps"] == 0
        assert_all_delivered_or_queued(agent.db, cp)
        assert steps >= 4 and log.count("wall clock stepped") >= 4


# -- two daemons on one state directory -----------------------------------------------

def test_a_second_daemon_on_the_same_state_directory_exits_naming_the_first(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    tls, agent_key = parts(tmp_path)
    sock = tmp_path / "run" / "status.sock"
    with ControlPlaneThread(tls, tmp_path / "cp.db", [agent_key]) as cp:
        agent = Agent(tmp_path, tls, cp, evidenceSnapshotInterval=60, statusSocket=str(sock))

        def answers() -> bool:
            try:
                return unix_get(sock, "/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        with running(agent.start()) as first:
            wait_for(lambda: first.poll() is not None or answers(), 30, "the status socket")
            assert first.poll() is None, "the first daemon exited: see daemon.log"
            with running(agent.start(stderr=subprocess.PIPE)) as second:
                try:
                    _, err = second.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    pytest.fail("the second daemon kept running on a locked state directory")
            assert second.returncode != 0
            assert f"pid {first.pid}" in err.decode(), err.decode()
            assert first.poll() is None and answers(), "the first daemon and its socket live on"
            stop(first)
        assert not sock.exists(), "the owner removes its socket when it stops"
        report(request.config, (
            f"two daemons: second exit={second.returncode} naming pid {first.pid}; "
            f"first socket intact; kills=0 orders=0 bundles={_bundles(agent.db)} gaps=0 "
            f"duplicates=0"))
