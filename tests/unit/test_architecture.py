"""Shape rules that import-linter cannot express: one exception root, and
every module importable on its own (no hidden import-order dependency)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from specs.errors import ComplianceAgentError

PACKAGES = ("specs", "controllers", "reconciler")
# Run as a standalone script with `python -I` (no project on sys.path): stdlib only.
STDLIB_ONLY = {"reconciler.actuator.nft_sandbox"}


def all_modules() -> list[str]:
    names: list[str] = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg_name}."):
            if info.name.endswith("__main__"):
                continue
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", all_modules())
def test_every_exception_has_the_one_root(name: str) -> None:
    if name in STDLIB_ONLY:
        return
    mod = importlib.import_module(name)
    for obj_name, obj in vars(mod).items():
        if (inspect.isclass(obj) and issubclass(obj, BaseException)
                and obj.__module__ == name and obj is not ComplianceAgentError):
            assert issubclass(obj, ComplianceAgentError), (
                f"{name}.{obj_name} must derive from specs.errors.ComplianceAgentError")


def test_the_wings_exist_with_a_docstring() -> None:
    for wing in ("runtime", "actuator", "trust", "evidence", "delivery", "store", "ops", "cli"):
        mod = importlib.import_module(f"reconciler.{wing}")
        assert mod.__doc__ and ("Imports" in mod.__doc__ or wing == "cli"), wing


@pytest.mark.parametrize("name", sorted(STDLIB_ONLY))
def test_standalone_scripts_import_only_the_standard_library(name: str) -> None:
    import ast
    import sys

    path = importlib.import_module(name).__file__
    assert path is not None
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""])
            for m in mods:
                top = m.split(".")[0]
                assert top == "__future__" or top in sys.stdlib_module_names, (
                    f"{name} runs as a script with python -I and must not import {m}")
