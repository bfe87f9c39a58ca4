"""The demo control plane's checkpoint witness: consistency, cosignature, refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from nacl.signing import SigningKey

from demo.control_plane.app import Settings, witness
from demo.control_plane.storage import Storage
from reconciler.evidence.checkpoint import origin_for
from reconciler.evidence.merkle import consistency_proof, leaf_hash, root
from reconciler.evidence.note import Checkpoint, SignedNote, sign_note, verify_cosignature
from tests.unit.test_trust_support import AGENT_SIGNER

ORIGIN = origin_for("clinic-1", "host-1")
CP_KEY = SigningKey(bytes(range(32)))
LEAVES = [leaf_hash(bytes([i])) for i in range(40)]
FORK = [*LEAVES[:5], leaf_hash(b"forged"), *LEAVES[6:]]


def note(leaves: list[bytes], n: int) -> str:
    text = Checkpoint(ORIGIN, n, root(leaves[:n])).text()
    return sign_note(text, ORIGIN, AGENT_SIGNER.sign,
                     bytes.fromhex(AGENT_SIGNER.public_key_hex)).render()


def send(settings: Settings, leaves: list[bytes], old: int, n: int) -> tuple[int, dict[str, object]]:
    proof = consistency_proof(leaves, old, n) if old <= n else []
    resp = witness(settings, note(leaves, n), old, proof)
    return resp.status_code, json.loads(bytes(resp.body))


def test_witness(tmp_path: Path) -> None:
    st = Storage(tmp_path / "cp.db")
    s = Settings(st, [AGENT_SIGNER.public_key_hex], CP_KEY)
    code, body = send(s, LEAVES, 0, 10)
    assert code == 201
    cosigned = SignedNote.parse(str(body["cosigned_checkpoint"]))
    assert verify_cosignature(cosigned, s.cosigner_name, bytes(CP_KEY.verify_key)) > 0
    assert send(s, LEAVES, 0, 10)[0] == 200  # the same checkpoint again: same answer
    code, body = send(s, LEAVES, 4, 20)
    assert code == 409 and body["tree_size"] == 10 and "NeedProof" in str(body["error"])
    assert send(s, LEAVES, 10, 20)[0] == 201
    # A tree that rewrote leaf 6 does not extend the countersigned one.
    code, body = send(s, FORK, 20, 30)
    assert code == 409 and "Inconsistent" in str(body["error"])
    # Two trees of one size: a split view, refused with both notes as evidence.
    code, body = send(s, FORK, 10, 20)
    assert code == 409 and "SplitView" in str(body["error"])
    evidence = body["evidence"]
    assert isinstance(evidence, dict) and evidence["received"] == note(FORK, 20)
    # A smaller tree than already countersigned: a rolled-back agent.
    code, body = send(s, LEAVES, 0, 15)
    assert code == 409 and "Rollback" in str(body["error"])
    assert [v["reason"] for v in st.split_views()] == ["Inconsistent", "SplitView", "Rollback"]
    # Not signed by the agent's key.
    forged = note(LEAVES, 30).replace(note(LEAVES, 30).split(" ")[-1], base64.b64encode(
        bytes(68)).decode() + "\n")
    assert witness(s, forged, 20, consistency_proof(LEAVES, 20, 30)).status_code == 422
    st.close()
