"""Shape rules that import-linter cannot express: one exception root, and
every module importable on its own (no hidden import-order dependency)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from specs.errors import ComplianceAgentError

PACKAGES = ("specs", "controllers", "reconciler")


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
