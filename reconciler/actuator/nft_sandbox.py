"""Load an nftables ruleset file into a throwaway network namespace and list it.

    python -m reconciler.actuator.nft_sandbox --sha256 HEX /etc/nftables.rules

prints what `nft -j list ruleset` shows once the file is loaded into an empty
network namespace: the kernel's own rendering of the baseline, directly
comparable with the live listing. The firewall controller runs this through
its Host (so it stays a read-only observer) to learn the expected digest.

Why a helper: `nft` runs a file as one batch, and a `list ruleset` inside
that batch sees the state *before* the commit, so loading and listing need
two nft processes sharing one namespace that outlives the first. This
process enters a new network namespace itself (unshare(2); if unprivileged,
a user namespace too), checks that it really left the host's namespace, and
only then starts nft: it can never touch the live firewall.

The file is read once, its SHA-256 checked against --sha256, and the same
bytes are piped to `nft -f /dev/stdin`, so a file swapped in between cannot
be what gets measured. The firewall controller runs this file as a script
with ``python -I``, so it must import nothing but the standard library.
A file using nft's `include` is refused (exit 2) like a wrong hash: an
included file would be loaded without being hashed.
Exit codes: 0 listed; 2 hash mismatch, `include` or unreadable;
3 nft rejected the file (stderr says why); 4 no sandbox available.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NFT_TIMEOUT = 30.0
NFT_INCLUDE_RE = re.compile(rb"(?<![A-Za-z0-9_])include(?![A-Za-z0-9_])")


class SandboxError(Exception):  # stdlib only: runs as a script with python -I
    pass


def _unshare(flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter_private_netns() -> None:
    """Move this (single-threaded) process into a fresh, empty network namespace."""
    before = os.stat("/proc/self/ns/net").st_ino
    try:
        _unshare(CLONE_NEWNET)
    except PermissionError:
        # Unprivileged: a user namespace grants CAP_NET_ADMIN over a netns
        # it creates. Map ourselves to root inside so nft keeps the capability.
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET)
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"0 {gid} 1")
        except OSError as e:
            raise SandboxError(
                f"cannot create a private network namespace ({e.strerror}); run the agent "
                "with CAP_SYS_ADMIN or allow unprivileged user namespaces"
            ) from None
    if os.stat("/proc/self/ns/net").st_ino == before:
        raise SandboxError("still in the host's network namespace after unshare; refusing")


def load_and_list(ruleset: bytes, nft: str = "nft") -> subprocess.CompletedProcess[bytes]:
    """Load `ruleset` with nft and list it (call only inside a private netns)."""
    load = subprocess.run(
        [nft, "-f", "/dev/stdin"], input=ruleset, capture_output=True, timeout=NFT_TIMEOUT,
        check=False,
    )
    if load.returncode != 0:
        return load
    return subprocess.run(
        [nft, "-j", "list", "ruleset"], capture_output=True, timeout=NFT_TIMEOUT, check=False
    )


def script_argv() -> list[str]:
    """How to start this sandbox: as a script, by file path, isolated (-I).

    Packaged interpreters (Nix's wrapped python) do not carry the
    application's import path into `python -m` children, and the sandbox needs
    only the standard library, so the path of this file is the one reliable
    handle. The agent's firewall controller and the root actuator both use it.
    """
    return [sys.executable, "-I", str(Path(__file__).resolve())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.actuator.nft_sandbox")
    parser.add_argument("--sha256", required=True, help="expected SHA-256 of the file's bytes")
    parser.add_argument("path")
    args = parser.parse_args(argv)
    try:
        with open(args.path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"{args.path}: cannot read: {e.strerror}", file=sys.stderr)
        return 2
    actual = hashlib.sha256(data).hexdigest()
    if actual != args.sha256:
        print(f"{args.path}: sha256 {actual} != expected {args.sha256}; not loading it",
              file=sys.stderr)
        return 2
    if NFT_INCLUDE_RE.search(data):
        print(f"{args.path}: uses 'include' (included files are not hashed); not loading it",
              file=sys.stderr)
        return 2
    try:
        enter_private_netns()
    except SandboxError as e:
        print(str(e), file=sys.stderr)
        return 4
    done = load_and_list(data)
    if done.returncode != 0:
        sys.stderr.write(done.stderr.decode(errors="replace"))
        return 3
    sys.stdout.write(done.stdout.decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
