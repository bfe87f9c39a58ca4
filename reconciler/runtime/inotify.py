"""The file watch: inotify (through ctypes on libc: no dependency) on the files
and links the specs depend on.

Each target path is watched through its parent directory, not the file itself:
editors, `nixos-rebuild` and freshclam replace files by rename, and a switch
replaces the `/run/current-system` link by rename too; a watch on the old inode
would see neither. An event in a directory whose name is a target hints the
target's keys. A symlink among a target's ancestors (e.g. `/run/current-system`
in `/run/current-system/sw/bin/clamscan`) is watched the same way, and a
change of it rebuilds the watch set, since the directories behind it moved. A
missing directory is watched through its nearest existing ancestor until it
appears.

Falling behind (the kernel queue overflowed) hints every key once; losing the
inotify descriptor is a failed session (down, retried with backoff).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import select
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.runtime.watch import Emit, SupervisedWatch, WatchLost
from specs.watch import WatchTargets

log = logging.getLogger("compliance_agent.watch")

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

# Not IN_MODIFY: every write to every file of /run would wake us; a file written
# in place is seen when it is closed.
DIR_MASK = (IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
            | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
_EVENT = struct.Struct("iIII")


class InotifyUnavailable(WatchLost):
    """inotify could not be set up (no libc symbol, the instance limit hit, ...)."""


@dataclass
class _Entry:
    keys: set[str] = field(default_factory=set)
    structural: bool = False  # a link or directory on the way: rebuild when it changes


@dataclass
class WatchPlan:
    """Directory -> name -> entry, from the targets (pure; tested on its own)."""

    dirs: dict[str, dict[str, _Entry]] = field(default_factory=dict)

    def add(self, directory: str, name: str, key: str, structural: bool) -> None:
        entry = self.dirs.setdefault(directory, {}).setdefault(name, _Entry())
        entry.keys.add(key)
        entry.structural = entry.structural or structural


def plan_watches(paths: Mapping[str, set[str]]) -> WatchPlan:
    """paths: target path -> keys. Reads the filesystem (which ancestors are links,
    which directories exist) but changes nothing."""
    plan = WatchPlan()
    for path, keys in paths.items():
        norm = os.path.normpath(path)
        parent, name = os.path.split(norm)
        for key in keys:
            plan.add(parent, name, key, structural=False)
        # links among the ancestors, and the first missing directory
        ancestor = parent
        while ancestor not in ("/", ""):
            up, base = os.path.split(ancestor)
            if os.path.islink(ancestor) or not os.path.isdir(ancestor):
                for key in keys:
                    plan.add(up, base, key, structural=True)
            ancestor = up
    return plan


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        try:
            self.init1 = libc.inotify_init1
            self.add_watch = libc.inotify_add_watch
        except AttributeError as e:
            raise InotifyUnavailable(f"libc has no inotify: {e}") from None
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


class InotifyWatch(SupervisedWatch):
    """`always`: paths watched whatever the specs say (the baseline file -> EVERY_KIND)."""

    def __init__(self, emit: Emit, *, always: Mapping[str, str] | None = None,
                 name: str = "files") -> None:
        super().__init__(name, emit)
        self._always = dict(always or {})
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._libc: _Libc | None = None
        self.unwatched: list[str] = []  # directories that could not be watched (permissions)

    def covers(self, targets: WatchTargets) -> bool:
        return bool(targets.paths)

    def interrupt(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already woken
            os.write(self._wake_w, b"x")

    def _paths(self) -> dict[str, set[str]]:
        paths: dict[str, set[str]] = {}
        for path, key in self._always.items():
            paths.setdefault(path, set()).add(key)
        for key, t in self.targets().items():
            for path in t.paths:
                paths.setdefault(path, set()).add(key)
        return paths

    def session(self) -> None:
        if self._libc is None:
            self._libc = _Libc()
        fd = self._libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise InotifyUnavailable(f"inotify_init1: {os.strerror(err)}")
        try:
            self._serve(fd)
        finally:
            os.close(fd)

    def _add_all(self, fd: int, plan: WatchPlan) -> dict[int, str]:
        assert self._libc is not None
        by_wd: dict[int, str] = {}
        unwatched = []
        for directory in list(plan.dirs):
            target = directory
            while not os.path.isdir(target) and target not in ("/", ""):
                target = os.path.dirname(target)  # watched through an existing ancestor
            if target != directory:
                # rebuild when the missing directory's ancestors change
                missing = directory
                while os.path.dirname(missing) != target:
                    missing = os.path.dirname(missing)
                keys = {k for e in plan.dirs[directory].values() for k in e.keys}
                for key in keys:
                    plan.add(target, os.path.basename(missing), key, structural=True)
            wd = self._libc.add_watch(fd, target.encode(), DIR_MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err == errno.ENOSPC:
                    raise InotifyUnavailable("fs.inotify.max_user_watches reached")
                unwatched.append(f"{target}: {os.strerror(err)}")
                continue
            by_wd[wd] = target
        self.unwatched = unwatched
        return by_wd

    def _serve(self, fd: int) -> None:
        # Drained before the targets are read, never after: new targets set while
        # this session plans and goes live must still wake it for a fresh session.
        self._drain_wake()
        plan = plan_watches(self._paths())
        by_wd = self._add_all(fd, plan)
        live_dirs = sorted(set(by_wd.values()))
        self.live(f"{len(live_dirs)} directories" +
                  (f"; not watched: {', '.join(self.unwatched)}" if self.unwatched else ""))
        while not self.stopping():
            ready, _, _ = select.select([fd, self._wake_r], [], [])
            if self._wake_r in ready:
                self._drain_wake()
                return  # stop or new targets: the supervisor starts a fresh session
            try:
                data = os.read(fd, 64 * 1024)
            except BlockingIOError:
                continue
            if not data:
                raise WatchLost("inotify descriptor closed")
            if self._dispatch(data, by_wd, plan):
                return  # structure changed: watch again from scratch
        return

    def _dispatch(self, data: bytes, by_wd: dict[int, str], plan: WatchPlan) -> bool:
        keys: set[str] = set()
        rebuild = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size: offset + _EVENT.size + length].split(b"\0", 1)[0]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                self.fell_behind("inotify queue overflowed")
                continue
            directory = by_wd.get(wd)
            if directory is None:
                continue
            entries = plan.dirs.get(directory, {})
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                rebuild = True  # the directory itself went: everything in it may have changed
                keys.update(k for e in entries.values() for k in e.keys)
                continue
            entry = entries.get(os.fsdecode(name))
            if entry is not None:
                keys.update(entry.keys)
                rebuild = rebuild or entry.structural
        for key in sorted(keys):
            self.hint(key)
        return rebuild

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass
