"""Generate the published JSON Schemas from the pydantic models.

Like CRD manifests generated from Go types: the files under schemas/ are
build output checked into the repo, and CI fails when they are stale.

    python -m reconciler.schemas write schemas
    python -m reconciler.schemas check schemas
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specs.baseline import Baseline
from specs.config import AgentConfig


def _config_schema() -> dict[str, Any]:
    schema = AgentConfig.model_json_schema(by_alias=True)
    # hostId defaults to the machine's hostname; don't bake this machine's name in.
    schema["properties"]["hostId"].pop("default", None)
    schema["$id"] = "https://compliance-agent.dev/schemas/agent-config.json"
    return schema


def _baseline_schema() -> dict[str, Any]:
    schema = Baseline.model_json_schema()
    schema["$id"] = "https://compliance-agent.dev/schemas/baseline.json"
    return schema


SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "agent-config.schema.json": _config_schema,
    "baseline.schema.json": _baseline_schema,
}


def render(build: Callable[[], dict[str, Any]]) -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "check"):
        print("usage: python -m reconciler.schemas write|check DIR", file=sys.stderr)
        return 2
    mode, out = argv[0], Path(argv[1])
    stale = []
    for name, build in SCHEMAS.items():
        path = out / name
        text = render(build)
        if mode == "write":
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
        elif not path.exists() or path.read_text() != text:
            stale.append(str(path))
    if stale:
        print("stale JSON Schemas (the models changed): " + ", ".join(stale), file=sys.stderr)
        print("run 'make schemas' and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
