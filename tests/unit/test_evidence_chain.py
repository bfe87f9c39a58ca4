"""Chain verification: tamper, delete, reorder, foreign and re-signed bundles are caught."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from reconciler.evidence.chain import verify_chain, verify_store
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import Store, open_store
from reconciler.store.evidence_index import list_bundles
from specs.evidence import EVIDENCE_PAYLOAD_TYPE
from specs.resource import canonical_json
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, OTHER_SIGNER, SITE, T0

KEYS = [AGENT_SIGNER.public_key_hex]


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[tuple[Store, Path, list[Path]]]:
    store = open_store(tmp_path / "state.db")
    w = EvidenceWriter(
        store, AGENT_SIGNER, tmp_path / "ev", EvidenceIdentity(SITE, HOST), clock=lambda: T0
    )
    for i in range(6):
        w.record(check="backup", outcome="success", post_state={"i": i})
    rows = sorted(list_bundles(store), key=lambda r: r.sequence)
    yield store, tmp_path / "ev", [tmp_path / "ev" / r.file_name for r in rows]
    store.close()


def reasons(report) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(p.reason for p in report.problems)


def files(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


def test_intact_chain(chain) -> None:  # type: ignore[no-untyped-def]
    store, edir, paths = chain
    r = verify_store(store, edir, KEYS)
    assert r.ok and r.checked == 6 and (r.first, r.last) == (1, 6)
    assert verify_chain(files(paths), KEYS).ok


def test_files_in_any_order_verify(chain) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = chain
    assert verify_chain(list(reversed(files(paths))), KEYS).ok


def test_tampered_payload_is_bad_signature_and_missing(chain) -> None:  # type: ignore[no-untyped-def]
    store, edir, paths = chain
    env = json.loads(paths[2].read_bytes())
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["outcome"] = "failed"
    env["payload"] = base64.b64encode(canonical_json(st)).decode()
    paths[2].write_text(json.dumps(env))
    r = verify_store(store, edir, KEYS)
    assert "BadSignature" in reasons(r) and "Missing" in reasons(r)
    assert any(p.sequence == 3 for p in r.problems)


def test_deleted_file_is_missing_in_store_mode_and_gap_in_file_mode(chain) -> None:  # type: ignore[no-untyped-def]
    store, edir, paths = chain
    paths[3].unlink()
    r = verify_store(store, edir, KEYS)
    assert reasons(r) == ["Missing"] and r.problems[0].sequence == 4
    r2 = verify_chain(files(paths[:3] + paths[4:]), KEYS)
    assert reasons(r2) == ["Gap"] and r2.problems[0].sequence == 4


def test_deleted_file_and_index_row_is_still_caught(chain) -> None:  # type: ignore[no-untyped-def]
    store, edir, paths = chain
    paths[3].unlink()
    with store.begin() as conn:
        conn.execute(text("DELETE FROM evidence_bundles WHERE sequence = 4"))
    assert reasons(verify_store(store, edir, KEYS)) == ["Gap"]


def test_swapped_files_are_index_mismatches(chain) -> None:  # type: ignore[no-untyped-def]
    store, edir, paths = chain
    a, b = paths[1].read_bytes(), paths[2].read_bytes()
    paths[1].write_bytes(b)
    paths[2].write_bytes(a)
    r = verify_store(store, edir, KEYS)
    assert reasons(r) == ["IndexMismatch", "IndexMismatch"]
    assert {p.sequence for p in r.problems} == {2, 3}


def test_replaced_by_older_bundle_is_duplicate(chain) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = chain
    fs = files(paths)
    fs[4] = ("copy-of-2", fs[1][1])  # bundle 5's file now holds bundle 2
    r = verify_chain(fs, KEYS)
    assert "Gap" in reasons(r)  # sequence 5 is gone; the copy is a duplicate of 2


def test_foreign_chain_splice_breaks_prev_digest(tmp_path: Path, chain) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = chain
    # Another chain signed with the same key (e.g. a restored old state dir).
    other = open_store(tmp_path / "other.db")
    w = EvidenceWriter(other, AGENT_SIGNER, tmp_path / "ev2", EvidenceIdentity(SITE, HOST))
    for i in range(6):
        w.record(check="backup", outcome="success", post_state={"other": i})
    other_rows = sorted(list_bundles(other), key=lambda r: r.sequence)
    fs = files(paths)
    fs[3] = ("spliced", (tmp_path / "ev2" / other_rows[3].file_name).read_bytes())
    r = verify_chain(fs, KEYS)
    assert reasons(r) == ["PrevDigestMismatch", "PrevDigestMismatch"]  # into 4, and 4 -> 5
    other.close()


def test_bundle_signed_by_another_key(chain) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = chain
    env = json.loads(paths[0].read_bytes())
    forged = OTHER_SIGNER.sign_envelope(base64.b64decode(env["payload"]), EVIDENCE_PAYLOAD_TYPE)
    fs = files(paths)
    fs[0] = ("forged", json.dumps(forged).encode())
    assert reasons(verify_chain(fs, KEYS)) == ["UnknownKey"]


def test_subject_must_match_post_state(tmp_path: Path, chain) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = chain
    env = json.loads(paths[0].read_bytes())
    st = json.loads(base64.b64decode(env["payload"]))
    st["subject"][0]["digest"]["sha256"] = "00" * 32
    resigned = AGENT_SIGNER.sign_envelope(canonical_json(st), EVIDENCE_PAYLOAD_TYPE)
    fs = files(paths)
    fs[0] = ("resigned", json.dumps(resigned).encode())
    assert "SubjectMismatch" in reasons(verify_chain(fs, KEYS))


def test_first_bundle_must_not_claim_a_predecessor(chain) -> None:  # type: ignore[no-untyped-def]
    _, _, paths = chain
    env = json.loads(paths[0].read_bytes())
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["prev_digest"] = "ab" * 32
    resigned = AGENT_SIGNER.sign_envelope(canonical_json(st), EVIDENCE_PAYLOAD_TYPE)
    fs = files(paths)
    fs[0] = ("resigned", json.dumps(resigned).encode())
    # Bundle 2 now also mismatches: it points at the original bundle 1.
    assert reasons(verify_chain(fs, KEYS)) == ["PrevDigestMismatch", "PrevDigestMismatch"]


def test_explicit_paths_are_checked_against_the_index(chain, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store, edir, paths = chain
    r = verify_store(store, edir, KEYS, paths=paths[2:4])
    assert r.ok and r.checked == 2 and not r.notes
