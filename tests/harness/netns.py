"""A throwaway network namespace (``ip netns``), usable as a Host.

Commands run via ``ip netns exec NAME``: real nft, ip, ping against a
network stack of their own, so tests never touch the machine's firewall.
Files are the host's (a network namespace does not change the filesystem).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Sequence

from reconciler.actuator.host import LocalHost, command_env, run_capped
from specs.host import CommandNotFound, Completed, FileStat, HostError

_counter = itertools.count()


class NetNamespaceError(HostError):
    pass


class NetNamespace:
    def __init__(self, prefix: str = "ca-test") -> None:
        self.name = f"{prefix}-{os.getpid()}-{next(_counter)}-{secrets.token_hex(2)}"
        self._local = LocalHost()
        self._created = False

    def start(self) -> None:
        self._ip(["netns", "add", self.name])
        self._created = True
        self.check(["ip", "link", "set", "lo", "up"])

    def stop(self) -> None:
        if self._created:
            self._ip(["netns", "del", self.name])
            self._created = False

    def __enter__(self) -> NetNamespace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ip(self, args: Sequence[str]) -> None:
        done = run_capped(["ip", *args], 30.0)
        if done.exit_code != 0:
            raise NetNamespaceError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")

    # -- Host --------------------------------------------------------------

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, *, stdin: bytes | None = None
    ) -> Completed:
        if not self._created:
            raise NetNamespaceError(f"network namespace {self.name} does not exist")
        wrapped = ["ip", "netns", "exec", self.name, *argv]
        done = run_capped(wrapped, timeout, env=command_env(), report_argv=argv, stdin=stdin)
        # `ip netns exec` reports a missing binary itself; same error as LocalHost
        if done.exit_code != 0 and done.stderr.startswith(
            f'exec of "{argv[0]}" failed: No such file'
        ):
            raise CommandNotFound(list(argv))
        return done

    def read_text(self, path: str) -> str:
        return self._local.read_text(path)

    def stat(self, path: str) -> FileStat:
        return self._local.stat(path)

    # -- test helpers ------------------------------------------------------

    def check(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        done = self.run(argv, timeout)
        if done.exit_code != 0:
            raise NetNamespaceError(
                f"{' '.join(argv)} exited {done.exit_code} in netns {self.name}: "
                f"{done.stdout}{done.stderr}"
            )
        return done

    def exists(self) -> bool:
        return os.path.exists(f"/run/netns/{self.name}")
