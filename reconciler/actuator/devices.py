"""Which block devices root reads for the agent's encryption check.

The agent has no /dev of its own (PrivateDevices), so `blkid -p` and
`cryptsetup isLuks|luksDump` run here. A path from the agent is never run
as given: /dev/shm is writable by everyone, so "any /dev path" would make
root open attacker-chosen files (or FIFOs that block it). Instead:

* the allowed set is computed here from the governing baseline's encryption
  spec: each named device, each named mountpoint's device (from this
  process's mountinfo; no spec devices means "/"), and their parents in
  sysfs (partition -> disk, dm/md -> its slaves), which is the chain the
  encryption controller walks with lsblk;
* a requested path must resolve (symlinks followed) to a block device
  (S_ISBLK) whose device number is in that set;
* the command then runs on the kernel's own name for that device number
  (`/dev/<DEVNAME>` from sysfs), re-checked, never on the agent's string, so
  a symlink swapped after the check cannot redirect it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from specs.kinds.encryption import EncryptionSpec

MAX_PARENT_DEPTH = 8  # disk -> part -> luks -> lvm -> ...; deeper is a loop in the data
MAX_DEVICES = 64


class BlockDevices:
    """Resolves the encryption spec to device numbers, and requests to canonical paths."""

    def __init__(
        self,
        sys_root: Path = Path("/sys"),
        mountinfo: Path = Path("/proc/self/mountinfo"),
        dev_root: Path = Path("/dev"),
    ) -> None:
        self.sys_root = sys_root
        self.mountinfo = mountinfo
        self.dev_root = dev_root

    def allowed(self, spec: EncryptionSpec | None) -> set[int]:
        """Device numbers the spec names, with their sysfs parents; empty without a spec."""
        if spec is None:
            return set()
        roots: set[int] = set()
        for target in spec.devices or ["/"]:
            rdev = self._block_rdev(target) if target.startswith("/dev/") else self._mount(target)
            if rdev is not None:
                roots.add(rdev)
        return self._with_parents(roots)

    def canonical(self, path: str, allowed: set[int]) -> str | None:
        """The kernel's /dev path for `path` if it is an allowed block device, else None."""
        if not path.startswith("/dev/") or "\x00" in path or len(path) > 256:
            return None
        rdev = self._block_rdev(path)
        if rdev is None or rdev not in allowed:
            return None
        name = self._devname(rdev)
        if name is None:
            return None
        kernel_path = str(self.dev_root / name)
        try:
            st = os.lstat(kernel_path)  # root-owned /dev; lstat: the name itself must be it
        except OSError:
            return None
        if not stat.S_ISBLK(st.st_mode) or st.st_rdev != rdev:
            return None
        return kernel_path

    # -- resolution ---------------------------------------------------------------------

    def _block_rdev(self, path: str) -> int | None:
        real = os.path.realpath(path)
        if not real.startswith("/dev/") or real.startswith(("/dev/shm/", "/dev/mqueue/")):
            return None
        try:
            st = os.stat(real)
        except OSError:
            return None
        return st.st_rdev if stat.S_ISBLK(st.st_mode) else None

    def _mount(self, mountpoint: str) -> int | None:
        """Device of the filesystem mounted at `mountpoint` (the last mount there wins)."""
        want = os.path.realpath(mountpoint)
        found: int | None = None
        try:
            lines = self.mountinfo.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or "-" not in fields[6:]:
                continue
            if _unescape(fields[4]) != want:
                continue
            sep = fields.index("-", 6)
            major, _, minor = fields[2].partition(":")
            source = _unescape(fields[sep + 2]) if len(fields) > sep + 2 else ""
            rdev = os.makedev(int(major), int(minor)) if major.isdigit() and minor.isdigit() else 0
            if major != "0" and self._sysdir(rdev) is not None:
                found = rdev
            else:  # e.g. btrfs reports an anonymous device number: use the source
                found = self._block_rdev(source) if source.startswith("/dev/") else None
        return found

    def _with_parents(self, roots: set[int]) -> set[int]:
        out: set[int] = set()
        frontier = list(roots)
        for _ in range(MAX_PARENT_DEPTH):
            if not frontier or len(out) >= MAX_DEVICES:
                break
            out.update(frontier)
            nxt: list[int] = []
            for rdev in frontier:
                nxt += [p for p in self._parents(rdev) if p not in out]
            frontier = nxt
        return out

    def _parents(self, rdev: int) -> list[int]:
        sysdir = self._sysdir(rdev)
        if sysdir is None:
            return []
        dirs: list[Path] = []
        if (sysdir / "partition").exists():
            dirs.append(sysdir.parent)
        slaves = sysdir / "slaves"
        if slaves.is_dir():
            dirs += [s.resolve() for s in slaves.iterdir()]
        out = []
        for d in dirs:
            number = _read_dev(d / "dev")
            if number is not None:
                out.append(number)
        return out

    def _sysdir(self, rdev: int) -> Path | None:
        link = self.sys_root / "dev" / "block" / f"{os.major(rdev)}:{os.minor(rdev)}"
        try:
            return link.resolve(strict=True)
        except OSError:
            return None

    def _devname(self, rdev: int) -> str | None:
        sysdir = self._sysdir(rdev)
        if sysdir is None:
            return None
        try:
            uevent = (sysdir / "uevent").read_text()
        except OSError:
            return None
        for line in uevent.splitlines():
            key, _, value = line.partition("=")
            if key == "DEVNAME" and value and ".." not in value and "\x00" not in value:
                return value
        return None


def _read_dev(path: Path) -> int | None:
    try:
        major, _, minor = path.read_text().strip().partition(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def _unescape(field: str) -> str:
    r"""mountinfo escapes space, tab, newline and backslash as \ooo octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
