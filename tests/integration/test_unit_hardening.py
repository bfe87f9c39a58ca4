"""The units the NixOS module generates, as systemd itself sees them.

The module is evaluated with the stub lib (see test_nix_module), its
`systemd.services/sockets/timers` attribute sets are rendered to unit files
the way NixOS renders them, and then:

* `systemd-analyze verify` must accept every unit;
* `systemd-analyze security --offline=yes` scores the agent and the
  actuator; both scores are printed to the terminal (CI log), and the agent
  must score <= 2.0 (the lower, the less exposed);
* under a real systemd 252 (nspawn container), the module's actuator socket
  and service and a probe with the agent's exact sandbox: the probe, as the
  compliance-agent user, gets a baseline unit started by root through the
  socket and a non-baseline unit refused.

ExecStart binaries live in a store that does not exist here, so they are
replaced by an executable temporary copy of `true` for `verify`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.require import require_tool
from tests.integration.test_nix_module import evaluate

pytestmark = pytest.mark.integration

AGENT_MAX_EXPOSURE = 2.0
UNIT_LISTS = ("after", "before", "wants", "requires", "bindsTo", "partOf", "conflicts")
# the executable of an Exec*= command line (after systemd's prefixes such as "-")
STORE_EXEC = re.compile(r"^([-@!+:|]*)/nix/store/\S+")
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
        # like NixOS: an empty list writes nothing, an empty string resets (`Key=`)
        lines += [f"{key}={v}" for v in _value(value)]
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
            for key in [k for k in service if k.startswith("Exec")]:
                cmds = service[key] if isinstance(service[key], list) else [service[key]]
                fixed = [STORE_EXEC.sub(lambda m: m.group(1) + str(exe), c) for c in cmds]
                service[key] = fixed if isinstance(service[key], list) else fixed[0]
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
        "compliance-agent-egress-keep.service",
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


# --- the module's units under a real systemd 252 ------------------------------------------

PYENV = Path(sys.base_prefix)  # the interpreter behind the venv (outside /root once bound)
PY_IN_BOX = "/opt/python"
REPO_IN_BOX = "/opt/compliance-agent"
SITE_IN_BOX = f"{REPO_IN_BOX}/.venv/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
BOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _python_in_box() -> str:
    return f"{PY_IN_BOX}/bin/python{sys.version_info[0]}.{sys.version_info[1]}"


def _box_env() -> list[str]:
    # ProtectHome hides /root, so the interpreter is bound under /opt; its
    # RUNPATH still names the old place, hence LD_LIBRARY_PATH.
    return [f'"PYTHONPATH={REPO_IN_BOX}:{SITE_IN_BOX}"', f'"LD_LIBRARY_PATH={PY_IN_BOX}/lib"',
            f'"PATH={BOX_PATH}"']


PROBE = """
import sys
from reconciler.actuator.client import ActuatorClient, ActuatorRefused
from specs.actions import StartUnit
client = ActuatorClient("/run/compliance-agent-actuator/actuator.sock", timeout=60)
try:
    result = client.execute(StartUnit(unit=sys.argv[1]))
    print("RESULT ok=%s" % result.ok)
except ActuatorRefused as e:
    print("REFUSED %s" % e.reason)
"""


def _boxed_service(attrs: dict[str, Any], exec_start: str, **override: Any) -> str:
    service = dict(attrs["serviceConfig"])
    service.update(override)
    service["ExecStart"] = exec_start
    return render_unit("service", {**attrs, "path": [], "serviceConfig": service,
                                   "environment": {}}).replace(
        "[Service]\n", "[Service]\n" + "".join(f"Environment={e}\n" for e in _box_env()), 1)


@pytest.fixture
def booted(systemd_rootfs: Path, tmp_path: Path) -> Any:
    from tests.harness.sdbox import Bind, SystemdContainer

    # Bind each package and the venv's site-packages on their own: the mount roots
    # then carry those directories' modes, whatever the mode of the checkout
    # around them (a CI clone may sit in a 0700 directory the agent user can't enter).
    repo = Path(__file__).resolve().parents[2]
    site = next((repo / ".venv" / "lib").glob("python3*/site-packages"))
    binds = [Bind(PYENV, PY_IN_BOX), Bind(site, SITE_IN_BOX),
             *(Bind(repo / pkg, f"{REPO_IN_BOX}/{pkg}")
               for pkg in ("specs", "controllers", "reconciler"))]
    with SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs, binds=binds) as box:
        yield box


def test_module_units_under_real_systemd(booted: Any) -> None:
    """Socket activation, SO_PEERCRED and the agent's sandbox, with the module's own units."""
    box = booted
    evaluated = evaluate()
    services = evaluated["systemd"]["services"]
    box.check(["useradd", "--system", "--user-group", "--no-create-home",
               "--home-dir", "/var/lib/compliance-agent", "compliance-agent"])
    box.write_file("/etc/compliance-agent/baseline.json", json.dumps({
        "version": 1, "policy_version": "1",
        "services": {"units": [{"name": "dummy-workload.service"}]},
    }))
    config = json.loads(evaluated["configText"])
    config["baselinePath"] = "/etc/compliance-agent/baseline.json"
    box.write_file("/etc/compliance-agent/config.json", json.dumps(config))
    box.write_file("/etc/tmpfiles.d/compliance-agent.conf",
                   "\n".join(evaluated["systemd"]["tmpfiles"]) + "\n")
    box.check(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/compliance-agent.conf"])

    py = _python_in_box()
    box.install_unit("dummy-workload.service",
                     "[Service]\nExecStart=/bin/sleep infinity\n")
    box.install_unit("compliance-agent-actuator.socket", render_unit(
        "socket", evaluated["systemd"]["sockets"]["compliance-agent-actuator"]))
    box.install_unit("compliance-agent-actuator.service", _boxed_service(
        services["compliance-agent-actuator"],
        f"{py} -m reconciler.actuator.server --config /etc/compliance-agent/config.json "
        "--allow-user compliance-agent --idle-exit 600"))
    box.write_file("/etc/compliance-agent/probe.py", PROBE)
    agent = services["compliance-agent"]
    for name, unit in (("probe-allowed", "dummy-workload.service"),
                       ("probe-refused", "ssh.service")):
        box.install_unit(f"{name}.service", _boxed_service(
            agent, f"{py} /etc/compliance-agent/probe.py {unit}",
            Type="oneshot", WatchdogSec="0", NotifyAccess="none", Restart="no",
            RuntimeDirectoryPreserve=True))
    box.check(["systemctl", "start", "compliance-agent-actuator.socket"])

    sock = box.check(["stat", "-c", "%U %G %a", "/run/compliance-agent-actuator/actuator.sock"])
    assert sock.stdout.split() == ["root", "compliance-agent", "660"]
    # ... in root's directory: the agent can reach the socket but never replace it
    sock_dir = box.check(["stat", "-c", "%U %G %a", "/run/compliance-agent-actuator"])
    assert sock_dir.stdout.split() == ["root", "compliance-agent", "750"]

    # The hardened agent sandbox (as the module writes it) reaches the actuator,
    # which starts a baseline unit as root; a unit outside the baseline is refused.
    box.check(["systemctl", "start", "probe-allowed.service"], timeout=120)
    box.check(["systemctl", "start", "probe-refused.service"], timeout=120)
    journal = box.check(["journalctl", "--no-pager", "-o", "cat", "-u", "probe-allowed.service",
                         "-u", "probe-refused.service",
                         "-u", "compliance-agent-actuator.service"]).stdout
    assert "RESULT ok=True" in journal, journal
    assert "REFUSED UnitNotInBaseline" in journal, journal
    assert box.check(["systemctl", "is-active", "dummy-workload.service"]).stdout.strip() \
        == "active"
    uid = box.check(["id", "-u", "compliance-agent"]).stdout.strip()
    assert f"peer_uid={uid}" in journal and "verdict=ok" in journal, journal

    shown = box.check(["systemctl", "show", "probe-allowed.service", "-p", "User",
                       "-p", "ProtectSystem", "-p", "CapabilityBoundingSet",
                       "-p", "NoNewPrivileges", "-p", "RestrictAddressFamilies"]).stdout
    props = dict(line.split("=", 1) for line in shown.strip().splitlines())
    assert props["User"] == "compliance-agent" and props["ProtectSystem"] == "strict"
    assert props["CapabilityBoundingSet"] == "" and props["NoNewPrivileges"] == "yes"
    assert set(props["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
