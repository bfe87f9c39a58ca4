"""Generate the published JSON Schemas from the pydantic models.

Like CRD manifests generated from Go types: the files under schemas/ are
build output checked into the repo, and CI fails when they are stale.

    python -m reconciler.cli.schemas write schemas
    python -m reconciler.cli.schemas check schemas
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from specs.baseline import Baseline
from specs.config import AgentConfig
from specs.evidence import EvidencePredicate


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


def _evidence_predicate_schema() -> dict[str, Any]:
    """The predicate of every evidence bundle (in-toto Statement, DSSE-signed), for
    receivers that validate what agents deliver: outcomes and step results are
    closed sets."""
    schema = EvidencePredicate.model_json_schema()
    schema["$id"] = "https://compliance-agent.dev/schemas/evidence-predicate.json"
    return schema


def _options_markdown() -> str:
    """docs/options.md: the option reference, generated so docs and model agree."""
    lines = [
        "# Configuration options",
        "",
        "Generated from `specs.config.AgentConfig` by `make schemas`; do not edit by hand.",
        "The NixOS module (`services.compliance-agent.<option>`) declares the same names,",
        "types and defaults and writes them to the JSON file the agent reads.",
        "",
        "| option | type | default | description |",
        "|---|---|---|---|",
    ]
    schema = _config_schema()
    props, defs = schema["properties"], schema.get("$defs", {})
    fields = {f.alias or n: f for n, f in AgentConfig.model_fields.items()}
    for name, prop in props.items():
        field = fields[name]
        if field.is_required():
            default = "required"
        elif name == "hostId":
            default = "the machine's hostname"
        else:
            value = field.get_default(call_default_factory=True)
            default = f"`{json.dumps(value, default=str)}`"
        desc = (prop.get("description") or "").replace("|", "\\|")
        if "$ref" in prop:
            prop = defs[prop["$ref"].rsplit("/", 1)[-1]]
        lines.append(f"| `{name}` | {_type_of(prop)} | {default} | {desc} |")
    return "\n".join(lines) + "\n"


def _type_of(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "enum" in prop:
        return " or ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    t = prop.get("type", "any")
    if t == "array":
        return f"list of {_type_of(prop.get('items', {}))}"
    if prop.get("format") == "path":
        return "path"
    return str(t)


SCHEMAS: dict[str, Callable[[], dict[str, Any] | str]] = {
    "agent-config.schema.json": _config_schema,
    "baseline.schema.json": _baseline_schema,
    "evidence-predicate.schema.json": _evidence_predicate_schema,
    "../docs/options.md": _options_markdown,
}


def render(build: Callable[[], dict[str, Any] | str]) -> str:
    value = build()
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "check"):
        print("usage: python -m reconciler.cli.schemas write|check DIR", file=sys.stderr)
        return 2
    mode, out = argv[0], Path(argv[1])
    stale = []
    for name, build in SCHEMAS.items():
        path = (out / name).resolve()
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
