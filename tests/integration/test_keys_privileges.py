"""A key file the caller cannot read: the error says whose it is and how to
run the command as that user, never a chown that would lock the daemon out.
Needs root (drops to uid 65534), so it is an integration test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.trust.keys import KeyFileError, check_private_key_file, write_seed_file
from tests.harness.require import require_root

pytestmark = pytest.mark.integration

SEED_HEX = "55" * 32
NOBODY = 65534


def _as_uid(call: Callable[[], str], uid: int = NOBODY) -> str:
    """`call()` in a forked child that dropped to `uid`; its text. In-process, so the
    child needs no access to the checkout or the venv (a CI clone can live in a
    0700 directory): everything it runs was imported before the fork."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_fd, call().encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "child failed"
    return data.decode()


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
        message = _as_uid(check)
    finally:
        shutil.rmtree(shared)
    assert "Permission denied" in message and "belongs to root" in message
    assert "sudo -u root compliance-agent" in message
    assert "run 'chown" not in message and "chmod" not in message
