"""Evidence writer: statement shape, chain continuity, durability order, hooks, orphans."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]
from sqlalchemy import Connection, text

from reconciler.evidence.chain import verify_store
from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter
from reconciler.store.database import Store, open_store
from reconciler.store.evidence_index import list_bundles
from reconciler.trust.dsse import verify_envelope
from specs.evidence import (
    EVIDENCE_PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    EvidenceStatement,
)
from specs.resource import canonical_json
from specs.status import ActionRecord
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, SITE, T0

IDENTITY = EvidenceIdentity(SITE, HOST, "reseller", "msp-1", "1.0")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self):  # type: ignore[no-untyped-def]
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "state.db")
    yield s
    s.close()


def writer(store: Store, tmp_path: Path, **kw: Any) -> EvidenceWriter:
    args: dict[str, Any] = {"clock": Clock(), "on_stored": []}
    args.update(kw)
    return EvidenceWriter(store, AGENT_SIGNER, tmp_path / "evidence", IDENTITY, **args)


def statement_of(path: Path) -> dict[str, Any]:
    payload = verify_envelope(
        path.read_bytes(), EVIDENCE_PAYLOAD_TYPE, [AGENT_SIGNER.public_key_hex]
    )
    statement: dict[str, Any] = json.loads(payload)
    return statement


def test_statement_has_every_field(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path)
    actions = [
        ActionRecord(
            step=1,
            action="RestartUnit",
            command=["systemctl", "restart", "x.service"],
            exit_code=0,
            duration_sec=0.5,
            result="ok",
        )
    ]
    bid = w.record(
        check="firewall",
        outcome="success",
        pre_state={"ruleset": "old"},
        post_state={"ruleset": "new"},
        actions=actions,
        order_id="ord-7",
        facts={
            "ruleset_hash": "ab" * 32,
            "ntp_offset_ms": 12.5,
            "rollback_generation": 41,
            "snapshot_id": "s1",
        },
        guard_verdicts=[{"guard": "window", "verdict": "allow"}],
        timestamp_start=T0,
        timestamp_end=T0 + timedelta(seconds=2),
    )
    [row] = list_bundles(store)
    st = statement_of(tmp_path / "evidence" / row.file_name)
    EvidenceStatement.model_validate(st)  # the published model accepts it
    assert st["_type"] == STATEMENT_TYPE and st["predicateType"] == PREDICATE_TYPE
    assert st["subject"] == [
        {
            "name": f"{SITE}/{HOST}/firewall",
            "digest": {"sha256": hashlib.sha256(canonical_json({"ruleset": "new"})).hexdigest()},
        }
    ]
    p = st["predicate"]
    assert p["bundle_id"] == bid == row.bundle_id
    assert (p["site_id"], p["host_id"], p["deployment_mode"], p["reseller_id"]) == (
        SITE,
        HOST,
        "reseller",
        "msp-1",
    )
    assert p["policy_version"] == "1.0"
    assert p["hipaa_controls"] == ["164.312(a)(1)", "164.312(e)(1)"]
    assert p["timestamp_start"] == "2026-03-01T12:00:00.000000Z"
    assert p["timestamp_end"] == "2026-03-01T12:00:02.000000Z"
    assert p["action_taken"][0]["command"] == ["systemctl", "restart", "x.service"]
    assert p["rollback_available"] is True and p["rollback_generation"] == 41
    assert p["outcome"] == "success" and p["error"] is None and p["order_id"] == "ord-7"
    assert p["ruleset_hash"] == "ab" * 32 and p["ntp_offset_ms"] == 12.5
    assert p["nixos_revision"] is None and p["derivation_digest"] is None
    assert p["facts"] == {"snapshot_id": "s1"}
    assert p["guard_verdicts"] == [{"guard": "window", "verdict": "allow"}]
    assert (p["sequence"], p["prev_digest"]) == (1, None)
    required = {
        "bundle_id",
        "site_id",
        "host_id",
        "deployment_mode",
        "reseller_id",
        "policy_version",
        "timestamp_start",
        "timestamp_end",
        "check",
        "hipaa_controls",
        "pre_state",
        "post_state",
        "action_taken",
        "rollback_available",
        "rollback_generation",
        "outcome",
        "error",
        "order_id",
        "ruleset_hash",
        "nixos_revision",
        "derivation_digest",
        "ntp_offset_ms",
        "guard_verdicts",
        "sequence",
        "prev_digest",
    }
    assert required <= set(p)


def test_unknown_fields_are_null_and_unknown_checks_cite_nothing(
    store: Store, tmp_path: Path
) -> None:
    writer(store, tmp_path).record(check="custom", outcome="alert")
    [row] = list_bundles(store)
    p = statement_of(tmp_path / "evidence" / row.file_name)["predicate"]
    assert p["hipaa_controls"] == [] and p["pre_state"] is None and p["post_state"] is None
    assert p["rollback_available"] is False and p["rollback_generation"] is None


def test_invalid_outcome_is_refused(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        writer(store, tmp_path).record(check="x", outcome="great")
    assert list_bundles(store) == []


def test_chain_links_each_bundle_to_the_previous_file(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path)
    for i in range(5):
        w.record(check="backup", outcome="success", post_state={"i": i})
    rows = sorted(list_bundles(store), key=lambda r: r.sequence)
    assert [r.sequence for r in rows] == [1, 2, 3, 4, 5]
    prev = None
    for r in rows:
        data = (tmp_path / "evidence" / r.file_name).read_bytes()
        p = json.loads(verify_envelope(data, EVIDENCE_PAYLOAD_TYPE, [AGENT_SIGNER.public_key_hex]))
        assert p["predicate"]["prev_digest"] == prev == r.prev_digest
        prev = hashlib.sha256(data).hexdigest()
        assert prev == r.digest


def test_envelope_file_verifies_with_securesystemslib(store: Store, tmp_path: Path) -> None:
    writer(store, tmp_path).record(check="backup", outcome="success")
    [row] = list_bundles(store)
    env = Envelope.from_dict(json.loads((tmp_path / "evidence" / row.file_name).read_bytes()))
    key = SSlibKey(
        AGENT_SIGNER.keyid, "ed25519", "ed25519", {"public": AGENT_SIGNER.public_key_hex}
    )
    assert list(env.verify([key], 1)) == [AGENT_SIGNER.keyid]
    assert env.payload_type == "application/vnd.in-toto+json"


def test_restart_continues_the_chain(tmp_path: Path) -> None:
    s1 = open_store(tmp_path / "state.db")
    writer(s1, tmp_path).record(check="backup", outcome="success")
    s1.close()
    s2 = open_store(tmp_path / "state.db")
    w2 = writer(s2, tmp_path)
    w2.record(check="backup", outcome="failed", error="restic: repository locked")
    assert [r.sequence for r in list_bundles(s2)] == [2, 1]
    assert verify_store(s2, tmp_path / "evidence", [AGENT_SIGNER.public_key_hex]).ok
    s2.close()


def test_hooks_run_in_the_same_transaction(store: Store, tmp_path: Path) -> None:
    seen: list[tuple[str, bytes, int]] = []

    def hook(conn: Connection, bundle_id: str, envelope: bytes) -> None:
        # The index row is visible inside the hook's transaction.
        n = conn.execute(
            text("SELECT COUNT(*) FROM evidence_bundles WHERE bundle_id = :b"), {"b": bundle_id}
        ).scalar_one()
        seen.append((bundle_id, envelope, n))

    w = writer(store, tmp_path, on_stored=[hook])
    bid = w.record(check="time", outcome="success")
    [row] = list_bundles(store)
    assert seen == [(bid, (tmp_path / "evidence" / row.file_name).read_bytes(), 1)]


def test_failing_hook_rolls_back_row_and_file(store: Store, tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(conn: Connection, bundle_id: str, envelope: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("outbox full")

    w = writer(store, tmp_path, on_stored=[flaky])
    w.record(check="backup", outcome="success")
    with pytest.raises(RuntimeError):
        w.record(check="backup", outcome="success")
    assert len(list_bundles(store)) == 1
    assert len(list((tmp_path / "evidence").glob("*.json"))) == 1
    w.record(check="backup", outcome="success")  # reuses sequence 2, chain intact
    assert [r.sequence for r in list_bundles(store)] == [2, 1]
    assert verify_store(store, tmp_path / "evidence", [AGENT_SIGNER.public_key_hex]).ok


def test_outbox_hook_enqueues_atomically(store: Store, tmp_path: Path) -> None:
    from reconciler.store.outbox import Outbox

    ob = Outbox(store)
    w = writer(store, tmp_path, on_stored=[ob.on_stored])
    bid = w.record(check="backup", outcome="success")
    [item] = ob.claim_batch(10)
    assert item.bundle_id == bid


def test_unknown_bundle_files_are_quarantined_at_start(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path)
    w.record(check="backup", outcome="success")
    edir = tmp_path / "evidence"
    # Simulate a crash after the file write and before the commit, a torn temp
    # file, and an unrelated file that must be left alone.
    orphan = edir / "000000000002-0b8c4b7e-6d0f-4a53-9c1e-1d3f1a2b3c4d.json"
    orphan.write_bytes(b"{}")
    (edir / ".000000000003-0b8c4b7e-6d0f-4a53-9c1e-1d3f1a2b3c4d.json.tmp").write_bytes(b"{")
    (edir / "README").write_text("operator notes")
    w2 = writer(store, tmp_path)
    names = [orphan.name, ".000000000003-0b8c4b7e-6d0f-4a53-9c1e-1d3f1a2b3c4d.json.tmp"]
    assert sorted(w2.recovery.quarantined) == sorted(names)
    assert sorted(p.name for p in (edir / "quarantine").iterdir()) == sorted(names)
    assert (edir / "README").exists()
    w2.record(check="backup", outcome="success")
    assert verify_store(store, edir, [AGENT_SIGNER.public_key_hex]).ok


def test_record_many_is_one_durable_batch(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path)
    ids = w.record_many(
        [EvidenceRequest(check="services", outcome="success", post_state=i) for i in range(20)]
    )
    assert len(set(ids)) == 20
    assert [r.bundle_id for r in sorted(list_bundles(store), key=lambda r: r.sequence)] == ids
    assert verify_store(store, tmp_path / "evidence", [AGENT_SIGNER.public_key_hex]).ok
    assert w.record_many([]) == []


def test_concurrent_writers_keep_the_chain_gapless(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                w.record(check="services", outcome="success", post_state={"t": n, "i": i})
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert sorted(r.sequence for r in list_bundles(store)) == list(range(1, 41))
    assert verify_store(store, tmp_path / "evidence", [AGENT_SIGNER.public_key_hex]).ok


def test_two_processes_share_the_chain(tmp_path: Path) -> None:
    # The daemon and `evidence prune` from the CLI: two writers, one chain.
    s1, s2 = open_store(tmp_path / "state.db"), open_store(tmp_path / "state.db")
    w1, w2 = writer(s1, tmp_path), writer(s2, tmp_path)
    for _ in range(3):
        w1.record(check="a", outcome="success")
        w2.record(check="b", outcome="success")
    assert sorted(r.sequence for r in list_bundles(s1)) == list(range(1, 7))
    assert verify_store(s1, tmp_path / "evidence", [AGENT_SIGNER.public_key_hex]).ok
    s1.close()
    s2.close()


def test_files_are_not_world_readable(store: Store, tmp_path: Path) -> None:
    writer(store, tmp_path).record(check="backup", outcome="success")
    for f in (tmp_path / "evidence").iterdir():
        assert f.stat().st_mode & 0o007 == 0


def test_payload_is_canonical_json(store: Store, tmp_path: Path) -> None:
    writer(store, tmp_path).record(check="backup", outcome="success", post_state={"b": 1, "a": 2})
    [row] = list_bundles(store)
    env = json.loads((tmp_path / "evidence" / row.file_name).read_bytes())
    payload = base64.b64decode(env["payload"])
    assert payload == canonical_json(json.loads(payload))


def test_failed_commit_moves_its_file_aside(store: Store, tmp_path: Path) -> None:
    w = writer(store, tmp_path)
    w.record(check="backup", outcome="success")

    def deferred_violation(conn: Connection, bundle_id: str, envelope: bytes) -> None:
        # Passes at statement time, fails at COMMIT (deferred FK check).
        conn.execute(text("CREATE TEMP TABLE IF NOT EXISTS p (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TEMP TABLE IF NOT EXISTS c (pid INTEGER REFERENCES p(id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        conn.execute(text("INSERT INTO c VALUES (42)"))

    w.on_stored.append(deferred_violation)
    with pytest.raises(Exception, match="FOREIGN KEY"):
        w.record(check="backup", outcome="success")
    w.on_stored.pop()
    assert len(list((tmp_path / "evidence").glob("*.json"))) == 1
    # not deleted: whether a failed COMMIT reached the disk is not certain
    assert len(list((tmp_path / "evidence" / "quarantine").glob("*.json*"))) == 1
    w.record(check="backup", outcome="success")
    assert verify_store(store, tmp_path / "evidence", [AGENT_SIGNER.public_key_hex]).ok
