"""C2SP signed notes against the golang.org/x/mod/sumdb/note reference vector; checkpoints; cosignatures."""

from __future__ import annotations

import base64

import pytest
from nacl.signing import SigningKey

from reconciler.evidence.note import (
    Checkpoint,
    NoteError,
    SignedNote,
    cosign,
    parse_verifier_key,
    sign_note,
    verifier_key,
    verify_cosignature,
    verify_note,
)

# Published in golang.org/x/mod/sumdb/note (note_test.go / package doc).
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_NOTE = GO_TEXT + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def go_key() -> SigningKey:
    raw = base64.b64decode(GO_SIGNER.split("+", 4)[4])
    assert raw[0] == 1
    return SigningKey(raw[1:])


def test_reproduces_the_go_reference_note_byte_for_byte() -> None:
    key = go_key()
    pub = bytes(key.verify_key)
    assert verifier_key("PeterNeumann", pub) == GO_VERIFIER
    note = sign_note(GO_TEXT, "PeterNeumann", lambda m: key.sign(m).signature, pub)
    assert note.render() == GO_NOTE
    parsed = SignedNote.parse(GO_NOTE)
    assert parsed.text == GO_TEXT
    name, typ, vpub = parse_verifier_key(GO_VERIFIER)
    assert (name, typ, vpub) == ("PeterNeumann", 1, pub)
    verify_note(parsed, name, vpub)
    with pytest.raises(NoteError):
        verify_note(SignedNote.parse(GO_NOTE.replace("cryptography", "cryptographY")), name, vpub)


@pytest.mark.parametrize("bad", [
    "", "no blank line\n\u2014 a AAAA\n", GO_TEXT + "\n", GO_TEXT + "\n- PeterNeumann AAAAAAAA\n",
    GO_TEXT + "\n\n\u2014 PeterNeumann x08go/ZJkuBS9UG\n", "a\n\nb\n\n\u2014 n AAAAAAAA\n",
])
def test_malformed_notes_are_refused(bad: str) -> None:
    with pytest.raises(NoteError):
        SignedNote.parse(bad)


def test_checkpoint_text_round_trip_and_strictness() -> None:
    cp = Checkpoint("compliance-agent.dev/evidence/s/h", 20852163, bytes(range(32)))
    assert Checkpoint.parse(cp.text()) == cp
    assert cp.text().splitlines()[1] == "20852163"
    for bad in ["o\n01\n" + base64.b64encode(bytes(32)).decode() + "\n",
                "o\n1\nAAAA\n", "o\n1\n", "o\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n"]:
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)
    with pytest.raises(NoteError):
        Checkpoint("has space", 1, bytes(32)).text()


def test_cosignature_v1_verifies_and_binds_the_text() -> None:
    witness = SigningKey(bytes(range(32)))
    wpub = bytes(witness.verify_key)
    key = go_key()
    cp = Checkpoint("example.com/log", 5, bytes(32)).text()
    note = sign_note(cp, "example.com/log", lambda m: key.sign(m).signature, bytes(key.verify_key))
    sig = cosign(cp, "cp.example/w", lambda m: witness.sign(m).signature, wpub, 1679315147)
    both = SignedNote.parse(note.with_signature(sig).render())
    assert verify_cosignature(both, "cp.example/w", wpub) == 1679315147
    verify_note(both, "example.com/log", bytes(key.verify_key))
    forged = SignedNote(Checkpoint("example.com/log", 6, bytes(32)).text(), both.signatures)
    with pytest.raises(NoteError):
        verify_cosignature(forged, "cp.example/w", wpub)
