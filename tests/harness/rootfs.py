"""The Debian rootfs the test containers boot: built once with debootstrap, then cached.

Cached under the repo in ``.cache/rootfs/<key>/rootfs`` (gitignored), where
the key hashes the suite and ROOTFS_PACKAGES, so changing the package list
builds a new tree once. An flock makes concurrent test processes wait for a
single build; a ``complete`` marker is written only after an atomic rename,
so an interrupted build is never used. Containers boot it with
``--volatile=overlay``: the cached tree is never written to.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from reconciler.actuator.host import run_capped
from specs.host import HostError

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Everything any integration test needs inside the container, in one place:
# changing it changes the cache key and rebuilds the rootfs once.
ROOTFS_PACKAGES: tuple[str, ...] = (
    "systemd", "dbus", "nftables", "procps", "iproute2",
    "python3",  # stdlib-only helpers (reconciler/nft_sandbox.py) run inside, e.g. in the demo
)
BUILD_TIMEOUT = 900.0  # seconds; a cold build takes ~30-60 s on a good mirror


class RootfsError(HostError):
    """The rootfs could not be built."""


def rootfs_key(suite: str = SUITE, packages: Sequence[str] = ROOTFS_PACKAGES) -> str:
    return hashlib.sha256(f"{suite}\n{','.join(sorted(packages))}".encode()).hexdigest()[:16]


def ensure_rootfs(
    cache_dir: Path | None = None,
    suite: str = SUITE,
    packages: Sequence[str] = ROOTFS_PACKAGES,
) -> Path:
    """Return a built rootfs directory, building it once (flock) if missing."""
    base = (cache_dir or REPO_ROOT / ".cache" / "rootfs") / rootfs_key(suite, packages)
    rootfs = base / "rootfs"
    done = base / "complete"
    if done.exists():
        return rootfs
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "lock", "w") as lock:
        # Concurrent test processes wait here; the first one builds.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return rootfs
        staging = base / f"staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        if rootfs.exists():
            shutil.rmtree(rootfs)  # a half-built tree from an interrupted run
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(staging),
            MIRROR,
        ]
        try:
            result = run_capped(argv, BUILD_TIMEOUT)
        except HostError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise RootfsError(f"building the test rootfs failed: {e}") from e
        if result.exit_code != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RootfsError(
                f"debootstrap exited {result.exit_code} building {rootfs}; "
                f"check network access to {MIRROR}.\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        staging.rename(rootfs)
        done.write_text(" ".join(argv) + "\n")
    return rootfs
