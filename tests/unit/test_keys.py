"""Key files: keygen format and mode, permission refusal, OpenSSL PKCS#8 PEM."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.trust.dsse import verify_envelope
from reconciler.trust.keys import (
    KeyFileError,
    check_private_key_file,
    generate_key_file,
    load_signing_key,
    write_seed_file,
)

SEED_HEX = "55" * 32


def test_keygen_writes_seed_hex_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    signer = generate_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n")
    bytes.fromhex(text.strip())
    loaded = load_signing_key(path)
    assert loaded.public_key_hex == signer.public_key_hex
    env = loaded.sign_envelope(b"x", "t")
    assert verify_envelope(env, "t", [signer.public_key_hex]) == b"x"


def test_keygen_mode_ignores_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        generate_key_file(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    first = generate_key_file(path)
    with pytest.raises(KeyFileError, match="--force"):
        generate_key_file(path)
    assert load_signing_key(path).public_key_hex == first.public_key_hex
    second = generate_key_file(path, force=True)
    assert load_signing_key(path).public_key_hex == second.public_key_hex != first.public_key_hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.key"]  # no temp left


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o610, 0o602])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    write_seed_file(path, SigningKey(bytes.fromhex(SEED_HEX)))
    path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_signing_key(path)
    msg = str(info.value)
    assert f"chmod 0600 {path}" in msg and f"{mode:04o}" in msg
    assert SEED_HEX not in msg


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_modes_are_accepted(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    write_seed_file(path, SigningKey(bytes.fromhex(SEED_HEX)))
    path.chmod(mode)
    check_private_key_file(path)


def test_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        check_private_key_file(d)
    with pytest.raises(KeyFileError, match="keygen"):
        check_private_key_file(tmp_path / "missing")


def test_symlink_to_safe_file_is_followed(tmp_path: Path) -> None:
    # sops-nix exposes secrets as symlinks into /run/secrets.d.
    real = tmp_path / "real"
    write_seed_file(real, SigningKey(bytes.fromhex(SEED_HEX)))
    link = tmp_path / "link"
    link.symlink_to(real)
    assert (
        load_signing_key(link).public_key_hex
        == SigningKey(bytes.fromhex(SEED_HEX)).verify_key.encode().hex()
    )


def test_foreign_owner_is_refused(tmp_path: Path) -> None:
    from tests.harness.require import require_root

    require_root()  # chown to another uid; skips locally without root, fails in CI
    path = tmp_path / "k"
    write_seed_file(path, SigningKey(bytes.fromhex(SEED_HEX)))
    os.chown(path, 4242, -1)
    with pytest.raises(KeyFileError, match="chown") as caught:
        check_private_key_file(path)
    # Run with sudo, the advice is to run as the key's owner, never to chown the
    # key to root (that would lock the daemon, which runs as its own user, out).
    message = str(caught.value)
    assert "sudo -u" in message
    assert f"chown {os.geteuid()} " not in message and "chown root" not in message
    assert "owner" in message and "NixOS" in message


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "64 hex"),
        (b"zz" * 32, "hex digits"),
        (b"ab" * 31, "64 hex"),
        (b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", "PKCS#8"),
    ],
)
def test_garbage_is_refused_without_echoing_it(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=match) as info:
        load_signing_key(path)
    if content:
        assert content.decode(errors="replace")[:20] not in str(info.value)


# -- PKCS#8 PEM as the real openssl writes it ---------------------------------------------
def _openssl(*args: str) -> None:
    from tests.harness.require import require_tool

    openssl = require_tool("openssl")  # skips locally, fails in CI
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)


def test_openssl_genpkey_ed25519_pem_loads(tmp_path: Path) -> None:
    key = tmp_path / "mcp.pem"
    _openssl("genpkey", "-algorithm", "ed25519", "-out", str(key))
    key.chmod(0o600)
    signer = load_signing_key(key)
    # The public key openssl derives must be the one we derive.
    pub = tmp_path / "pub.der"
    _openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER", "-out", str(pub))
    assert pub.read_bytes()[-32:].hex() == signer.public_key_hex


def test_openssl_encrypted_pem_and_rsa_are_refused(tmp_path: Path) -> None:
    enc = tmp_path / "enc.pem"
    _openssl(
        "genpkey", "-algorithm", "ed25519", "-aes-256-cbc", "-pass", "pass:secret", "-out", str(enc)
    )
    enc.chmod(0o600)
    with pytest.raises(KeyFileError, match="encrypted"):
        load_signing_key(enc)
    rsa = tmp_path / "rsa.pem"
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(rsa))
    rsa.chmod(0o600)
    with pytest.raises(KeyFileError, match="not Ed25519"):
        load_signing_key(rsa)


def test_recorded_openssl_pem_fixture_loads(tmp_path: Path) -> None:
    fixture = Path(__file__).parent.parent / "fixtures" / "trust" / "openssl-ed25519.pem"
    key = tmp_path / "k.pem"
    key.write_bytes(fixture.read_bytes())
    key.chmod(0o600)
    expected = (fixture.parent / "openssl-ed25519.pub.hex").read_text().strip()
    assert load_signing_key(key).public_key_hex == expected
