"""The VM test's script type-checks as the NixOS test driver checks it.

Before a NixOS VM test runs, nixpkgs' driver derivation (nixos/lib/testing/driver.nix)
writes `testScriptWithTypes`: the typed globals of nixos/lib/test-script-prepend.py,
then one line "NAME: Machine; ..." with the nodes' Python names, one line
"vlan1: VLan; ..." with the VLANs, then the test script, and runs
`mypy --no-implicit-optional --pretty --no-color-output testScriptWithTypes`;
a type error fails the build of the test before any VM starts.

Here: the script is taken from nix/tests/vm.nix as Nix renders it (evaluated
by nix-instantiate with stand-ins for pkgs and the flake's `self`, so the
interpolated store paths are fake but the Python is exactly what the driver
gets), the same file is assembled with the typed globals and type stubs of the
driver's `test_driver` package (tests/support/nixos_test_driver), and mypy runs
with the driver's flags on the Python version of the release (3.13).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.require import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STUBS = REPO / "tests" / "support" / "nixos_test_driver"
PREPEND = STUBS / "test-script-prepend.py.txt"

RENDER = """
let
  b = builtins;
  fake = name: {{ type = "derivation"; inherit name;
    outPath = "/nix/store/" + b.substring 0 32 (b.hashString "sha256" name) + "-" + name; }};
  pkgs = {{
    stdenv.hostPlatform.system = "x86_64-linux";
    writeText = name: _: fake name;
    runCommand = name: _: _: fake name;
    python3 = fake "python3" // {{ withPackages = _: fake "python3-env"; }};
    testers.runNixOSTest = args: args;
  }};
  self = {{
    packages.x86_64-linux.compliance-agent = fake "compliance-agent";
    nixosModules.default = {{ }};
    outPath = "/nix/store/00000000000000000000000000000000-source";
  }};
  test = import {vm} {{ inherit pkgs self; }};
in {{
  inherit (test) testScript;
  # the driver names machines after each node's system.name (its hostName,
  # by default the attribute name) and gives every node VLAN 1 by default
  nodes = b.attrNames test.nodes;
}}
"""


def rendered_vm_test(tmp_path: Path) -> dict[str, Any]:
    nix = require_tool("nix-instantiate")
    expr = tmp_path / "render.nix"
    expr.write_text(RENDER.format(vm=REPO / "nix" / "tests" / "vm.nix"))
    proc = subprocess.run([nix, "--eval", "--strict", "--json", "--readonly-mode", str(expr)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NIX_PATH": ""})
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def with_types(script: str, nodes: list[str]) -> str:
    """testScriptWithTypes, assembled as driver.nix does (cat, echo, echo, echo -n)."""
    machines = " ".join(f"{name}: Machine;" for name in nodes)
    return PREPEND.read_text() + machines + "\n" + "vlan1: VLan;" + "\n" + script


def mypy_like_the_driver(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    target = tmp_path / "testScriptWithTypes"
    target.write_text(text)
    # run from tmp_path: the repository's own mypy configuration must not apply
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-implicit-optional", "--pretty", "--no-color-output",
         "--python-version", "3.13", "--cache-dir", str(tmp_path / ".mypy_cache"),
         str(target)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(STUBS)},
    )


def test_vm_test_script_passes_mypy_as_the_driver_runs_it(tmp_path: Path) -> None:
    vm = rendered_vm_test(tmp_path)
    assert sorted(vm["nodes"]) == ["host", "mcp"]
    proc = mypy_like_the_driver(tmp_path, with_types(vm["testScript"], vm["nodes"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_the_check_catches_an_optional_match(tmp_path: Path) -> None:
    """The mistake the driver rejected before: .group() on re.search's Optional result."""
    vm = rendered_vm_test(tmp_path)
    bad = vm["testScript"] + (
        '\nimport re\nscore = re.search(r"([0-9.]+)", host.succeed("true")).group(1)\n'
    )
    proc = mypy_like_the_driver(tmp_path, with_types(bad, vm["nodes"]))
    assert proc.returncode == 1, proc.stdout
    flat = " ".join(proc.stdout.split())  # --pretty wraps long messages
    assert 'Item "None" of "Match[str] | None" has no attribute "group"' in flat
