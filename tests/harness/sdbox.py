"""A real systemd 252 in a throwaway systemd-nspawn container, usable as a Host.

Recipe: a debootstrap minbase rootfs, cached under the repo in
``.cache/rootfs/<key>/`` and booted read-only through ``--volatile=overlay``
so every container starts from the same clean state. Each container gets its
own cgroup (v1 name=systemd and v2 "unified" hierarchies) which the launcher
joins before exec, so the container's cgroups live there and teardown can
find and remove everything. Commands reach the container with
``nsenter -t <container PID 1> -a`` (there is no host bus for ``systemctl -M``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.actuator.host import (
    command_env,
    read_text_capped,
    run_capped,
    stat_result_to_filestat,
)
from specs.host import CommandNotFound, Completed, FileStat, HostError
from tests.harness.rootfs import (  # re-exported: tests import them from here
    REPO_ROOT,
    ROOTFS_PACKAGES,
    SUITE,
    RootfsError,
    ensure_rootfs,
    rootfs_key,
)

__all__ = [
    "REPO_ROOT", "ROOTFS_PACKAGES", "SUITE", "Bind", "ContainerError", "ContainerHost",
    "RootfsError", "SystemdContainer", "ensure_rootfs", "reap_stale", "rootfs_key",
]

BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
CGROUP_HIERARCHIES = ("systemd", "unified")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNIT_DIR_IN_CONTAINER = "/usr/local/lib/systemd/system"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_counter = itertools.count()


class ContainerError(HostError):
    """The container could not be booted or reached."""


@dataclass(frozen=True)
class Bind:
    """A host path made visible inside the container."""

    host_path: Path
    container_path: str
    read_only: bool = True

    def arg(self) -> str:
        flag = "--bind-ro" if self.read_only else "--bind"
        return f"{flag}={self.host_path}:{self.container_path}"


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(") ", 1)[1][:1] != "Z"  # a zombie has already exited


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def _join_cgroups(dirs: Sequence[Path]) -> None:
    # Runs in the forked child before exec: move it into the container's
    # cgroups so nspawn and everything below it is created there.
    pid = str(os.getpid())
    for d in dirs:
        (d / "cgroup.procs").write_text(pid)


class SystemdContainer:
    """A booted systemd container. Also a `specs.host.Host` for code under test."""

    def __init__(
        self,
        workdir: Path,
        *,
        private_network: bool = False,
        binds: Sequence[Bind] = (),
        rootfs: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.private_network = private_network
        self.binds = tuple(binds)
        self.rootfs = rootfs
        self.name = f"sdbox-{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        self.units_dir = workdir / "units"
        self.cgroups = [CGROUP_ROOT / h / self.name for h in CGROUP_HIERARCHIES]
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's PID 1, as the host sees it

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        rootfs = self.rootfs or ensure_rootfs()
        self.units_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "systemd-nspawn", "-q", "-D", str(rootfs), "--boot", "--register=no",
            "--keep-unit", "--console=passive", "-M", self.name, "--volatile=overlay",
            f"--bind={self.units_dir}:{UNIT_DIR_IN_CONTAINER}",
            *(b.arg() for b in self.binds),
        ]  # fmt: skip
        if self.private_network:
            argv.append("--private-network")
        try:
            for d in self.cgroups:
                d.mkdir()
            with open(self.workdir / f"{self.name}.log", "wb") as log:
                self._nspawn = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=lambda: _join_cgroups(self.cgroups),
                )
            self._wait_booted(time.monotonic() + timeout)
        except BaseException:
            self.stop()  # whatever part was set up: processes, cgroups
            raise

    def _wait_booted(self, deadline: float) -> None:
        assert self._nspawn is not None
        our_pidns = os.readlink("/proc/self/ns/pid")
        state = "not started"
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise ContainerError(
                    f"systemd-nspawn exited {self._nspawn.returncode} while booting: "
                    f"{self.log_tail()}"
                )
            if self.leader is None:
                self.leader = self._find_leader(our_pidns)
            if self.leader is not None:
                remaining = max(deadline - time.monotonic(), 0.1)
                try:
                    done = self._nsenter(
                        ["systemctl", "is-system-running", "--wait"], min(remaining, 20.0)
                    )
                    state = done.stdout.strip()
                except HostError as e:
                    state = str(e)
                if state in ("running", "degraded"):
                    return
            time.sleep(0.02)
        raise ContainerError(
            f"container {self.name} did not boot within the deadline "
            f"(last state: {state!r}): {self.log_tail()}"
        )

    def _find_leader(self, our_pidns: str) -> int | None:
        assert self._nspawn is not None
        for pid in _children(self._nspawn.pid):
            # Before it execs systemd, the child may still be in our
            # namespaces; nsenter-ing it then would talk to the host.
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") == our_pidns:
                    continue
                if Path(f"/proc/{pid}/comm").read_text().strip() != "systemd":
                    continue
            except (FileNotFoundError, ProcessLookupError):
                continue
            return pid
        return None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Power off (SIGTERM to nspawn), then SIGKILL what is left; remove the cgroups."""
        proc = self._nspawn
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        # If nspawn died (or ignored us), the container's PID 1 may still run;
        # killing it ends its PID namespace and with it every process inside.
        if self.leader is not None and _pid_alive(self.leader):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        self._remove_cgroups(time.monotonic() + timeout)

    def _remove_cgroups(self, deadline: float) -> None:
        leftover: list[str] = []
        while True:
            leftover = []
            for top in self.cgroups:
                if not top.exists():
                    continue
                for dirpath, _dirs, _files in os.walk(top, topdown=False):
                    try:
                        os.rmdir(dirpath)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        leftover.append(dirpath)  # still has processes: retry
            if not leftover or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if leftover:
            raise ContainerError(f"could not remove cgroups (processes left?): {leftover}")

    def log_tail(self, limit: int = 4000) -> str:
        log = self.workdir / f"{self.name}.log"
        try:
            return log.read_text(errors="replace")[-limit:]
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> SystemdContainer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- Host --------------------------------------------------------------

    def _nsenter(
        self, argv: Sequence[str], timeout: float, stdin: bytes | None = None
    ) -> Completed:
        if self.leader is None:
            raise ContainerError(f"container {self.name} is not running")
        wrapped = ["nsenter", "-t", str(self.leader), "-a", "--", *argv]
        # the host's PATH (venvs, pyenv shims) means nothing inside the container
        env = command_env({"PATH": CONTAINER_PATH})
        return run_capped(wrapped, timeout, env=env, report_argv=argv, stdin=stdin)

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        done = self._nsenter(argv, timeout, stdin)
        # nsenter reports a missing inner binary itself (exit 127); make it
        # the same error LocalHost raises
        if done.exit_code == 127 and done.stderr.startswith(
            f"nsenter: failed to execute {argv[0]}: No such file"
        ):
            raise CommandNotFound(list(argv))
        return done

    @property
    def root(self) -> Path:
        if self.leader is None:
            raise ContainerError(f"container {self.name} is not running")
        return Path(f"/proc/{self.leader}/root")

    def host_path(self, path: str, *, follow_last: bool = True) -> Path:
        """Resolve a container path to a host path, following symlinks inside the container.

        /proc/PID/root alone would let an absolute symlink in the container
        resolve against the host's root.
        """
        root = self.root
        parts = [p for p in path.split("/") if p]
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            if part == "..":
                if resolved:
                    resolved.pop()
                continue
            candidate = root.joinpath(*resolved, part)
            if (parts or follow_last) and candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(40, "Too many levels of symbolic links", path)
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = []
                parts = [p for p in target.split("/") if p] + parts
                continue
            resolved.append(part)
        return root.joinpath(*resolved)

    def read_text(self, path: str) -> str:
        return read_text_capped(self.host_path(path))

    def stat(self, path: str) -> FileStat:
        p = self.host_path(path, follow_last=False)
        st = os.lstat(p)
        return stat_result_to_filestat(st, os.readlink(p) if p.is_symlink() else None)

    # -- test helpers ------------------------------------------------------

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def install_unit(self, name: str, text: str) -> None:
        (self.units_dir / name).write_text(text)
        self.check(["systemctl", "daemon-reload"])

    def check(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        """run() that raises with the output when the command fails."""
        done = self.run(argv, timeout)
        if done.exit_code != 0:
            raise ContainerError(
                f"{' '.join(argv)} exited {done.exit_code} in {self.name}: "
                f"{done.stdout}{done.stderr}"
            )
        return done

    def processes(self) -> list[int]:
        """Host PIDs of every process in the container's cgroups."""
        pids: set[int] = set()
        for top in self.cgroups:
            for procs in top.rglob("cgroup.procs") if top.exists() else ():
                with contextlib.suppress(OSError):
                    pids.update(int(x) for x in procs.read_text().split())
        return sorted(pids)


ContainerHost = SystemdContainer


def reap_stale(deadline_s: float = STOP_TIMEOUT) -> list[str]:
    """Remove containers left by test processes that died (e.g. SIGKILLed pytest).

    A container's cgroup is named sdbox-<creator pid>-...; if that pid is gone,
    nothing will ever stop it: kill what is inside and remove the cgroups.
    """
    reaped: list[str] = []
    deadline = time.monotonic() + deadline_s
    for hierarchy in CGROUP_HIERARCHIES:
        top = CGROUP_ROOT / hierarchy
        for cg in top.glob("sdbox-*") if top.is_dir() else ():
            try:
                creator = int(cg.name.split("-")[1])
            except (IndexError, ValueError):
                continue
            if creator == os.getpid() or _pid_alive(creator):
                continue
            for procs in cg.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            box = SystemdContainer.__new__(SystemdContainer)
            box.cgroups = [cg]
            box._remove_cgroups(deadline)
            reaped.append(str(cg))
    return reaped


@contextlib.contextmanager
def systemd_container(workdir: Path, **kwargs: object) -> Iterator[SystemdContainer]:
    box = SystemdContainer(workdir, **kwargs)  # type: ignore[arg-type]
    box.start()
    try:
        yield box
    finally:
        box.stop()
