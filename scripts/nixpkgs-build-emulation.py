#!/usr/bin/env python3
"""Build compliance-agent the way nixpkgs builds nix/package.nix, without Nix.

nixpkgs' buildPythonApplication with `pyproject = true` runs, in order:

1. pypaBuildHook: `python -m build --no-isolation --outdir dist/ --wheel` in the
   package source, with only `build-system` and the `dependencies` in the
   environment (no download, and build's dependency check on: a
   `[build-system].requires` the release's setuptools does not meet fails);
2. pythonRuntimeDepsCheckHook: every `Requires-Dist` of the wheel's METADATA
   (markers evaluated, pre-releases allowed) must be installed at a version
   its specifier admits, else "X not installed" / "X<spec> not satisfied by
   version V" and the build fails;
3. the check phase: pytestCheckHook runs `python -m pytest` on
   `enabledTestPaths` in the source directory, with the installed wheel, its
   dependencies and `nativeCheckInputs` only; then pythonImportsCheck imports
   each module outside the source tree.

This script replays those steps on the Python minor version of the release
(a local interpreter: pyenv's, or python3.X on PATH) in venvs that hold
exactly the versions of nix/nixpkgs-versions.toml. What package.nix asks for
(build-system, dependencies, nativeCheckInputs, test paths, imports, the
source filter) is read from package.nix itself through
nix/eval/package-inputs.nix, so a package.nix that forgets a test dependency
fails here as it would in nixpkgs. Not emulated: Nix's sandbox (no network;
pip here installs the pinned versions beforehand, as Nix would have them in
the store) and the build of the dependencies themselves (their PyPI wheels
stand in for nixpkgs' builds of the same versions).

Exit status: 0 when every requested phase passed, 1 when one failed (the phase
and the tool's own message are printed), 2 for a problem of this machine
(no such interpreter, no nix-instantiate, pip could not install a pin).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "nix" / "nixpkgs-versions.toml"
PACKAGE_INPUTS = REPO / "nix" / "eval" / "package-inputs.nix"
PHASES = ("build", "runtime-deps", "check")
PIP_TIMEOUT = 900.0
PHASE_TIMEOUT = 1800.0


class MachineError(Exception):
    """This machine cannot run the emulation (exit 2), as opposed to a failed build."""


class PhaseFailed(Exception):
    """A build phase failed the way it would fail in nixpkgs (exit 1)."""


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = PHASE_TIMEOUT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    print("+ " + " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout, check=False)


def find_python(minor: str, explicit: str | None) -> Path:
    """The interpreter for Python `minor` (e.g. "3.13"): --python, PATH, then pyenv."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    on_path = shutil.which(f"python{minor}")
    if on_path:
        candidates.append(Path(on_path))
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv"]
    for root in filter(None, roots):
        versions = Path(root) / "versions"
        if versions.is_dir():
            found = sorted(versions.glob(f"{minor}.*/bin/python{minor}"), reverse=True)
            candidates.extend(found)
    for cand in candidates:
        if cand.exists():
            probe = run([str(cand), "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                        timeout=60)
            if probe.returncode == 0 and probe.stdout.strip() == minor:
                return cand
    raise MachineError(
        f"no Python {minor} interpreter found (looked at --python, python{minor} on PATH and "
        f"pyenv's versions/{minor}.*): nixpkgs builds this release with Python {minor}; "
        f"install one (e.g. `pyenv install {minor}`) or pass --python PATH"
    )


def package_inputs(names_from: str) -> dict[str, object]:
    """What nix/package.nix asks nixpkgs for, evaluated by nix-instantiate against
    the package names of release `names_from`."""
    nix = shutil.which("nix-instantiate")
    if nix is None:
        raise MachineError("nix-instantiate is not on PATH (Debian package nix-bin)")
    proc = run([nix, "--eval", "--strict", "--json", "--readonly-mode", str(PACKAGE_INPUTS),
                "--argstr", "release", names_from], timeout=120, env={**os.environ, "NIX_PATH": ""})
    if proc.returncode != 0:
        raise PhaseFailed(f"evaluating nix/package.nix failed:\n{proc.stderr}")
    return dict(json.loads(proc.stdout))


def pins(section: dict[str, dict[str, object]], names: list[str], what: str) -> list[str]:
    """`dist==version` for nixpkgs attribute names, from one table section."""
    out = []
    for name in names:
        entry = section.get(name)
        if entry is None:
            raise PhaseFailed(f"{what} {name!r} has no version in {TABLE.relative_to(REPO)}")
        out.append(f"{entry.get('pypi', name)}=={entry['version']}")
    return out


def make_venv(python: Path, where: Path, requirements: list[str]) -> Path:
    """A venv with exactly `requirements` (and what they pull in); reused while they match."""
    stamp = where / ".requirements"
    wanted = "\n".join(sorted(requirements)) + "\n" + str(python) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return where / "bin" / "python"
    shutil.rmtree(where, ignore_errors=True)
    made = run([str(python), "-m", "venv", str(where)], timeout=300)
    if made.returncode != 0:
        raise MachineError(f"creating a venv with {python} failed: {made.stderr}")
    vpy = where / "bin" / "python"
    if requirements:
        # --no-build-isolation is not needed: only wheels of pinned versions go in.
        done = run([str(vpy), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *requirements], timeout=PIP_TIMEOUT)
        if done.returncode != 0:
            raise MachineError(f"pip could not install {requirements}:\n{done.stdout}{done.stderr}")
    stamp.write_text(wanted)
    return vpy


def copy_source(entries: list[str], dest: Path) -> None:
    """The package's `src`: the entries package.nix's filter keeps, caches left out."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for name in entries:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def sandbox_env(vpy: Path, scratch: Path) -> dict[str, str]:
    """A builder's environment: nothing inherited from the caller (a Nix build starts
    from a clean one), the environment's interpreter first on PATH, and a short
    TMPDIR as the sandbox's /build (unix socket paths must stay under 108 bytes)."""
    home = scratch / "homeless-shelter"
    home.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="nixbld-")
    return {"PATH": f"{vpy.parent}:/usr/bin:/bin", "HOME": str(home), "TMPDIR": tmp,
            "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "SOURCE_DATE_EPOCH": "315532800"}


def build_wheel(vpy: Path, src: Path) -> Path:
    env = sandbox_env(vpy, src.parent / "build-scratch")
    try:
        done = run([str(vpy), "-m", "build", "--no-isolation", "--outdir", "dist/", "--wheel"],
                   cwd=src, env=env)
    finally:
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    print(done.stdout[-4000:], done.stderr[-8000:], sep="\n")
    if done.returncode != 0:
        raise PhaseFailed("pypaBuildPhase failed (python -m build --no-isolation --wheel)")
    wheels = sorted((src / "dist").glob("*.whl"))
    if len(wheels) != 1:
        raise PhaseFailed(f"expected one wheel in dist/, found {wheels}")
    return wheels[0]


# The check of nixpkgs' python-runtime-deps-check-hook.py, run by the build
# environment's interpreter (it needs `packaging`, as the hook does).
RUNTIME_DEPS_CHECK = r"""
import importlib.metadata, re, sys, zipfile
from packaging.metadata import Metadata, parse_email
from packaging.requirements import Requirement

with zipfile.ZipFile(sys.argv[1]) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    raw, _ = parse_email(whl.read(name).decode("utf-8"))
ok = True
for req in Metadata.from_raw(raw, validate=False).requires_dist or []:
    if req.marker and not req.marker.evaluate():
        continue
    pkg = re.sub(r"[-_.]+", "-", req.name).lower()
    try:
        dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
        print(f"  - {pkg} not installed", file=sys.stderr)
        ok = False
        continue
    req.specifier.prereleases = True
    if req.specifier and dist.version not in req.specifier:
        print(f"  - {pkg}{req.specifier} not satisfied by version {dist.version}", file=sys.stderr)
        ok = False
    else:
        print(f"  ok {pkg}{req.specifier} with {dist.version}")
sys.exit(0 if ok else 1)
"""


def runtime_deps_check(vpy: Path, wheel: Path) -> None:
    done = run([str(vpy), "-c", RUNTIME_DEPS_CHECK, str(wheel)])
    print(done.stdout, done.stderr, sep="\n")
    if done.returncode != 0:
        raise PhaseFailed("pythonRuntimeDepsCheckHook failed: a Requires-Dist is not met by "
                          "the release's packages (see above)")


def check_phase(vpy: Path, wheel: Path, src: Path, inputs: dict[str, object]) -> None:
    done = run([str(vpy), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                str(wheel)], timeout=PIP_TIMEOUT)
    if done.returncode != 0:
        raise MachineError(f"installing the wheel failed: {done.stderr}")
    paths = [str(p) for p in inputs["enabledTestPaths"]]  # type: ignore[attr-defined]
    flags = [str(f) for f in inputs["pytestFlags"]]  # type: ignore[attr-defined]
    disabled = [f"--ignore={p}" for p in inputs["disabledTestPaths"]]  # type: ignore[attr-defined]
    env = sandbox_env(vpy, src.parent / "check-scratch")
    try:
        tests = run([str(vpy), "-m", "pytest", "-p", "no:cacheprovider", *flags, *disabled,
                     *paths], cwd=src, env=env)
    finally:
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    print(tests.stdout[-6000:], tests.stderr[-4000:], sep="\n")
    if tests.returncode != 0:
        raise PhaseFailed("pytestCheckPhase failed (tests above, run with only nativeCheckInputs)")
    outside = src.parent / "imports-check"
    outside.mkdir(exist_ok=True)
    for module in inputs["pythonImportsCheck"]:  # type: ignore[attr-defined]
        imp = run([str(vpy), "-c", f"import {module}"], cwd=outside, env=env, timeout=120)
        if imp.returncode != 0:
            raise PhaseFailed(f"pythonImportsCheckPhase: import {module} failed:\n{imp.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", default=None,
                        help="table key under [releases] (default: the one marked current)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--python", default=None, help="interpreter of the release's minor version")
    parser.add_argument("--work", default=str(REPO / ".nixpkgs-emulation"),
                        help="work directory (venvs are kept there between runs)")
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}")
    releases = tomllib.loads(TABLE.read_text())["releases"]
    key = args.release or next(k for k, r in releases.items() if r.get("current"))
    if key not in releases:
        parser.error(f"no release {key!r} in {TABLE}")
    release = releases[key]
    try:
        python = find_python(str(release["python"]), args.python)
        print(f"release {key}: Python {release['python']} at {python}")
        current = next(k for k, r in releases.items() if r.get("current"))
        inputs = package_inputs(current)
        build_pins = pins(release["build-system"],
                          sorted({"setuptools", "wheel", "build", "packaging", "pyproject-hooks"}
                                 | set(inputs["buildSystem"])), "build-system")  # type: ignore[arg-type]
        needs_deps = any(p in phases for p in ("runtime-deps", "check"))
        dep_pins = pins(release["packages"], list(inputs["dependencies"]),  # type: ignore[arg-type]
                        "dependency") if needs_deps else []
        work = Path(args.work) / key
        digest = hashlib.sha256("\n".join(build_pins + dep_pins).encode()).hexdigest()[:12]
        build_py = make_venv(python, work / f"build-env-{digest}", build_pins + dep_pins)
        src = work / "source"
        copy_source(list(inputs["srcEntries"]), src)  # type: ignore[arg-type]
        wheel = build_wheel(build_py, src)
        print(f"built {wheel.name}")
        if "runtime-deps" in phases:
            runtime_deps_check(build_py, wheel)
        if "check" in phases:
            check_pins = pins(release["packages"], list(inputs["nativeCheckInputs"]),  # type: ignore[arg-type]
                              "nativeCheckInput")
            digest = hashlib.sha256("\n".join(dep_pins + check_pins).encode()).hexdigest()[:12]
            check_py = make_venv(python, work / f"check-env-{digest}", dep_pins + check_pins)
            check_phase(check_py, wheel, src, inputs)
    except MachineError as e:
        print(f"nixpkgs-build-emulation: cannot run here: {e}", file=sys.stderr)
        return 2
    except PhaseFailed as e:
        print(f"nixpkgs-build-emulation: FAILED ({key}): {e}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as e:
        print(f"nixpkgs-build-emulation: FAILED ({key}): timed out: {e}", file=sys.stderr)
        return 1
    print(f"nixpkgs-build-emulation: OK ({key}): phases {', '.join(phases)} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
