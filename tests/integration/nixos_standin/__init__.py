"""A faithful stand-in of the NixOS profile layout, for tests and the demo.

Inside a systemd container (tests.harness.sdbox) it lays out what the
patching controller and the rebuild transaction read and run:

* ``/nix/store/<hash>-nixos-system-<name>/`` per generation, with
  ``bin/switch-to-configuration`` (starts/stops that generation's units with
  the real systemctl), ``units/``, ``nixos-version``(``.json``), and
  ``kernel``/``initrd`` links;
* ``/nix/var/nix/profiles/system -> system-N-link -> <store path>``,
  ``/run/current-system`` and ``/run/booted-system``;
* ``nix-env``, ``nixos-rebuild`` and ``nixos-version`` stand-ins in
  ``/usr/local/bin``.

The shell scripts next to this file are test fixtures that run inside the
container; they are not agent code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from specs.host import Completed

HERE = Path(__file__).resolve().parent
PROFILE = "/nix/var/nix/profiles/system"
TOOLS = ("nix-env", "nixos-rebuild", "nixos-version")
NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


class Container(Protocol):
    def run(self, argv: Sequence[str], timeout: float = 30.0) -> Completed: ...

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None: ...


@dataclass(frozen=True)
class StandinGeneration:
    """One NixOS system generation: the units it runs and how its switch behaves."""

    name: str
    units: Mapping[str, str] = field(default_factory=dict)
    switch_exit: int | None = None  # force switch-to-configuration's exit code
    kernel_version: str = "6.6.40"
    nixos_version: str = "24.05.20240715.def5678"
    nixpkgs_revision: str = "def5678a9b0c1d2e3f405162738495a6b7c8d9e0"
    configuration_revision: str | None = None


def store_path(name: str, kind: str = "nixos-system") -> str:
    """A deterministic, well-formed /nix/store path (32 Nix-base32 characters)."""
    digest = hashlib.sha256(f"{kind}-{name}".encode()).digest()
    h = "".join(NIX32[b % 32] for b in digest[:32])
    return f"/nix/store/{h}-{kind}-{name}"


def _check(box: Container, argv: Sequence[str]) -> Completed:
    done = box.run(argv, timeout=60.0)
    if done.exit_code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.exit_code}: {done.stdout}{done.stderr}")
    return done


def install_nixos_standin(
    box: Container,
    generations: Sequence[StandinGeneration],
    *,
    active: str | None = None,
    flakes: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Lay out the generations and make `active` (default: the first) generation 1.

    `flakes` maps flake references to generation names for the nixos-rebuild
    stand-in. Returns generation name -> store path.
    """
    paths: dict[str, str] = {}
    switch_script = (HERE / "switch-to-configuration").read_text()
    for gen in generations:
        out = store_path(gen.name)
        paths[gen.name] = out
        box.write_file(f"{out}/bin/switch-to-configuration", switch_script, 0o755)
        for unit, text in gen.units.items():
            box.write_file(f"{out}/units/{unit}", text)
        if not gen.units:
            _check(box, ["mkdir", "-p", f"{out}/units"])
        version: dict[str, str] = {
            "nixosVersion": gen.nixos_version, "nixpkgsRevision": gen.nixpkgs_revision,
        }
        if gen.configuration_revision:
            version["configurationRevision"] = gen.configuration_revision
        box.write_file(f"{out}/nixos-version.json", json.dumps(version) + "\n")
        box.write_file(f"{out}/nixos-version", gen.nixos_version + "\n")
        if gen.switch_exit is not None:
            box.write_file(f"{out}/switch-exit", f"{gen.switch_exit}\n")
        kernel = store_path(gen.kernel_version, "linux")
        initrd = store_path(f"{gen.kernel_version}-{gen.name}", "initrd-linux")
        _check(box, ["ln", "-sfn", f"{kernel}/bzImage", f"{out}/kernel"])
        _check(box, ["ln", "-sfn", f"{initrd}/initrd", f"{out}/initrd"])
    for tool in TOOLS:
        box.write_file(f"/usr/local/bin/{tool}", (HERE / tool).read_text(), 0o755)
    lines = "".join(f"{ref} {paths[name]}\n" for ref, name in (flakes or {}).items())
    box.write_file("/etc/nixos-standin/flakes", lines)
    first = paths[active or generations[0].name]
    _check(box, ["nix-env", "-p", PROFILE, "--set", first])
    _check(box, [f"{first}/bin/switch-to-configuration", "switch"])
    _check(box, ["ln", "-sfn", first, "/run/booted-system"])
    return paths
