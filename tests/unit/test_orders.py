"""Order admission: every reason in order, the nonce store, and the trigger mapping."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.database import Store, open_store
from reconciler.store.nonces import NonceStore, NonceUse
from reconciler.trust.admission import OrderAdmission, order_to_trigger
from reconciler.trust.dsse import envelope_bytes
from specs.orders import (
    MAX_ORDER_BYTES,
    ORDER_PAYLOAD_TYPE,
    OrderAction,
    RunBackupParams,
    parse_rfc3339_utc,
)
from tests.unit.test_trust_support import (
    HOST,
    MCP_SIGNER,
    OTHER_SIGNER,
    SITE,
    T0,
    later,
    order_payload,
    sign_order,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.db")
    yield s
    s.close()


def admission(store: Store | None, readonly: bool = False, **kw: Any) -> OrderAdmission:
    args: dict[str, Any] = {
        "trusted_keys": [MCP_SIGNER.public_key_hex],
        "site_id": SITE,
        "host_id": HOST,
        "order_ttl": 900,
        "max_skew_seconds": 5,
        "nonce_store": NonceStore(store, readonly=readonly),
        "clock": lambda: later(10),
    }
    args.update(kw)
    return OrderAdmission(**args)


def test_valid_order_is_admitted_with_typed_params(store: Store) -> None:
    v = admission(store).admit(sign_order(order_payload()))
    assert (v.admitted, v.reason, v.outcome) == (True, "Admitted", None)
    assert v.order is not None
    assert v.order.action is OrderAction.run_backup
    assert v.order.params == RunBackupParams(job="daily")
    assert v.order.issued_at == T0
    assert v.to_json() == {"admitted": True, "reason": "Admitted"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (order_payload(site_id="clinic-2"), "WrongSite"),
        (order_payload(host_id="host-2"), "WrongHost"),
        (order_payload(issued_at="2026-03-01T12:01:00Z"), "NotYetValid"),
        (order_payload(action="format_disk", params={}), "UnsupportedAction"),
        (order_payload(params={}), "InvalidParams"),
        (order_payload(params={"job": "daily", "extra": 1}), "InvalidParams"),
        (order_payload(params={"job": "-rf"}), "InvalidParams"),
        (
            order_payload(action="restart_service", params={"unit": "../etc/passwd"}),
            "InvalidParams",
        ),
        (
            order_payload(action="restart_service", params={"unit": "--now.service"}),
            "InvalidParams",
        ),
        (order_payload(action="rebuild", params={"target": "/etc/shadow"}), "InvalidParams"),
        (order_payload(action="rebuild", params={"target": "a b"}), "InvalidParams"),
        (order_payload(action="reconcile_now", params={"x": 1}), "InvalidParams"),
        (order_payload(nonce="ab" * 15), "Malformed"),  # 120 bits
        (order_payload(nonce="AB" * 16), "Malformed"),
        (order_payload(issued_at="2026-03-01T13:00:00+01:00"), "Malformed"),
        (order_payload(issued_at=1772366400), "Malformed"),
        (order_payload(ttl_seconds="600"), "Malformed"),
        (order_payload(ttl_seconds=0), "Malformed"),
        (order_payload(unexpected=True), "Malformed"),
        ({k: v for k, v in order_payload().items() if k != "nonce"}, "Malformed"),
    ],
)
def test_rejection_reasons(store: Store, payload: dict[str, Any], reason: str) -> None:
    v = admission(store).admit(sign_order(payload))
    assert (v.admitted, v.reason, v.outcome, v.order) == (False, reason, "rejected", None)
    assert v.message


@pytest.mark.parametrize(
    ("action", "params"),
    [
        ("reconcile_now", {}),
        ("run_backup", {"job": "nightly.restic"}),
        ("restart_service", {"unit": "sshd.service"}),
        ("restart_service", {"unit": "getty@tty1.service"}),
        ("rebuild", {"target": "/nix/store/0c8rqkbq8g2vsd4dzbr6mxw0z1qnjzc2-nixos-system-x"}),
        ("rebuild", {"target": "github:clinic/infra#nixosConfigurations.host-1"}),
        ("rebuild", {"target": "git+https://git.example/infra?ref=main#host"}),
        ("restore_firewall", {}),
        ("refresh_egress", {}),
        ("collect_evidence", {}),
    ],
)
def test_every_action_is_admissible(store: Store, action: str, params: dict[str, Any]) -> None:
    v = admission(store).admit(sign_order(order_payload(action=action, params=params)))
    assert v.admitted, v


def test_expiry_uses_min_of_order_ttl_and_agent_ttl(store: Store) -> None:
    adm = admission(store, order_ttl=300)
    # Order asks for 600 s but the agent allows 300: expired at T0+300.
    v = adm.admit(sign_order(order_payload(ttl_seconds=600)), now=later(300))
    assert (v.reason, v.outcome) == ("Expired", "expired")
    assert v.order_id == "ord-1"
    assert adm.admit(sign_order(order_payload(ttl_seconds=600)), now=later(299.9)).admitted
    # Order asks for 60 s: its own TTL wins.
    v = adm.admit(sign_order(order_payload(ttl_seconds=60)), now=later(61))
    assert v.reason == "Expired"


def test_skew_allows_slightly_future_orders(store: Store) -> None:
    adm = admission(store, max_skew_seconds=5)
    assert adm.admit(sign_order(order_payload()), now=later(-5)).admitted
    assert adm.admit(sign_order(order_payload()), now=later(-5.001)).reason == "NotYetValid"


def test_signature_failures(store: Store) -> None:
    adm = admission(store)
    assert adm.admit(sign_order(order_payload(), OTHER_SIGNER)).reason == "UnknownKey"
    env = json.loads(sign_order(order_payload()))
    env["payload"] = base64.b64encode(json.dumps(order_payload()).encode()).decode()
    assert adm.admit(json.dumps(env).encode()).reason == "BadSignature"
    wrong_type = MCP_SIGNER.sign_envelope(json.dumps(order_payload()).encode(), "text/plain")
    assert adm.admit(envelope_bytes(wrong_type)).reason == "WrongPayloadType"


def test_size_limit(store: Store) -> None:
    big = order_payload(params={"job": "x" * MAX_ORDER_BYTES})
    v = admission(store).admit(sign_order(big))
    assert (v.reason, v.outcome) == ("TooLarge", "rejected")


def test_payload_not_json_is_malformed(store: Store) -> None:
    adm = admission(store)
    assert adm.admit(sign_order(b"\xff not json")).reason == "Malformed"
    assert adm.admit(sign_order(b"[1, 2]")).reason == "Malformed"
    assert adm.admit(b"garbage").reason == "Malformed"
    assert adm.admit("not bytes").reason == "Malformed"  # type: ignore[arg-type]


def test_replay_is_rejected_and_survives_restart(tmp_path: Path) -> None:
    first = order_payload()
    env = sign_order(first)
    replay = sign_order(order_payload(order_id="ord-2", nonce=first["nonce"]))
    s1 = open_store(tmp_path / "state.db")
    assert admission(s1).admit(env).admitted
    assert admission(s1).admit(replay).reason == "Replayed"
    # The very same order again is recognised, not taken for an attack.
    v = admission(s1).admit(env)
    assert (v.admitted, v.reason, v.outcome) == (False, "AlreadyAdmitted", None)
    s1.close()
    s2 = open_store(tmp_path / "state.db")
    v = admission(s2).admit(replay)
    assert (v.reason, v.outcome) == ("Replayed", "rejected")
    assert admission(s2).admit(env).reason == "AlreadyAdmitted"
    s2.close()


def test_an_admitted_order_read_again_after_expiry_is_not_reported_expired(
    store: Store,
) -> None:
    env = sign_order(order_payload(ttl_seconds=60))
    assert admission(store).admit(env, now=later(1)).admitted
    assert admission(store).admit(env, now=later(62)).reason == "AlreadyAdmitted"


def test_readonly_store_checks_but_never_writes(tmp_path: Path) -> None:
    rw = open_store(tmp_path / "state.db")
    first = order_payload()
    seen = sign_order(first)
    assert admission(rw).admit(seen).admitted
    ro = open_store(tmp_path / "state.db", readonly=True)
    adm = admission(ro, readonly=True)
    assert adm.admit(seen).reason == "AlreadyAdmitted"
    assert adm.admit(sign_order(order_payload(order_id="x", nonce=first["nonce"]))).reason == (
        "Replayed")
    fresh = sign_order(order_payload())
    assert adm.admit(fresh).admitted
    assert adm.admit(fresh).admitted  # not recorded
    assert admission(rw).admit(fresh).admitted  # the daemon still sees it as new
    ro.close()
    rw.close()


def test_no_store_behaves_as_empty(tmp_path: Path) -> None:
    adm = admission(None)
    env = sign_order(order_payload())
    assert adm.admit(env).admitted and adm.admit(env).admitted


def test_nonces_are_kept_until_expiry_then_pruned(store: Store) -> None:
    from sqlalchemy import text

    mono = [0.0]
    adm = admission(store, order_ttl=60, max_skew_seconds=5,
                    nonce_store=NonceStore(store, monotonic=lambda: mono[0]))
    old = order_payload(ttl_seconds=60)
    assert adm.admit(sign_order(old), now=later(1)).admitted
    # Within expiry + skew the nonce is still there even after a prune pass.
    second = order_payload(issued_at="2026-03-01T12:01:00Z")
    assert adm.admit(sign_order(second), now=later(64)).admitted
    with store.begin() as conn:
        nonces = {r[0] for r in conn.execute(text("SELECT nonce FROM order_nonces"))}
    assert old["nonce"] in nonces
    # Past expiry + skew and the prune interval (monotonic), it is gone.
    mono[0] += 61
    late = order_payload(issued_at="2026-03-01T12:10:00Z")
    assert adm.admit(sign_order(late), now=later(605)).admitted
    with store.begin() as conn:
        nonces = {r[0] for r in conn.execute(text("SELECT nonce FROM order_nonces"))}
    assert old["nonce"] not in nonces and late["nonce"] in nonces


def test_concurrent_admission_admits_once(store: Store) -> None:
    adm = admission(store)
    env = sign_order(order_payload())
    results: list[bool] = []
    lock = threading.Lock()

    def run() -> None:
        v = adm.admit(env)
        with lock:
            results.append(v.admitted)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results) == [False] * 7 + [True]


def test_internal_errors_become_malformed(store: Store) -> None:
    class Boom(NonceStore):
        def lookup(self, nonce: str, order_id: str, payload_sha256: str) -> NonceUse:
            raise RuntimeError("db on fire")

    adm = admission(store, nonce_store=Boom(store))
    v = adm.admit(sign_order(order_payload()))
    assert (v.admitted, v.reason, v.outcome) == (False, "Malformed", "rejected")


@pytest.mark.parametrize(
    ("action", "params", "kind"),
    [
        ("reconcile_now", {}, None),
        ("collect_evidence", {}, None),
        ("run_backup", {"job": "daily"}, "backup"),
        ("restart_service", {"unit": "sshd.service"}, "services"),
        ("rebuild", {"target": "github:o/r#h"}, "patching"),
        ("restore_firewall", {}, "firewall"),
        ("refresh_egress", {}, "egress"),
    ],
)
def test_order_to_trigger(
    store: Store, action: str, params: dict[str, Any], kind: str | None
) -> None:
    v = admission(store).admit(sign_order(order_payload(action=action, params=params)))
    assert v.order is not None
    got_kind, trigger = order_to_trigger(v.order)
    assert got_kind == kind
    assert (trigger.order_id, trigger.action, trigger.params) == ("ord-1", action, params)
    assert trigger.requested_at == T0


def test_rfc3339_parsing() -> None:
    assert parse_rfc3339_utc("2026-03-01T12:00:00.123Z").microsecond == 123000
    assert parse_rfc3339_utc("2026-03-01t12:00:00-00:00") == T0
    for bad in ("2026-03-01 12:00:00Z", "2026-13-01T12:00:00Z", "2026-03-01T12:00:00"):
        with pytest.raises(ValueError):
            parse_rfc3339_utc(bad)


def test_payload_type_constant() -> None:
    assert ORDER_PAYLOAD_TYPE == "application/vnd.compliance-agent.order+json"


def test_admit_many_mixed_batch(store: Store) -> None:
    adm = admission(store)
    dup_payload = order_payload()
    dup = sign_order(dup_payload)
    batch = [
        sign_order(order_payload(order_id="a")),
        dup,
        b"junk",
        dup,  # the same order twice in one batch: admitted once
        sign_order(order_payload(site_id="elsewhere")),
        sign_order(order_payload(order_id="b", nonce=dup_payload["nonce"])),  # a replay
    ]
    got = [(v.admitted, v.reason) for v in adm.admit_many(batch)]
    assert got == [
        (True, "Admitted"),
        (True, "Admitted"),
        (False, "Malformed"),
        (False, "AlreadyAdmitted"),
        (False, "WrongSite"),
        (False, "Replayed"),
    ]
    assert adm.admit(dup).reason == "AlreadyAdmitted"
    assert adm.admit_many([]) == []


def test_nonce_store_failure_is_a_refusal_not_an_exception(store: Store) -> None:
    class Broken(NonceStore):
        def record_many(self, entries, now):  # type: ignore[no-untyped-def]
            raise OSError("disk full")

    v = admission(store, nonce_store=Broken(store)).admit(sign_order(order_payload()))
    assert (v.admitted, v.reason, v.order_id) == (False, "Malformed", "ord-1")




def test_nonce_is_kept_for_the_orders_own_signed_lifetime(store: Store) -> None:
    """Raising orderTtl later must not re-admit an order already executed: its
    nonce is kept until issued_at + ttl_seconds + skew, not + min(ttl, orderTtl)."""
    order = sign_order(order_payload(ttl_seconds=3600))
    first = admission(store, order_ttl=600, clock=lambda: later(10)).admit(order)
    assert first.admitted
    # Another admission well after the short orderTtl prunes expired nonces.
    assert admission(store, order_ttl=600, clock=lambda: later(900)).admit(
        sign_order(order_payload(order_id="ord-2", issued_at="2026-03-01T12:14:50Z"))
    ).admitted
    again = admission(store, order_ttl=7200, clock=lambda: later(1000)).admit(order)
    assert (again.admitted, again.reason) == (False, "AlreadyAdmitted")  # not run again
