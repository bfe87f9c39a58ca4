"""Encryption detection against real LUKS headers on loop devices.

Opening a mapping needs device-mapper, which this machine lacks, so the
controller is tested on what it reads from the device itself: `blkid -p`,
`cryptsetup isLuks` and `cryptsetup luksDump` on a real LUKS2 and LUKS1
header, next to a plain ext4 filesystem and an empty device.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controllers.encryption import EncryptionController
from reconciler.actuator.host import LocalHost
from specs.drift import Remedy
from specs.kinds.encryption import EncryptionSpec
from tests.harness.require import require_root, require_tool

KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return done.stdout.strip()


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[str, int], str]]:
    """Factory: a loop device over a sparse file of `size_mb`; always detached afterwards."""
    require_root()
    for tool in ("losetup", "cryptsetup", "blkid", "lsblk", "findmnt", "mkfs.ext4"):
        require_tool(tool)
    attached: list[str] = []

    def make(name: str, size_mb: int) -> str:
        backing = tmp_path / f"{name}.img"
        with open(backing, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        dev = sh("losetup", "-f", "--show", str(backing))
        attached.append(dev)
        return dev

    try:
        yield make
    finally:
        for dev in attached:
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30, check=False)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    key = tmp_path / "luks.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    return key


def test_luks_headers_detected_plain_devices_alerted(
    loop_device: Callable[[str, int], str], key_file: Path
) -> None:
    luks2 = loop_device("luks2", 32)
    sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", *KDF,
       "--key-file", str(key_file), luks2)
    luks1 = loop_device("luks1", 32)
    sh("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1",
       "--pbkdf-force-iterations", "1000", "--key-file", str(key_file), luks1)
    ext4 = loop_device("ext4", 16)
    sh("mkfs.ext4", "-q", "-F", ext4)
    empty = loop_device("empty", 8)

    ctrl = EncryptionController()
    spec = EncryptionSpec(devices=[luks2, luks1, ext4, empty], min_luks_version=2)
    observed = ctrl.observe(LocalHost(), spec)
    by_dev = {d.target: d for d in observed.devices}

    assert by_dev[luks2].encrypted and by_dev[luks2].via == "luks-header"
    info2, info1 = by_dev[luks2].luks, by_dev[luks1].luks
    assert info2 is not None and info2.version == 2 and info2.cipher == "aes-xts-plain64"
    assert by_dev[luks1].encrypted
    assert info1 is not None and info1.version == 1
    assert not by_dev[ext4].encrypted and by_dev[ext4].error is None
    assert not by_dev[empty].encrypted and by_dev[empty].error is None

    drifts = {d.field: d for d in ctrl.diff(spec, observed)}
    assert {f: d.reason for f, d in drifts.items()} == {
        f"devices.{luks1}": "WeakLuksVersion",
        f"devices.{ext4}": "NotEncrypted",
        f"devices.{empty}": "NotEncrypted",
    }
    assert all(d.remedy is Remedy.alert for d in drifts.values())
    assert ctrl.plan(spec, observed, list(drifts.values())) == []

    facts = ctrl.facts(spec, observed)["luks"]
    assert facts[luks2]["luks_version"] == 2 and facts[luks2]["cipher"] == "aes-xts-plain64"
    assert facts[ext4]["encrypted"] is False


def test_missing_device_and_root_mountpoint() -> None:
    require_root()
    for tool in ("findmnt", "lsblk", "blkid", "cryptsetup"):
        require_tool(tool)
    ctrl = EncryptionController()
    spec = EncryptionSpec(devices=["/dev/compliance-agent-no-such-disk", "/"])
    observed = ctrl.observe(LocalHost(), spec)
    missing, root = observed.devices
    assert not missing.encrypted and "does not exist" in (missing.error or "")
    # '/' resolves through the real findmnt to whatever backs this machine's root
    source = sh("findmnt", "-n", "-o", "SOURCE", "--mountpoint", "/").split("[")[0]
    assert root.device == source
    reasons = {d.field: d.reason for d in ctrl.diff(spec, observed)}
    assert reasons["devices./dev/compliance-agent-no-such-disk"] == "DeviceNotFound"
