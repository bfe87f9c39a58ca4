"""docs/threat-model.md names a test for every promise: those tests must exist."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "threat-model.md"
POSITIONS = ("Network attacker", "Compromised control-plane key", "Compromised agent process",
             "Local user in the agent's group", "Write access to the state directory")


def test_every_attacker_position_has_a_section() -> None:
    text = DOC.read_text()
    for position in POSITIONS:
        assert re.search(rf"^## \d\. {re.escape(position)}", text, re.M), position


def test_every_named_test_exists() -> None:
    text = re.sub(r"```.*?```", "", DOC.read_text(), flags=re.S)  # diagrams hold no names
    current: Path | None = None
    checked = 0
    # "`tests/x.py::a`, `b`": a bare name after a path refers to that path
    for token in re.findall(r"`([^`]+)`", text):
        path, _, name = token.partition("::")
        if path.startswith(("tests/", "nix/tests/")):
            current = REPO / path
            assert current.exists(), token
            checked += 1
            if not name:
                continue
        elif current is None or not re.fullmatch(r"test_[A-Za-z0-9_*]+", token):
            continue
        else:
            name = token
        source = current.read_text()
        pattern = re.escape(name).replace(r"\*", r"\w*")
        assert re.search(rf"^def {pattern}\(", source, re.M), f"{current.name}::{name}"
        checked += 1
    assert checked > 30
