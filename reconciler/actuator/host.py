"""The local Host: run commands and read files on this machine.

Every command is an argv list executed without a shell, with stdin closed, in
its own process group and session (so a timeout can kill everything it
spawned), with the C locale (so parsers see stable output), and with stdout
and stderr each capped at ``output_cap`` bytes: a runaway tool can neither
hang the loop nor fill memory. Output beyond the cap is drained and dropped,
and the kept text ends with a ``[truncated: N bytes dropped]`` marker.

``run_capped`` is the reusable core; the test harness wraps it to run inside
a systemd container or a network namespace.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import stat as stat_mod
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from specs.host import CommandNotFound, CommandTimeout, Completed, FileStat, HostError

DEFAULT_OUTPUT_CAP = 1024 * 1024  # bytes, per stream
DEFAULT_READ_CAP = 16 * 1024 * 1024  # bytes; config files and rulesets are far smaller
TRUNCATION_MARK = "\n[truncated: {dropped} bytes dropped]"

Clock = Callable[[], float]


def command_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment commands run with: ours, plus a C locale and no pager/colour."""
    env = dict(os.environ)
    # TZ=UTC: tools print timestamps in UTC, which parsers can compare with evidence times
    env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC", "SYSTEMD_PAGER": "",
                "SYSTEMD_COLORS": "0"})
    if extra:
        env.update(extra)
    return env


class _Capped:
    """Collects up to `cap` bytes of one stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = self.kept.decode("utf-8", errors="replace")
        if self.dropped:
            out += TRUNCATION_MARK.format(dropped=self.dropped)
        return out


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill everything the command started, then the command itself.

    The child leads its own session, so its pgid is its pid. Descendants die
    first so their parents (e.g. nsenter, which forks into a container's PID
    namespace) can still reap them: killing all at once would orphan zombies
    to the host's init, which then delays the container's shutdown.
    """
    for pid in _group_members(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1.0)  # a wrapper exits by itself once its child died
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_capped(
    argv: Sequence[str],
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    output_cap: int = DEFAULT_OUTPUT_CAP,
    clock: Clock = time.monotonic,
    report_argv: Sequence[str] | None = None,
    stdin: bytes | None = None,
) -> Completed:
    """Run `argv` (no shell) with capped output; raise CommandTimeout/CommandNotFound.

    `stdin` is written to the command's input, which is then closed (without it
    the input is /dev/null): how a payload reaches a command without a file
    that someone could swap in between.

    `report_argv` is the argv recorded in the Completed and in errors (wrappers
    such as nsenter pass the inner command so evidence shows what was meant).
    """
    shown = list(report_argv if report_argv is not None else argv)
    if not argv:
        raise HostError("empty argv: nothing to run")
    start = clock()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else command_env(),
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError:
        raise CommandNotFound(shown) from None
    except PermissionError as e:
        raise HostError(
            f"{argv[0]}: cannot execute ({e.strerror}); check its permissions"
        ) from None

    assert proc.stdout is not None and proc.stderr is not None
    if stdin is not None:
        assert proc.stdin is not None
        _feed(proc.stdin, stdin)
    out, err = _Capped(output_cap), _Capped(output_cap)
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    deadline = start + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        try:
            while sel.get_map():
                remaining = deadline - clock()
                if remaining <= 0:
                    _kill_group(proc)
                    raise CommandTimeout(shown, timeout)
                for key, _ in sel.select(timeout=min(remaining, 1.0)):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        streams[key.fd].feed(chunk)
                    else:
                        sel.unregister(key.fileobj)
            try:
                exit_code = proc.wait(timeout=max(deadline - clock(), 0.001))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CommandTimeout(shown, timeout) from None
        finally:
            proc.stdout.close()
            proc.stderr.close()
    return Completed(
        argv=shown,
        exit_code=exit_code,
        stdout=out.text(),
        stderr=err.text(),
        duration=clock() - start,
    )


def _feed(pipe: IO[bytes], data: bytes) -> None:
    """Write `data` to the command's input on a thread, then close it: the command
    may fill its output before reading all of its input, so writing inline could
    deadlock against the output loop. A command that exits early breaks the pipe,
    which is its own business (its exit code says so)."""

    def write() -> None:
        with contextlib.suppress(OSError):
            pipe.write(data)
        with contextlib.suppress(OSError):
            pipe.close()

    threading.Thread(target=write, name="command-stdin", daemon=True).start()


def stat_result_to_filestat(st: os.stat_result, link_target: str | None) -> FileStat:
    return FileStat(
        mode=stat_mod.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        mtime=st.st_mtime,
        is_dir=stat_mod.S_ISDIR(st.st_mode),
        is_symlink=stat_mod.S_ISLNK(st.st_mode),
        link_target=link_target,
    )


def read_text_capped(path: str | Path, cap: int = DEFAULT_READ_CAP) -> str:
    """Read a UTF-8 text file, refusing files over `cap` bytes (HostError)."""
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise HostError(f"{path}: larger than {cap} bytes; refusing to read it as text")
    return data.decode("utf-8", errors="replace")


class LocalHost:
    """`specs.host.Host` for this machine."""

    def __init__(
        self,
        *,
        output_cap: int = DEFAULT_OUTPUT_CAP,
        env: Mapping[str, str] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._output_cap = output_cap
        self._env = command_env(env)
        self._clock = clock

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        return run_capped(
            argv, timeout, env=self._env, output_cap=self._output_cap, clock=self._clock,
            stdin=stdin,
        )

    def read_text(self, path: str) -> str:
        return read_text_capped(path)

    def stat(self, path: str) -> FileStat:
        st = os.lstat(path)
        target = os.readlink(path) if stat_mod.S_ISLNK(st.st_mode) else None
        return stat_result_to_filestat(st, target)
