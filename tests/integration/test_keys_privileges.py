"""A key file the caller cannot read: the error says whose it is and how to
run the command as that user, never a chown that would lock the daemon out.
Needs root (drops to uid 65534 with setpriv), so it is an integration test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.trust.keys import write_seed_file

pytestmark = pytest.mark.integration

SEED_HEX = "55" * 32


def test_unreadable_key_says_whose_it_is_and_how_to_run(tmp_path: Path) -> None:
    """An operator without access (e.g. not using sudo) is told to run as the key's
    owner, not to chown or chmod the key the daemon depends on."""

    from tests.harness.require import require_root

    require_root()  # drop to nobody with setpriv; skips locally without root, fails in CI
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv")
    import tempfile

    # pytest's tmp_path sits in root's 0700 directory: nobody must reach the file itself
    shared = Path(tempfile.mkdtemp(prefix="ca-keys-"))
    shared.chmod(0o755)
    path = shared / "k"
    write_seed_file(path, SigningKey(bytes.fromhex(SEED_HEX)))  # root's, 0600
    code = ("import sys\nfrom pathlib import Path\n"
            "from reconciler.trust.keys import KeyFileError, check_private_key_file\n"
            f"try:\n    check_private_key_file(Path({str(path)!r}))\n"
            "except KeyFileError as e:\n    print(e)\n")
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", code], cwd=repo, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(shared)
    message = proc.stdout
    assert "Permission denied" in message and "belongs to root" in message
    assert "sudo -u root compliance-agent" in message
    assert "run 'chown" not in message and "chmod" not in message
