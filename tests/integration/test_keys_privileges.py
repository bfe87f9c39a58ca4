"""A key file the caller cannot read: the error says whose it is and how to
run the command as that user, never a chown that would lock the daemon out.
Needs root (drops to uid 65534), so it is an integration test."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.trust.keys import KeyFileError, check_private_key_file, write_seed_file
from tests.harness.require import require_root
from tests.harness.unprivileged import NOBODY, run_as

pytestmark = pytest.mark.integration

SEED_HEX = "55" * 32


def test_unreadable_key_says_whose_it_is_and_how_to_run() -> None:
    """An operator without access (e.g. not using sudo) is told to run as the key's
    owner, not to chown or chmod the key the daemon depends on."""
    require_root()  # drops to nobody; skips locally without root, fails in CI
    # pytest's tmp_path sits in root's 0700 directory: nobody must reach the file itself
    shared = Path(tempfile.mkdtemp(prefix="ca-keys-"))
    shared.chmod(0o755)
    path = shared / "k"
    write_seed_file(path, SigningKey(bytes.fromhex(SEED_HEX)))  # root's, 0600

    def check() -> str:
        try:
            check_private_key_file(path)
        except KeyFileError as e:
            return str(e)
        return "no error"

    try:
        message = run_as(NOBODY, check)
    finally:
        shutil.rmtree(shared)
    assert "Permission denied" in message and "belongs to root" in message
    assert "sudo -u root compliance-agent" in message
    assert "run 'chown" not in message and "chmod" not in message
