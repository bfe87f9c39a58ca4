"""Order admission is one transaction (issue 14, finding 2): the nonce, the
trigger, the verdict's evidence and its outbox entry commit together or not
at all; the order cursor never skips an order that was not durably handled;
a re-read of an admitted order is recognised, not reported as a replay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, text

from reconciler.delivery.client import OrdersPage
from reconciler.delivery.loop import ControlPlaneLoop
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import Store, open_store
from reconciler.store.meta import ORDERS_CURSOR, MetaStore
from reconciler.store.nonces import NonceStore
from reconciler.store.outbox import Outbox
from reconciler.store.triggers import TriggerStore
from reconciler.trust.admission import OrderAdmission
from tests.unit.test_trust_support import (
    AGENT_SIGNER,
    HOST,
    MCP_SIGNER,
    SITE,
    later,
    order_payload,
    sign_order,
)


class FlakyHook:
    """An on_stored hook that fails on chosen calls, like a full disk would."""

    def __init__(self) -> None:
        self.fail_on: set[int] = set()
        self.calls = 0

    def __call__(self, conn: Connection, bundle_id: str, envelope: bytes) -> None:
        self.calls += 1
        if self.calls in self.fail_on:
            raise OSError(28, "No space left on device")


class PagedClient:
    """Serves a fixed list of orders after an integer cursor, like the control plane."""

    def __init__(self, envelopes: list[bytes]) -> None:
        self.envelopes = envelopes
        self.last_server_date = None

    def fetch_orders(self, after: str | None = None) -> OrdersPage:
        start = int(after or "0")
        rows = [json.loads(e) for e in self.envelopes[start:]]
        return OrdersPage(orders=rows, cursor=str(start + len(rows)))

    def close(self) -> None:
        pass


class NoBaseline:
    def current(self) -> None:
        return None

    def take_rejections(self) -> list[Any]:
        return []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.db")
    yield s
    s.close()


def make_loop(store: Store, tmp_path: Path, hook: FlakyHook, client: Any = None,
              clock_steps: Any = None) -> tuple[ControlPlaneLoop, list[str]]:
    outbox = Outbox(store)
    writer = EvidenceWriter(store, AGENT_SIGNER, tmp_path / "evidence",
                            EvidenceIdentity(SITE, HOST), clock=lambda: later(10),
                            on_stored=[outbox.on_stored, hook])
    admission = OrderAdmission([MCP_SIGNER.public_key_hex], SITE, HOST, 900, 5,
                               NonceStore(store), clock=lambda: later(10))
    woken: list[str] = []
    loop = ControlPlaneLoop(
        client=client or PagedClient([]), admission=admission, triggers=TriggerStore(store),
        writer=writer, outbox=outbox, deliverer=None,  # type: ignore[arg-type]
        baseline_resolver=NoBaseline(),  # type: ignore[arg-type]
        store=store, poll_interval=60, on_admitted=lambda kind, action: woken.append(action),
        clock=lambda: later(10), clock_steps=clock_steps,
    )
    return loop, woken


def order_rows(store: Store) -> list[tuple[str, str]]:
    """(order_id, outcome) of every order evidence bundle, in chain order."""
    with store.begin() as conn:
        rows = conn.execute(text(
            "SELECT order_id, outcome FROM evidence_bundles WHERE check_name = 'order'"
            " ORDER BY sequence")).all()
    return [(r[0], r[1]) for r in rows]


def count(store: Store, table: str) -> int:
    with store.begin() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())


def test_a_failed_evidence_write_records_nothing_and_the_order_is_admitted_later(
    store: Store, tmp_path: Path
) -> None:
    hook = FlakyHook()
    hook.fail_on = {1}
    loop, woken = make_loop(store, tmp_path, hook)
    env = sign_order(order_payload(order_id="ord-a"))
    with pytest.raises(OSError):
        loop.handle_order(env)
    # Nothing of the order survived the failed transaction: no nonce, no trigger.
    assert (count(store, "order_nonces"), count(store, "order_triggers")) == (0, 0)
    assert order_rows(store) == [] and woken == []
    v = loop.handle_order(env)
    assert (v.admitted, v.reason) == (True, "Admitted")
    assert order_rows(store) == [("ord-a", "success")]
    assert count(store, "order_triggers") == 1 and woken == ["run_backup"]
    assert count(store, "outbox") == 1


def test_reading_an_admitted_order_again_records_nothing(store: Store, tmp_path: Path) -> None:
    loop, woken = make_loop(store, tmp_path, FlakyHook())
    env = sign_order(order_payload(order_id="ord-a"))
    assert loop.handle_order(env).admitted
    again = loop.handle_order(env)
    assert (again.admitted, again.reason, again.outcome) == (False, "AlreadyAdmitted", None)
    assert order_rows(store) == [("ord-a", "success")], "no spurious Replayed bundle"
    assert woken == ["run_backup"], "the order takes effect once"
    assert loop.stats.orders_already_admitted == 1 and not loop.stats.orders_refused


def test_another_payload_reusing_the_nonce_is_still_a_replay(
    store: Store, tmp_path: Path
) -> None:
    loop, _ = make_loop(store, tmp_path, FlakyHook())
    first = order_payload(order_id="ord-a")
    assert loop.handle_order(sign_order(first)).admitted
    attack = sign_order(order_payload(order_id="ord-evil", nonce=first["nonce"],
                                      action="restart_service", params={"unit": "sshd.service"}))
    v = loop.handle_order(attack)
    assert (v.reason, v.outcome) == ("Replayed", "rejected")
    assert order_rows(store) == [("ord-a", "success"), ("ord-evil", "rejected")]
    assert count(store, "order_triggers") == 1


def test_the_cursor_never_skips_an_order_that_was_not_recorded(
    store: Store, tmp_path: Path
) -> None:
    envs = [sign_order(order_payload(order_id=f"ord-{i}")) for i in range(5)]
    envs.append(sign_order(order_payload(order_id="ord-foreign", host_id="elsewhere")))
    hook = FlakyHook()
    hook.fail_on = {3}  # the third order's evidence cannot be written
    loop, woken = make_loop(store, tmp_path, hook, client=PagedClient(envs))
    loop.poll_once()  # must not raise: the loop thread has to survive a full disk
    assert MetaStore(store).get(ORDERS_CURSOR) is None, "cursor kept before the failed order"
    assert [o for o, _ in order_rows(store)] == ["ord-0", "ord-1"]
    assert loop.stats.last_error is not None
    loop.poll_once()  # the page again: the first two are recognised, the rest admitted
    assert MetaStore(store).get(ORDERS_CURSOR) == "6"
    assert order_rows(store) == [(f"ord-{i}", "success") for i in range(5)] + [
        ("ord-foreign", "rejected")]
    assert woken == ["run_backup"] * 5
    assert count(store, "order_nonces") == 5 and count(store, "order_triggers") == 5
    assert loop.stats.orders_already_admitted == 2


def test_a_wall_clock_step_is_logged_and_recorded_as_evidence(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reconciler.ops.clock_step import ClockStepDetector

    wall, mono = [1_800_000_000.0], [10.0]
    detector = ClockStepDetector(wall=lambda: wall[0], monotonic=lambda: mono[0])
    loop, _ = make_loop(store, tmp_path, FlakyHook(), clock_steps=detector)
    loop.watch_clock()
    assert loop.stats.clock_steps == 0
    wall[0] -= 7200
    loop.watch_clock()
    assert loop.stats.clock_steps == 1
    assert "wall clock stepped" in caplog.text
    with store.begin() as conn:
        rows = conn.execute(text("SELECT check_name, outcome FROM evidence_bundles")).all()
    assert [tuple(r) for r in rows] == [("clock_step", "alert")]
