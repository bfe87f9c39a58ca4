"""Fixtures giving integration tests real parts: a booted systemd, a network namespace.

Every test in tests/integration is marked ``integration`` automatically.
Fixtures check their preconditions with tests.harness.require, so a machine
without root or a tool skips (or, under COMPLIANCE_AGENT_REQUIRE_INTEGRATION=1,
fails) with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.harness.sdbox import SystemdContainer, ensure_rootfs, reap_stale
from tests.support.fault_report import write_summary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_summary(terminalreporter)  # the fault campaign's numbers, in every log


def _require_container_tools() -> None:
    require_root()
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        require_tool(tool)
    if not Path("/sys/fs/cgroup/systemd").is_dir() and not Path(
        "/sys/fs/cgroup/unified"
    ).is_dir():
        from tests.harness.require import unavailable

        unavailable("needs the hybrid cgroup layout (/sys/fs/cgroup/{systemd,unified})")


@pytest.fixture(scope="session")
def systemd_rootfs() -> Path:
    """The cached debootstrap rootfs (built once, ~30-60 s, then reused)."""
    _require_container_tools()
    reap_stale()  # containers of an earlier, killed test run
    return ensure_rootfs()


@pytest.fixture
def systemd_container(systemd_rootfs: Path, tmp_path: Path) -> Iterator[SystemdContainer]:
    """A freshly booted systemd container (shares the host network)."""
    with SystemdContainer(tmp_path / "sdbox", rootfs=systemd_rootfs) as box:
        yield box


@pytest.fixture
def systemd_container_netns(
    systemd_rootfs: Path, tmp_path: Path
) -> Iterator[SystemdContainer]:
    """A freshly booted systemd container with its own network namespace (for nftables)."""
    require_tool("nft")
    with SystemdContainer(
        tmp_path / "sdbox-net", rootfs=systemd_rootfs, private_network=True
    ) as box:
        yield box


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    """A throwaway network namespace with loopback up."""
    require_root()
    require_tool("ip")
    with NetNamespace() as ns:
        yield ns
