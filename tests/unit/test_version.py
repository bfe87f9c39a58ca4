"""The version is written once, in pyproject.toml."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from reconciler.runtime.agent import VERSION
from specs import version as version_mod
from specs.version import UNKNOWN_VERSION, agent_version, user_agent, version_from_pyproject

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pyproject_version() -> str:
    return str(tomllib.loads(PYPROJECT.read_text())["project"]["version"])


def test_installed_metadata_and_the_agent_report_pyprojects_version() -> None:
    assert agent_version() == pyproject_version() == VERSION
    assert user_agent() == f"compliance-agent/{pyproject_version()}"


def test_source_checkout_without_metadata_reads_pyproject(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_mod.metadata, "version", not_installed)
    version_mod.agent_version.cache_clear()
    try:
        assert agent_version() == pyproject_version()
        monkeypatch.setattr(version_mod, "_PYPROJECT", PYPROJECT.parent / "absent.toml")
        version_mod.agent_version.cache_clear()
        assert agent_version() == UNKNOWN_VERSION
    finally:
        version_mod.agent_version.cache_clear()


def test_another_projects_pyproject_is_not_ours(tmp_path: Path) -> None:
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nname = "something-else"\nversion = "9.9"\n')
    assert version_from_pyproject(other) is None
    other.write_text("not toml [")
    assert version_from_pyproject(other) is None
    assert version_from_pyproject(PYPROJECT) == pyproject_version()
