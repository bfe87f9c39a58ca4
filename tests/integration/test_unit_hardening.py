"""The units the NixOS module generates, as systemd itself sees them.

The module is evaluated with the stub lib (see test_nix_module), its
`systemd.services/sockets/timers` attribute sets are rendered to unit files
the way NixOS renders them, and then:

* `systemd-analyze verify` must accept every unit;
* `systemd-analyze security --offline=yes` scores the agent and the
  actuator; both scores are printed to the terminal (CI log), and the agent
  must score <= 2.0 (the lower, the less exposed).

ExecStart binaries live in a store that does not exist here, so they are
replaced by an executable temporary copy of `true` for `verify`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.require import require_tool
from tests.integration.test_nix_module import evaluate

pytestmark = pytest.mark.integration

AGENT_MAX_EXPOSURE = 2.0
UNIT_LISTS = ("after", "before", "wants", "requires", "bindsTo", "partOf", "conflicts")
STORE_BIN = re.compile(r"/nix/store/[^ /]+/bin/compliance-agent")
SCORE_RE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+)")


def _value(v: Any) -> list[str]:
    """NixOS renders bools as true/false and a list as one line per element."""
    if isinstance(v, bool):
        return ["true" if v else "false"]
    if isinstance(v, list):
        return [x for item in v for x in _value(item)]
    return [str(v)]


def _section(name: str, entries: dict[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    for key, value in entries.items():
        values = _value(value)
        lines += [f"{key}={v}" for v in values] if values else [f"{key}="]
    return lines


def render_unit(kind: str, attrs: dict[str, Any], exe: Path | None = None) -> str:
    """One unit file from a NixOS systemd.<kind>s.<name> attribute set."""
    unit: dict[str, Any] = {}
    if "description" in attrs:
        unit["Description"] = attrs["description"]
    if attrs.get("documentation"):
        unit["Documentation"] = " ".join(attrs["documentation"])
    for key in UNIT_LISTS:
        if attrs.get(key):
            unit[key[0].upper() + key[1:]] = " ".join(attrs[key])
    if attrs.get("restartTriggers"):
        unit["X-Restart-Triggers"] = " ".join(attrs["restartTriggers"])
    unit.update(attrs.get("unitConfig", {}))
    lines = _section("Unit", unit)
    if kind == "service":
        service = dict(attrs.get("serviceConfig", {}))
        env = [f"{k}={v}" for k, v in attrs.get("environment", {}).items()]
        if attrs.get("path"):
            dirs = [f"{p}/bin" for p in attrs["path"]] + [f"{p}/sbin" for p in attrs["path"]]
            env.append("PATH=" + ":".join(dirs))
        if env:
            service["Environment"] = [f'"{e}"' for e in env]
        if exe is not None:
            service["ExecStart"] = STORE_BIN.sub(str(exe), service["ExecStart"])
        lines += _section("Service", service)
    elif kind == "socket":
        lines += _section(
            "Socket", {"ListenStream": attrs.get("listenStreams", []), **attrs["socketConfig"]}
        )
    elif kind == "timer":
        lines += _section("Timer", attrs["timerConfig"])
    if attrs.get("wantedBy"):
        lines += _section("Install", {"WantedBy": " ".join(attrs["wantedBy"])})
    return "\n".join(lines) + "\n"


def write_units(evaluated: Any, directory: Path, exe: Path | None) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for kind in ("service", "socket", "timer"):
        for name, attrs in evaluated["systemd"][f"{kind}s"].items():
            path = directory / f"{name}.{kind}"
            path.write_text(render_unit(kind, attrs, exe))
            out[path.name] = path
    return out


def exposure(unit: Path) -> float:
    analyze = require_tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
    )
    m = SCORE_RE.search(proc.stdout + proc.stderr)
    assert m, f"no exposure score for {unit.name}:\n{proc.stdout}\n{proc.stderr}"
    return float(m.group(2))


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("units")
    fake = tmp / "bin" / "compliance-agent"
    fake.parent.mkdir()
    shutil.copy(shutil.which("true") or "/bin/true", fake)
    fake.chmod(0o755)
    return write_units(evaluate(), tmp / "system", fake)


def test_rendered_units_are_the_expected_set(units: dict[str, Path]) -> None:
    assert set(units) == {
        "compliance-agent.service",
        "compliance-agent-actuator.service",
        "compliance-agent-actuator.socket",
        "compliance-agent-egress-refresh.service",
        "compliance-agent-egress-refresh.timer",
        "compliance-agent-evidence-prune.service",
        "compliance-agent-evidence-prune.timer",
    }
    agent = units["compliance-agent.service"].read_text()
    for line in ("ProtectSystem=strict", "CapabilityBoundingSet=", "NoNewPrivileges=true",
                 "SystemCallFilter=~@privileged", "RestrictAddressFamilies=AF_INET6",
                 "StateDirectoryMode=0700", "Type=notify"):
        assert line in agent.splitlines(), line


def test_systemd_analyze_verify_accepts_every_unit(units: dict[str, Path]) -> None:
    analyze = require_tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "verify", "--man=no", *map(str, units.values())],
        capture_output=True, text=True, timeout=120,
    )
    ours = [line for line in proc.stderr.splitlines() if "compliance-agent" in line]
    assert proc.returncode == 0 and not ours, proc.stderr


def test_exposure_scores(units: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    scores = {
        name: exposure(units[name])
        for name in ("compliance-agent.service", "compliance-agent-actuator.service",
                     "compliance-agent-egress-refresh.service",
                     "compliance-agent-evidence-prune.service")
    }
    with capsys.disabled():  # into the CI log whatever pytest's capture mode
        print("\nsystemd-analyze security --offline=yes exposure (0 = best, 10 = worst):")
        for name, score in scores.items():
            print(f"  {name:45s} {score:.1f}")
        print("EXPOSURE_SCORES " + json.dumps(scores, sort_keys=True))
    assert scores["compliance-agent.service"] <= AGENT_MAX_EXPOSURE
    assert scores["compliance-agent-egress-refresh.service"] <= AGENT_MAX_EXPOSURE
    assert scores["compliance-agent-evidence-prune.service"] <= AGENT_MAX_EXPOSURE
    # root, running switch-to-configuration: far from 2.0, but not unconfined (9.6)
    assert scores["compliance-agent-actuator.service"] < 9.6
