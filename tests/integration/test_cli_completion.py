"""The generated completion scripts load in real zsh and fish (fish also
completes with them), and the man page formats without groff warnings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.cli.docgen import fish, man, tree, zsh
from reconciler.cli.main import build_parser
from tests.harness.require import require_tool

pytestmark = pytest.mark.integration
ROOT = tree(build_parser())


def test_zsh_script_parses(tmp_path: Path) -> None:
    zsh_path = require_tool("zsh")
    script = tmp_path / "_compliance-agent"
    script.write_text(zsh(ROOT))
    proc = subprocess.run([zsh_path, "-n", str(script)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_fish_completes_with_the_script(tmp_path: Path) -> None:
    fish_path = require_tool("fish")
    script = tmp_path / "compliance-agent.fish"
    script.write_text(fish(ROOT))

    def complete(line: str) -> list[str]:
        proc = subprocess.run([fish_path, "--no-config", "-c",
                               f"source {script}; complete -C '{line}'"],
                              capture_output=True, text=True, timeout=30, check=True)
        return [row.split("\t")[0] for row in proc.stdout.splitlines()]

    assert complete("compliance-agent ev") == ["evidence"]
    assert sorted(complete("compliance-agent status -o ")) == ["json", "text", "wide"]
    assert "--history" in complete("compliance-agent describe --")
    assert {"list", "show", "verify"} <= set(complete("compliance-agent evidence "))


def test_man_page_formats_cleanly(tmp_path: Path) -> None:
    groff = require_tool("groff")
    page = tmp_path / "compliance-agent.1"
    page.write_text(man(ROOT, "0.0.0", "2026-11-30"))
    proc = subprocess.run([groff, "-man", "-ww", "-z", str(page)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    text = subprocess.run([groff, "-man", "-Tutf8", str(page)], capture_output=True,
                          timeout=60, check=True).stdout.decode()
    assert "compliance-agent evidence list" in text and "NO_COLOR" in text
