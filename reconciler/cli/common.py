"""What every `compliance-agent` command shares: where the config is found,
the `-o` output option, `--version`, and colour.

Standard library only: `status` and `describe` import this before anything
else, and they have a start-up budget (150 ms while the daemon runs).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from specs.errors import ComplianceAgentError

CONFIG_ENV = "COMPLIANCE_AGENT_CONFIG"
# Written by the NixOS module (environment.etc); the service reads the same file.
DEFAULT_CONFIG = Path("/etc/compliance-agent/config.json")
CONFIG_HELP = f"agent config JSON (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})"

TEXT_JSON = ("text", "json")
TEXT_JSON_WIDE = ("text", "json", "wide")
# Old spellings scripts may still pass: accepted with a note on stderr.
DEPRECATED_OUTPUT = {"table": "text"}


class CliError(ComplianceAgentError):
    """A command cannot answer; the message says why and what to do (exit 2)."""


class ConfigNotFound(CliError):
    """No --config, no $COMPLIANCE_AGENT_CONFIG, and no /etc/compliance-agent/config.json."""


def config_path(given: str | Path | None, *, environ: Any = None,
                default: Path = DEFAULT_CONFIG) -> Path:
    """The config file a command reads: `--config`, else $COMPLIANCE_AGENT_CONFIG, else
    /etc/compliance-agent/config.json. A path that was named explicitly is returned as
    it is (the loader says if it cannot be read); ConfigNotFound when nothing is found."""
    if given:
        return Path(given)
    env = (os.environ if environ is None else environ).get(CONFIG_ENV)
    if env:
        return Path(env)
    if default.exists():
        return default
    raise ConfigNotFound(
        f"no agent config found: looked at --config (not given), ${CONFIG_ENV} (not set) "
        f"and {default} (does not exist). On NixOS, enable services.compliance-agent: the "
        f"module writes {default}. Elsewhere pass --config FILE or set {CONFIG_ENV}=FILE."
    )


def add_config_option(parser: argparse.ArgumentParser, help: str = CONFIG_HELP) -> None:
    parser.add_argument("--config", default=None, metavar="FILE", help=help)


def _output_type(choices: Sequence[str]) -> Any:
    def convert(value: str) -> str:
        new = DEPRECATED_OUTPUT.get(value)
        if new is not None and new in choices:
            print(f"compliance-agent: note: '-o {value}' is deprecated; use '-o {new}'",
                  file=sys.stderr)
            return new
        return value

    return convert


def add_output_option(parser: argparse.ArgumentParser, *, wide: bool = False,
                      default: str = "text", help: str | None = None) -> None:
    """`-o text|json[|wide]`, the same option on every command that prints."""
    choices = TEXT_JSON_WIDE if wide else TEXT_JSON
    text = help or ("text: for people; json: one document for scripts"
                    + ("; wide: text with every column, nothing wrapped" if wide else ""))
    parser.add_argument("-o", "--output", type=_output_type(choices), choices=choices,
                        default=default, help=f"{text} (default: {default})")


class DeprecatedJsonFlag(argparse.Action):
    """`--json`, the old spelling of `-o json` (egress refresh)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "deprecated: use -o json")
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"compliance-agent: note: '{option_string}' is deprecated; use '-o json'",
              file=sys.stderr)
        namespace.output = "json"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("compliance-agent")
    except PackageNotFoundError:  # run from a source tree without an install
        return "unknown"


class VersionAction(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def use_colour(stream: TextIO, environ: Any = None) -> bool:
    """Colour only for a terminal, never with NO_COLOR set (no-color.org) or TERM=dumb."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


_SGR = {"green": "32", "red": "31", "yellow": "33", "bold": "1", "dim": "2"}


def paint(text: str, colour: str, enabled: bool) -> str:
    return f"\033[{_SGR[colour]}m{text}\033[0m" if enabled and text else text


def render_fields(doc: Any, indent: int = 0) -> str:
    """A JSON document as indented `key: value` lines, for `-o text` of commands whose
    answer is a document (order verify, evidence show/export/prune)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, dict | list) and value:
                lines.append(f"{pad}{key}:")
                lines.append(render_fields(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(value)}")
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}-")
                lines.append(render_fields(item, indent + 1))
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    else:
        lines.append(f"{pad}{_scalar(doc)}")
    return "\n".join(lines)


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return "(none)"
    return str(value)


def emit(doc: Any, output: str, text: str | None = None) -> None:
    """Print `doc` as `-o` asks: json, or `text` (default: the document's fields)."""
    import json

    if output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        print(text if text is not None else render_fields(doc))
