"""The harness itself: a real systemd boots, runs commands, and leaves nothing behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from specs.host import CommandNotFound, CommandTimeout
from tests.harness.netns import NetNamespace
from tests.harness.require import require_root, require_tool
from tests.harness.sdbox import Bind, ContainerError, SystemdContainer, _pid_alive, reap_stale


def _wait_gone(pids: list[int], deadline: float) -> list[int]:
    while True:
        alive = [p for p in pids if _pid_alive(p)]  # a zombie has exited
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_container_boots_real_systemd(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    state = box.run(["systemctl", "is-system-running"]).stdout.strip()
    assert state in ("running", "degraded")
    version = box.check(["systemctl", "--version"]).stdout
    assert version.startswith("systemd 252")
    # PID 1 inside is systemd, and it is a different PID namespace from ours
    assert box.read_text("/proc/1/comm").strip() == "systemd"
    assert os.readlink(f"/proc/{box.leader}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_run_reports_inner_argv_exit_code_and_errors(
    systemd_container: SystemdContainer,
) -> None:
    box = systemd_container
    done = box.run(["systemctl", "status", "no-such-unit.service"])
    assert done.argv == ["systemctl", "status", "no-such-unit.service"]
    assert done.exit_code == 4  # LSB "no such unit"
    with pytest.raises(CommandTimeout):
        box.run(["sleep", "30"], timeout=0.5)
    with pytest.raises(CommandNotFound):
        box.run(["no-such-binary-xyz"])


def test_files_units_and_symlinks_resolve_inside(systemd_container: SystemdContainer) -> None:
    box = systemd_container
    box.write_file("/etc/demo/app.conf", "key=value\n", mode=0o600)
    assert box.read_text("/etc/demo/app.conf") == "key=value\n"
    assert box.stat("/etc/demo/app.conf").mode == 0o600
    # An absolute symlink inside the container must resolve inside it, not on the host.
    box.check(["ln", "-s", "/etc/demo/app.conf", "/etc/demo/link"])
    st = box.stat("/etc/demo/link")
    assert st.is_symlink and st.link_target == "/etc/demo/app.conf"
    assert box.read_text("/etc/demo/link") == "key=value\n"
    assert not Path("/etc/demo/app.conf").exists()  # nothing leaked to the host

    box.install_unit(
        "demo.service",
        "[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n",
    )
    box.check(["systemctl", "start", "demo.service"])
    assert box.run(["systemctl", "is-active", "demo.service"]).stdout.strip() == "active"


def test_read_only_bind(systemd_rootfs: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "hello.txt").write_text("from the host\n")
    with SystemdContainer(
        tmp_path / "box", rootfs=systemd_rootfs, binds=[Bind(tools, "/opt/tools")]
    ) as box:
        assert box.read_text("/opt/tools/hello.txt") == "from the host\n"
        denied = box.run(["touch", "/opt/tools/new"])
        assert denied.exit_code != 0
        assert "Read-only file system" in denied.stderr


def test_teardown_leaves_no_cgroup_or_process(systemd_rootfs: Path, tmp_path: Path) -> None:
    box = SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs)
    box.start()
    box.install_unit("busy.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    box.check(["systemctl", "start", "busy.service"])
    pids = box.processes()
    assert box.leader in pids and len(pids) >= 3  # nspawn's payload: systemd, journald, sleep
    box.stop()
    assert _wait_gone(pids, time.monotonic() + 10) == []
    for cg in box.cgroups:
        assert not cg.exists(), f"{cg} left behind"


def test_teardown_when_nspawn_was_killed(systemd_rootfs: Path, tmp_path: Path) -> None:
    box = SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs)
    box.start()
    leader = box.leader
    assert leader is not None and box._nspawn is not None
    os.kill(box._nspawn.pid, 9)
    box._nspawn.wait(timeout=10)
    box.stop()
    assert _wait_gone([leader], time.monotonic() + 10) == []
    for cg in box.cgroups:
        assert not cg.exists()


def test_private_network_has_only_loopback(
    systemd_container_netns: SystemdContainer,
) -> None:
    links = systemd_container_netns.check(["ip", "-o", "link"]).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert names == {"lo"}
    nft = systemd_container_netns.check(["nft", "list", "ruleset"])
    assert nft.stdout.strip() == ""


def test_nft_works_in_netns(netns: NetNamespace, tmp_path: Path) -> None:
    assert netns.exists()
    netns.check(["nft", "add", "table", "inet", "t"])
    netns.check(
        ["nft", "add", "chain", "inet", "t", "c", "{ type filter hook input priority 0; }"]
    )
    listed = netns.check(["nft", "list", "ruleset"]).stdout
    assert "table inet t" in listed
    # the host's own namespace is untouched
    from reconciler.actuator.host import LocalHost

    host_rules = LocalHost().run(["nft", "list", "table", "inet", "t"])
    assert host_rules.exit_code != 0
    loopback = netns.check(["ip", "-o", "link", "show", "lo"]).stdout
    assert "UP" in loopback or "LOWER_UP" in loopback


def test_netns_missing_binary_is_command_not_found(netns: NetNamespace) -> None:
    with pytest.raises(CommandNotFound):
        netns.run(["no-such-binary-xyz"])
    assert netns.run(["false"]).exit_code == 1  # an ordinary failure stays a Completed


def test_netns_teardown_removes_it() -> None:
    require_root()
    require_tool("ip")
    ns = NetNamespace()
    ns.start()
    assert ns.exists()
    ns.stop()
    assert not ns.exists()


def test_reap_stale_removes_containers_of_dead_test_runs(
    systemd_rootfs: Path, tmp_path: Path
) -> None:
    box = SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs)
    # pretend a test process that no longer exists created it
    dead = 2**22 + 12345  # above the default pid_max: never a live pid
    box.name = f"sdbox-{dead}-0-abcdef"
    box.cgroups = [cg.parent / box.name for cg in box.cgroups]
    box.start()
    pids = box.processes()
    assert pids
    try:
        reaped = reap_stale()
        assert sorted(reaped) == sorted(str(c) for c in box.cgroups)
        assert _wait_gone(pids, time.monotonic() + 10) == []
        assert not any(c.exists() for c in box.cgroups)
    finally:
        box.stop()


def test_failed_boot_raises_with_the_log_and_cleans_up(
    systemd_rootfs: Path, tmp_path: Path
) -> None:
    not_an_os = tmp_path / "empty-root"
    not_an_os.mkdir()
    box = SystemdContainer(tmp_path / "box", rootfs=not_an_os)
    with pytest.raises(ContainerError, match="systemd-nspawn exited"):
        box.start(timeout=20)
    assert not any(cg.exists() for cg in box.cgroups)
