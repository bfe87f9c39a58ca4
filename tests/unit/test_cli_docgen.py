"""Completion scripts and the man page come from the parser (reconciler.cli.docgen):
every command is in them, and the bash script completes what the parser accepts."""

from __future__ import annotations

import subprocess

from reconciler.cli.docgen import bash, fish, man, nodes, tree, zsh
from reconciler.cli.main import build_parser
from tests.harness.require import require_tool

ROOT = tree(build_parser())
PATHS = [" ".join(n.path) for n in nodes(ROOT)[1:]]


def complete_bash(line: str) -> list[str]:
    """COMPREPLY of the generated function for `line` (the last word is being typed)."""
    words = line.split(" ")
    script = bash(ROOT) + (
        "COMP_WORDS=(" + " ".join(f"'{w}'" for w in words) + ")\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_compliance_agent\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    bash_path = require_tool("bash")  # skips locally without it, fails in CI
    proc = subprocess.run([bash_path, "--norc", "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completes_commands_subcommands_and_choices() -> None:
    assert {"status", "describe", "evidence", "report"} <= set(complete_bash("compliance-agent "))
    assert complete_bash("compliance-agent ev") == ["evidence"]
    assert {"list", "show", "verify"} <= set(complete_bash("compliance-agent evidence "))
    assert complete_bash("compliance-agent evidence list -o ") == ["text", "json"]
    assert complete_bash("compliance-agent status -o ") == ["text", "json", "wide"]
    assert complete_bash("compliance-agent report --format o") == ["oscal"]
    assert "--history" in complete_bash("compliance-agent describe --")


def test_every_command_is_in_every_generated_file() -> None:
    texts = {"bash": bash(ROOT), "zsh": zsh(ROOT), "fish": fish(ROOT),
             "man": man(ROOT, "1.2.3", "2026-11-30")}
    for path in PATHS:
        assert f'"{path}"' in texts["bash"] and f'"{path}"' in texts["zsh"], path
        assert f"'{path}'" in texts["fish"], path
        assert f".SS compliance\\-agent {path.replace('-', chr(92) + '-')}" in texts["man"], path
    assert "compliance-agent 1.2.3" in texts["man"].splitlines()[0]
