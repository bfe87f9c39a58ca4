"""Wiring at construction, the controller contract and the config boundary:
rules mypy and import-linter do not state, checked on the source."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from typing import Any

import pytest

from controllers.base import ControllerBase, KindController, Phase
from reconciler.runtime.registry import BUILTIN, ControllerRegistry, UnknownKindError

ROOT = Path(__file__).resolve().parents[2]
# Only the composition root and the CLI read AgentConfig.
CONFIG_FREE = [ROOT / "reconciler" / "runtime", ROOT / "reconciler" / "ops",
               ROOT / "reconciler" / "evidence" / "recorder.py"]


def py_files(*paths: Path) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    return out


@pytest.mark.parametrize("path", py_files(*CONFIG_FREE), ids=lambda p: p.name)
def test_only_the_composition_root_and_cli_read_the_config(path: Path) -> None:
    assert "AgentConfig" not in path.read_text(), f"{path} gets a policy object, not AgentConfig"


def _wiring_mutations(path: Path) -> list[str]:
    """`other.attr = ...`, `other.attr.append(...)` and the like, outside `self`."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def owner(node: ast.expr) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and owner(t) != "self":
                found.append(f"{path.name}:{t.lineno} assigns {ast.unparse(t)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"append", "insert", "extend", "add_collect_hook"}
                and isinstance(node.func.value, ast.Attribute)
                and owner(node.func.value) != "self"):
            found.append(f"{path.name}:{node.lineno} mutates {ast.unparse(node.func.value)}")
    return found


def test_the_composition_root_wires_only_through_constructors() -> None:
    assert _wiring_mutations(ROOT / "reconciler" / "service.py") == []


def test_the_mutation_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("agent.desired.loader = f\nagent.listeners.insert(0, g)\nself.x = 1\n")
    assert len(_wiring_mutations(bad)) == 2


def test_the_runtime_never_probes_controllers() -> None:
    for path in py_files(ROOT / "reconciler" / "runtime"):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in {"getattr", "hasattr"}]
        assert calls == [], f"{path.name} probes attributes; use the Controller contract"


def _controller_classes() -> list[type[ControllerBase[Any, Any]]]:
    import controllers

    out: list[type[ControllerBase[Any, Any]]] = []
    for info in pkgutil.iter_modules(controllers.__path__, prefix="controllers."):
        mod = importlib.import_module(info.name)
        out.extend(c for _, c in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(c, ControllerBase) and c is not ControllerBase
                   and c.__module__ == mod.__name__)
    return out


def test_every_builtin_kind_has_a_typed_controller() -> None:
    registry = ControllerRegistry()
    classes = {c.kind: c for c in _controller_classes()}
    assert set(classes) == set(BUILTIN)
    for kind, cls in classes.items():
        ctrl = registry[kind]
        assert isinstance(ctrl, cls), kind
        assert ctrl.kind == kind
        assert "spec_type" in vars(cls), f"{cls.__name__} declares its spec type"
        assert not inspect.isabstract(cls), f"{cls.__name__} implements observe/diff/plan"
    assert {k for k, c in classes.items() if c.phase is Phase.guard_inputs} == {"time"}


def test_registry_refuses_unknown_kinds_and_prefers_overrides() -> None:
    from controllers.services import ServicesController

    mine = ServicesController()
    registry = ControllerRegistry({"services": mine})
    assert registry["services"] is mine
    with pytest.raises(UnknownKindError, match="no controller for kind 'printer'"):
        registry["printer"]
    assert registry.rank("time") == 0 and registry.rank("printer") == len(BUILTIN)


def test_a_controller_refuses_a_spec_of_another_kind() -> None:
    from controllers.base import SpecTypeError
    from controllers.services import ServicesController
    from specs.kinds.time_ import TimeSpec

    def steps(*_: object) -> None:
        raise AssertionError("must not be reached")

    ctrl: KindController = ServicesController()
    with pytest.raises(SpecTypeError, match="ServicesController reconciles ServicesSpec, not TimeSpec"):
        ctrl.run_with(steps, TimeSpec())
