"""Disk encryption at rest: is each listed filesystem on a LUKS container?

Observation walks from the filesystem's device up its parents (lsblk PKNAME):
a `crypt` (dm-crypt) device in that chain, or a device carrying a LUKS header,
means the data is encrypted; `cryptsetup luksDump` then gives the version and
cipher. Two independent sources are used on purpose: lsblk's TYPE/FSTYPE come
from sysfs and the udev database (readable without privileges), while
`blkid -p` and cryptsetup read the device itself (root or the `disk` group).
Drifts are alert-only: encrypting a disk is never something an agent does.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from specs.actions import Action
from specs.drift import Drift, Remedy
from specs.host import Host, HostError
from specs.kinds.encryption import EncryptionSpec

LSBLK = ["lsblk", "-J", "-l", "-p", "-o", "NAME,PATH,TYPE,FSTYPE,PKNAME"]
TIMEOUT = 10.0
MAX_DEPTH = 8  # disk -> part -> luks -> lvm -> ... ; deeper means a loop in the data


class LuksInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int | None = None
    cipher: str | None = None
    key_bits: int | None = None
    uuid: str | None = None


class DeviceObservation(BaseModel):
    model_config = ConfigDict(frozen=True)

    target: str  # as listed in the spec ('/' when the spec lists none)
    device: str | None = None  # block device holding the filesystem
    chain: list[str] = []  # device, then its parents up to the disk
    encrypted: bool = False
    via: str | None = None  # 'dm-crypt' (opened mapping) or 'luks-header' (the device itself)
    luks_device: str | None = None
    luks: LuksInfo | None = None
    error: str | None = None


class EncryptionObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    devices: list[DeviceObservation]


def parse_lsblk(text: str) -> dict[str, dict[str, Any]]:
    """Flat `lsblk -J -l -p` output, indexed by both NAME and PATH."""
    data = json.loads(text)
    index: dict[str, dict[str, Any]] = {}
    for dev in data.get("blockdevices", []):
        for key in ("name", "path"):
            if isinstance(dev.get(key), str):
                index[dev[key]] = dev
    return index


def parse_findmnt_source(text: str) -> str | None:
    """SOURCE of the first filesystem in `findmnt -J` output, without a btrfs '[/subvol]'."""
    data = json.loads(text)
    for fs in data.get("filesystems", []):
        src = fs.get("source")
        if isinstance(src, str) and src:
            return src.split("[", 1)[0]
    return None


def parse_blkid_export(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_luks_dump(text: str) -> LuksInfo:
    """Version, data cipher, key size and UUID from `cryptsetup luksDump` (LUKS1 or LUKS2)."""
    fields: dict[str, str] = {}
    segment_cipher: str | None = None
    key_bits: int | None = None
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not raw.startswith((" ", "\t")) and line.endswith(":"):
            section = line[:-1]
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if section == "Data segments" and key == "cipher" and segment_cipher is None:
            segment_cipher = value
        elif section == "Keyslots" and key == "Key" and key_bits is None:
            key_bits = _int_prefix(value)
        elif key not in fields:
            fields[key] = value
    version = _int_prefix(fields.get("Version", ""))
    cipher = segment_cipher
    if cipher is None and "Cipher name" in fields:  # LUKS1
        mode = fields.get("Cipher mode")
        cipher = f"{fields['Cipher name']}-{mode}" if mode else fields["Cipher name"]
    if key_bits is None:
        key_bits = _int_prefix(fields.get("MK bits", ""))
    return LuksInfo(version=version, cipher=cipher, key_bits=key_bits, uuid=fields.get("UUID"))


def _int_prefix(value: str) -> int | None:
    head = value.split()[0] if value.split() else ""
    return int(head) if head.isdigit() else None


class EncryptionController(ControllerBase[EncryptionSpec, EncryptionObserved]):
    spec_type = EncryptionSpec
    kind = "encryption"

    def observe(self, host: Host, spec: EncryptionSpec) -> EncryptionObserved:
        index: dict[str, dict[str, Any]] = {}
        lsblk_problem: str | None = None
        try:
            done = host.run(LSBLK, timeout=TIMEOUT)
            if done.exit_code == 0:
                index = parse_lsblk(done.stdout)
            else:
                lsblk_problem = f"lsblk exited {done.exit_code}: {done.stderr.strip()[:200]}"
        except (HostError, ValueError) as e:
            lsblk_problem = f"lsblk: {e}"
        targets = spec.devices or ["/"]
        return EncryptionObserved(
            devices=[self._observe_one(host, t, index, lsblk_problem) for t in targets]
        )

    def _observe_one(
        self, host: Host, target: str, index: dict[str, dict[str, Any]], lsblk_problem: str | None
    ) -> DeviceObservation:
        if target.startswith("/dev/"):
            device = target
        else:
            source, problem = _mount_source(host, target)
            if source is None:
                return DeviceObservation(target=target, error=problem)
            device = source
            if not device.startswith("/dev/"):
                return DeviceObservation(
                    target=target, device=device,
                    error=f"{target} is mounted from {device!r}, not a block device; list the "
                    "persistent block devices or mountpoints that hold data instead",
                )
        chain = _chain(device, index)
        for pos, dev in enumerate(chain):
            entry = index.get(dev, {})
            if entry.get("type") == "crypt" and pos + 1 < len(chain):
                luks_dev = chain[pos + 1]
                return DeviceObservation(
                    target=target, device=device, chain=chain, encrypted=True, via="dm-crypt",
                    luks_device=luks_dev, luks=_luks_info(host, luks_dev),
                )
            if _has_luks_header(host, dev, entry):
                return DeviceObservation(
                    target=target, device=device, chain=chain, encrypted=True,
                    via="dm-crypt" if pos > 0 else "luks-header",
                    luks_device=dev, luks=_luks_info(host, dev),
                )
        error = None
        if not _exists(host, device):
            error = f"{device} does not exist"
        elif lsblk_problem and len(chain) == 1:
            error = f"parents of {device} unknown ({lsblk_problem})"
        return DeviceObservation(target=target, device=device, chain=chain, error=error)

    def diff(self, spec: EncryptionSpec, observed: EncryptionObserved) -> list[Drift]:
        drifts: list[Drift] = []
        for d in observed.devices:
            field = f"devices.{d.target}"
            if d.encrypted:
                version = d.luks.version if d.luks else None
                if version is not None and version < spec.min_luks_version:
                    drifts.append(Drift(
                        field=field, reason="WeakLuksVersion",
                        expected=f"LUKS{spec.min_luks_version}", actual=f"LUKS{version}",
                        message=f"{d.luks_device} is LUKS{version}; convert it with "
                        "'cryptsetup convert --type luks2' in a maintenance window",
                        remedy=Remedy.alert,
                    ))
                continue
            if d.error and (d.device is None or "does not exist" in d.error):
                reason = "DeviceNotFound"
            else:
                reason = "NotEncrypted"
            chain = " <- ".join(d.chain) or (d.device or "?")
            drifts.append(Drift(
                field=field, reason=reason, expected="LUKS", actual=d.error or "plain",
                message=f"{d.target}: " + (d.error or f"no LUKS container under {chain}")
                + "; data at rest on this device is not encrypted (re-install onto LUKS)",
                remedy=Remedy.alert,
            ))
        return drifts

    def plan(
        self, spec: EncryptionSpec, observed: EncryptionObserved, drifts: list[Drift]
    ) -> list[Action]:
        return []  # never an action: re-encrypting a disk is an operator's decision

    def facts(self, spec: EncryptionSpec, observed: EncryptionObserved) -> dict[str, Any]:
        luks: dict[str, Any] = {}
        for d in observed.devices:
            luks[d.target] = {
                "device": d.device,
                "encrypted": d.encrypted,
                "luks_device": d.luks_device,
                "luks_version": d.luks.version if d.luks else None,
                "cipher": d.luks.cipher if d.luks else None,
            }
        return {"luks": luks}


def _mount_source(host: Host, mountpoint: str) -> tuple[str | None, str | None]:
    argv = ["findmnt", "-J", "-o", "SOURCE,TARGET,FSTYPE", "--mountpoint", mountpoint]
    try:
        done = host.run(argv, timeout=TIMEOUT)
    except HostError as e:
        return None, f"findmnt: {e}"
    if done.exit_code != 0:
        return None, f"{mountpoint} is not a mountpoint (findmnt exited {done.exit_code})"
    try:
        source = parse_findmnt_source(done.stdout)
    except ValueError as e:
        return None, f"findmnt output for {mountpoint} is not JSON: {e}"
    if source is None:
        return None, f"findmnt reports no source for {mountpoint}"
    return source, None


def _chain(device: str, index: dict[str, dict[str, Any]]) -> list[str]:
    chain = [device]
    current = index.get(device)
    while current is not None and len(chain) < MAX_DEPTH:
        parent = current.get("pkname")
        if not isinstance(parent, str) or not parent or parent in chain:
            break
        chain.append(parent)
        current = index.get(parent)
    return chain


def _has_luks_header(host: Host, dev: str, entry: dict[str, Any]) -> bool:
    if entry.get("fstype") == "crypto_LUKS":
        return True
    try:
        done = host.run(["blkid", "-p", "-o", "export", dev], timeout=TIMEOUT)
        if done.exit_code == 0 and parse_blkid_export(done.stdout).get("TYPE") == "crypto_LUKS":
            return True
        # blkid found nothing it knows (2) or could not read: ask cryptsetup directly
        is_luks = host.run(["cryptsetup", "isLuks", dev], timeout=TIMEOUT)
    except HostError:
        return False
    return is_luks.exit_code == 0


def _luks_info(host: Host, dev: str) -> LuksInfo | None:
    try:
        done = host.run(["cryptsetup", "luksDump", dev], timeout=TIMEOUT)
    except HostError:
        return None
    if done.exit_code != 0:
        return None
    return parse_luks_dump(done.stdout)


def _exists(host: Host, path: str) -> bool:
    try:
        host.stat(path)
    except OSError:
        return False
    return True
