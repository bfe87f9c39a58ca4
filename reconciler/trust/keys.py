"""Ed25519 private key files: generate, check permissions, load.

Two on-disk formats are accepted by `load_signing_key`:

* **seed** (what `compliance-agent keygen` writes): a text file holding the
  32-byte Ed25519 seed as 64 lowercase hex characters and a newline;
* **PKCS#8 PEM**, unencrypted, exactly as `openssl genpkey -algorithm ed25519`
  writes it (`-----BEGIN PRIVATE KEY-----`).

Like ssh, the agent refuses a key file that is not a regular file, that group
or others may read or write (`mode & 0o077`), or that is owned by somebody
other than the agent's user or root. The permission check is done on the open
file descriptor (fstat), so a file swapped between check and read is caught.
Key material never appears in messages, logs or exceptions.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from nacl.signing import SigningKey

from reconciler.trust.dsse import Signer
from specs.errors import ComplianceAgentError

MAX_KEY_FILE_BYTES = 16 * 1024
PEM_MARKER = b"-----BEGIN"


class KeyFileError(ComplianceAgentError):
    """A private key file is missing, unsafe or unreadable; the message says what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def _check_fd(path: Path, fd: int) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(path, "not a regular file; point the option at the key file itself")
    if st.st_mode & 0o077:
        raise KeyFileError(
            path,
            f"mode {stat.S_IMODE(st.st_mode):04o} lets group/others access the private key; "
            f"run 'chmod 0600 {path}' (or 0400)",
        )
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        owner, me = _account(st.st_uid), _account(uid)
        # Two readers hit this: an operator's command run as someone else (e.g. with
        # sudo), who must not chown the key away from the daemon; and the daemon
        # with a key given to the wrong account, fixed where the secret is declared.
        raise KeyFileError(
            path,
            f"owned by {owner}, but this process runs as {me} and only accepts a key "
            f"its own user or root owns. {_run_as_owner(owner.split(' ')[0])}",
        )


def _run_as_owner(owner: str) -> str:
    """What to do when the key is not this process's: never chown it (the daemon needs it)."""
    return (f"To read the agent's key, run the command as its owner: sudo -u {owner} "
            f"compliance-agent ... If the daemon reports this, give the file to the agent's "
            f"user where the secret is declared (on NixOS e.g. sops.secrets.<name>.owner = "
            f"\"compliance-agent\"; a chown by hand does not survive activation); never "
            f"chown it to root or to yourself")


def _account(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"#{uid} (uid {uid}, no such user)"


def _open_checked(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(
            path, "no such file (create one with 'compliance-agent keygen')"
        ) from None
    except PermissionError as e:
        try:
            owner = _account(os.stat(path).st_uid).split(" ")[0]
        except OSError:  # the directory is closed too: the agent's user is the best guess
            owner = "compliance-agent"
        raise KeyFileError(
            path, f"cannot open: {e.strerror} as {_account(os.geteuid())}; the file belongs "
            f"to {owner}. {_run_as_owner(owner)}") from None
    except OSError as e:
        raise KeyFileError(path, f"cannot open: {e.strerror}") from None
    try:
        _check_fd(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_private_key_file(path: Path) -> None:
    """Raise KeyFileError unless `path` is a regular file, mode & 0o077 == 0, owned by us/root."""
    os.close(_open_checked(path))


def read_private_key_file(path: Path) -> bytes:
    """The contents of a private key file that passed `check_private_key_file`."""
    fd = _open_checked(path)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise KeyFileError(path, f"cannot read: {e.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(path, f"larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    return data


def _seed_from_pem(path: Path, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            path, "the PEM key is encrypted; store it unencrypted (mode 0600)"
        ) from None
    except ValueError:
        raise KeyFileError(path, "not a valid PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            path,
            f"a {type(key).__name__} key, not Ed25519 "
            "(make one with 'openssl genpkey -algorithm ed25519' or 'compliance-agent keygen')",
        )
    return key.private_bytes_raw()


def parse_private_key(path: Path, data: bytes) -> SigningKey:
    """Parse seed-hex or PKCS#8 PEM key bytes; `path` only names the file in errors."""
    if data.lstrip().startswith(PEM_MARKER):
        return SigningKey(_seed_from_pem(path, data))
    text = data.strip()
    if len(text) != 64:
        raise KeyFileError(
            path,
            "not a key file: expected 64 hex characters (an Ed25519 seed, as "
            "'compliance-agent keygen' writes) or a PKCS#8 PEM key",
        )
    try:
        seed = bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(path, "the 64 characters are not all hex digits") from None
    return SigningKey(seed)


def load_signing_key(path: Path) -> Signer:
    """Check permissions, read and parse the key file at `path`."""
    path = Path(path)
    return Signer(parse_private_key(path, read_private_key_file(path)))


def write_seed_file(path: Path, signing_key: SigningKey, force: bool = False) -> None:
    """Write `signing_key` as seed hex with mode 0600, created exclusively.

    Without `force` an existing file is never touched. With `force` it is
    replaced atomically (new file written beside it, then renamed over it).
    """
    path = Path(path)
    target = path.with_name(f".{path.name}.tmp-{os.getpid()}") if force else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    if force:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)  # a leftover of an interrupted earlier --force
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(path, "already exists; refusing to overwrite (use --force)") from None
    except OSError as e:
        raise KeyFileError(path, f"cannot create: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may have removed bits, never added: be explicit
        os.write(fd, bytes(signing_key).hex().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        os.replace(target, path)
    dir_fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def generate_key_file(path: Path, force: bool = False) -> Signer:
    """Generate a fresh Ed25519 key, write it to `path` (seed format), return its Signer."""
    key = SigningKey.generate()
    write_seed_file(path, key, force=force)
    return Signer(key)
