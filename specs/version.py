"""The agent's version, from one place: `[project] version` in pyproject.toml.

An installed agent (pip, the Nix package) reads it from the distribution's
metadata. A source checkout that was never installed falls back to reading
pyproject.toml beside the packages; anything else reports `UNKNOWN_VERSION`
rather than a made-up number.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "compliance-agent"
UNKNOWN_VERSION = "0+unknown"
_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def version_from_pyproject(path: Path) -> str | None:
    """`[project] version` of the given pyproject.toml if it is this project's."""
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    found = project.get("version")
    if project.get("name") != DISTRIBUTION or not isinstance(found, str):
        return None
    return found


@cache
def agent_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return version_from_pyproject(_PYPROJECT) or UNKNOWN_VERSION


def user_agent() -> str:
    """The HTTP User-Agent the agent sends (control plane, reseller webhook)."""
    return f"{DISTRIBUTION}/{agent_version()}"
