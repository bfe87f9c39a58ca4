"""nix/package.nix built the way nixpkgs builds it, off Nix.

scripts/nixpkgs-build-emulation.py replays nixpkgs' pyproject build on the
release's Python minor version with the versions of nix/nixpkgs-versions.toml:
`python -m build --no-isolation --wheel` (dependency check on), the runtime-deps
check of every Requires-Dist, then the check phase with only nativeCheckInputs,
then pythonImportsCheck. What package.nix asks for is read from package.nix.

The negative cases run the same script on a copy of the tree with one defect
each (the ones nixpkgs hit before): a PEP 639 license string with an older
setuptools, a `[build-system]` floor the release does not meet, a test input
missing from nativeCheckInputs, a Requires-Dist range the release's package
misses. Each must fail in the phase nixpkgs would fail in, with its message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.require import require_tool, unavailable

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path("scripts") / "nixpkgs-build-emulation.py"
# venvs are kept here between runs (keyed by the pinned versions)
WORK = REPO / ".nixpkgs-emulation"
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", ".nixpkgs-emulation", "__pycache__", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", "*.egg-info", "build", "dist",
)


def emulate(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    require_tool("nix-instantiate")
    proc = subprocess.run(
        [sys.executable, str(tree / SCRIPT), "--work", str(WORK), *args],
        capture_output=True, text=True, timeout=2400, cwd=tree,
    )
    if proc.returncode == 2:  # this machine lacks the interpreter, nix or the pins
        unavailable(f"nixpkgs build emulation cannot run here: {proc.stderr.strip()[-600:]}")
    return proc


def defective_copy(tmp_path: Path, edit: tuple[str, str, str]) -> Path:
    """A copy of the tree with one textual edit (file, old, new); the edit must apply."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=COPY_IGNORE, symlinks=True)
    rel, old, new = edit
    path = tree / rel
    text = path.read_text()
    assert old in text, f"{rel} no longer contains {old!r}: update this test"
    path.write_text(text.replace(old, new, 1))
    return tree


def test_package_builds_and_checks_on_the_current_release() -> None:
    proc = emulate(REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert re.search(r"release nixos-26-05: Python 3\.13 at ", out), out[:2000]
    assert "python -m build --no-isolation --outdir dist/ --wheel" in out
    for dep in ("pydantic", "httpx", "pynacl", "sqlalchemy", "prometheus-client", "cryptography"):
        assert re.search(rf"  ok {dep}\S* with \S+", out), dep
    assert re.search(r"=+ \d+ passed", out), out[-3000:]
    assert "OK (nixos-26-05): phases build, runtime-deps, check passed" in out


def test_license_form_is_accepted_by_an_older_setuptools() -> None:
    """The previous release's setuptools (75.x) builds the wheel of this tree too."""
    proc = emulate(REPO, "--release", "nixos-24-11", "--phases", "build")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]


@pytest.mark.parametrize(
    ("edit", "release", "phases", "expected"),
    [
        pytest.param(
            ("pyproject.toml", 'license = { text = "Apache-2.0" }', 'license = "Apache-2.0"'),
            "nixos-24-11", "build",
            r"project\.license`? must be valid exactly by one definition",
            id="pep639-license-string-with-setuptools-75",
        ),
        pytest.param(
            ("pyproject.toml", 'requires = ["setuptools>=61"]', 'requires = ["setuptools>=77"]'),
            "nixos-24-11", "build",
            r"Missing dependencies:\s+setuptools>=77",
            id="build-system-floor-above-the-release",
        ),
        pytest.param(
            ("nix/package.nix", "    dnslib\n", ""),
            "nixos-26-05", "build,check",
            r"No module named 'dnslib'",
            id="dnslib-missing-from-nativeCheckInputs",
        ),
        pytest.param(
            ("pyproject.toml", '"pydantic>=2.6,<3"', '"pydantic>=2.6,<2.10"'),
            "nixos-26-05", "build,runtime-deps",
            r"pydantic<2\.10,>=2\.6 not satisfied by version 2\.",
            id="requires-dist-range-the-release-misses",
        ),
    ],
)
def test_each_known_defect_fails_the_emulated_build(
    tmp_path: Path, edit: tuple[str, str, str], release: str, phases: str, expected: str
) -> None:
    tree = defective_copy(tmp_path, edit)
    proc = emulate(tree, "--release", release, "--phases", phases)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-6000:]
    assert re.search(expected, out), out[-6000:]
    assert f"FAILED ({release})" in out
