"""Encryption controller against recorded lsblk/findmnt/blkid/cryptsetup output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.encryption import (
    EncryptionController,
    EncryptionObserved,
    parse_findmnt_source,
    parse_luks_dump,
)
from specs.drift import Remedy
from specs.host import CommandNotFound, Completed, FileStat
from specs.kinds.encryption import EncryptionSpec

FIX = Path(__file__).resolve().parent.parent / "fixtures" / "encryption"


def fx(name: str) -> str:
    return (FIX / name).read_text(encoding="utf-8")


LSBLK = ("lsblk", "-J", "-l", "-p", "-o", "NAME,PATH,TYPE,FSTYPE,PKNAME")


def findmnt(mp: str) -> tuple[str, ...]:
    return ("findmnt", "-J", "-o", "SOURCE,TARGET,FSTYPE", "--mountpoint", mp)


class FakeHost:
    def __init__(
        self,
        table: dict[tuple[str, ...], tuple[int, str]],
        existing: Sequence[str] = (),
    ) -> None:
        self.table = table
        self.existing = set(existing)
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed:
        key = tuple(argv)
        self.calls.append(key)
        if key not in self.table:
            if argv[0] in ("blkid",):
                return Completed(argv=list(argv), exit_code=2, stdout="", stderr="",
                                 duration=0.0)
            if argv[0] == "cryptsetup":
                return Completed(argv=list(argv), exit_code=1, stdout="",
                                 stderr=f"Device {argv[-1]} is not a valid LUKS device.",
                                 duration=0.0)
            raise CommandNotFound(argv)
        code, out = self.table[key]
        return Completed(argv=list(argv), exit_code=code, stdout=out, stderr="", duration=0.0)

    def read_text(self, path: str) -> str:
        raise FileNotFoundError(path)

    def stat(self, path: str) -> FileStat:
        if path in self.existing:
            return FileStat(mode=0o60660, uid=0, gid=6, size=0, mtime=0.0, is_dir=False,
                            is_symlink=False)
        raise FileNotFoundError(path)


def observe(host: FakeHost, spec: EncryptionSpec) -> EncryptionObserved:
    return EncryptionController().observe(host, spec)


def test_luks2_dump() -> None:
    info = parse_luks_dump(fx("luksdump_luks2.txt"))
    assert info.version == 2
    assert info.cipher == "aes-xts-plain64"
    assert info.key_bits == 512
    assert info.uuid == "4afd2d1e-32db-4470-b585-d41fb6a69959"


def test_luks1_dump() -> None:
    info = parse_luks_dump(fx("luksdump_luks1.txt"))
    assert info.version == 1
    assert info.cipher == "aes-xts-plain64"
    assert info.key_bits == 512


def test_findmnt_strips_btrfs_subvolume() -> None:
    assert parse_findmnt_source(fx("findmnt_root_btrfs_subvol.json")) == "/dev/mapper/vg-root"


def test_root_on_luks_via_udev_metadata() -> None:
    host = FakeHost({
        LSBLK: (0, fx("lsblk_luks_root.json")),
        findmnt("/"): (0, fx("findmnt_root_cryptroot.json")),
        ("cryptsetup", "luksDump", "/dev/nvme0n1p2"): (0, fx("luksdump_luks2.txt")),
    })
    ctrl = EncryptionController()
    spec = EncryptionSpec()
    o = ctrl.observe(host, spec)
    d = o.devices[0]
    assert d.target == "/"
    assert d.encrypted and d.via == "dm-crypt"
    assert d.luks_device == "/dev/nvme0n1p2"
    assert d.chain == ["/dev/mapper/cryptroot", "/dev/nvme0n1p2", "/dev/nvme0n1"]
    assert d.luks is not None and d.luks.version == 2
    assert ctrl.diff(spec, o) == []
    facts = ctrl.facts(spec, o)
    assert facts["luks"]["/"]["cipher"] == "aes-xts-plain64"
    assert facts["luks"]["/"]["luks_version"] == 2


def test_lvm_on_luks_without_udev_fstype() -> None:
    # No udev database (fstype null everywhere): the crypt TYPE in the chain is enough.
    host = FakeHost({
        LSBLK: (0, fx("lsblk_lvm_on_luks_no_udev.json")),
        findmnt("/"): (0, fx("findmnt_root_btrfs_subvol.json")),
        ("cryptsetup", "luksDump", "/dev/sda2"): (0, fx("luksdump_luks1.txt")),
    })
    o = observe(host, EncryptionSpec())
    d = o.devices[0]
    assert d.encrypted
    assert d.luks_device == "/dev/sda2"
    assert d.luks is not None and d.luks.version == 1
    drifts = EncryptionController().diff(EncryptionSpec(min_luks_version=2), o)
    assert [x.reason for x in drifts] == ["WeakLuksVersion"]
    assert drifts[0].remedy is Remedy.alert


def test_plain_root_is_alert_only() -> None:
    host = FakeHost({
        LSBLK: (0, fx("lsblk_plain.json")),
        findmnt("/"): (0, fx("findmnt_root_plain.json")),
        ("blkid", "-p", "-o", "export", "/dev/vda1"): (0, fx("blkid_ext4.txt")),
    }, existing=["/dev/vda1"])
    ctrl = EncryptionController()
    spec = EncryptionSpec()
    o = ctrl.observe(host, spec)
    assert not o.devices[0].encrypted
    assert o.devices[0].error is None
    drifts = ctrl.diff(spec, o)
    assert [d.reason for d in drifts] == ["NotEncrypted"]
    assert drifts[0].remedy is Remedy.alert
    assert "/dev/vda1 <- /dev/vda" in drifts[0].message
    assert ctrl.plan(spec, o, drifts) == []


def test_raw_luks_device_detected_by_blkid_probe() -> None:
    host = FakeHost({
        LSBLK: (0, '{"blockdevices": []}'),
        ("blkid", "-p", "-o", "export", "/dev/loop0"): (0, fx("blkid_luks2.txt")),
        ("cryptsetup", "luksDump", "/dev/loop0"): (0, fx("luksdump_luks2.txt")),
    }, existing=["/dev/loop0"])
    d = observe(host, EncryptionSpec(devices=["/dev/loop0"])).devices[0]
    assert d.encrypted and d.via == "luks-header"
    assert d.luks is not None and d.luks.cipher == "aes-xts-plain64"


def test_cryptsetup_is_luks_fallback_when_blkid_cannot_read() -> None:
    host = FakeHost({
        LSBLK: (0, '{"blockdevices": []}'),
        ("cryptsetup", "isLuks", "/dev/loop3"): (0, ""),
    }, existing=["/dev/loop3"])
    d = observe(host, EncryptionSpec(devices=["/dev/loop3"])).devices[0]
    assert d.encrypted
    assert d.luks is None  # luksDump failed: still encrypted, details unknown


def test_missing_device_and_tmpfs_root() -> None:
    host = FakeHost({
        LSBLK: (0, '{"blockdevices": []}'),
        findmnt("/"): (0, fx("findmnt_root_tmpfs.json")),
        findmnt("/srv"): (1, ""),
    })
    ctrl = EncryptionController()
    spec = EncryptionSpec(devices=["/dev/sdz9", "/", "/srv"])
    o = ctrl.observe(host, spec)
    reasons = {d.field: d.reason for d in ctrl.diff(spec, o)}
    assert reasons == {
        "devices./dev/sdz9": "DeviceNotFound",
        "devices./": "NotEncrypted",
        "devices./srv": "DeviceNotFound",
    }
    assert "not a block device" in (o.devices[1].error or "")
    assert "not a mountpoint" in (o.devices[2].error or "")


def test_lsblk_missing_still_probes_the_device() -> None:
    host = FakeHost({
        ("blkid", "-p", "-o", "export", "/dev/loop0"): (0, fx("blkid_luks2.txt")),
        ("cryptsetup", "luksDump", "/dev/loop0"): (0, fx("luksdump_luks2.txt")),
    }, existing=["/dev/loop0", "/dev/loop1"])
    o = observe(host, EncryptionSpec(devices=["/dev/loop0", "/dev/loop1"]))
    assert o.devices[0].encrypted
    assert not o.devices[1].encrypted
    assert "parents of /dev/loop1 unknown" in (o.devices[1].error or "")


@pytest.mark.parametrize("bad", ["dev/sda", "/dev/sd a", ""])
def test_spec_rejects_relative_or_spaced_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        EncryptionSpec(devices=[bad])


def test_example_baseline_parses() -> None:
    from specs.baseline import load_baseline

    b = load_baseline(FIX.parents[2] / "examples" / "baselines" / "encryption.json")
    assert b.encryption == EncryptionSpec(devices=["/", "/var/lib"], min_luks_version=2)


@given(st.text(max_size=400))
def test_luks_dump_parser_total(text: str) -> None:
    info = parse_luks_dump(text)
    assert info.version is None or info.version >= 0
