"""demo/docker-compose.yml describes the stack `make demo` runs (no Docker here:
the YAML is parsed and compared with demo/stage_nats.py and compose_init)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from demo.control_plane import compose_init
from demo.natsd import NATS_CLIENT_PORT
from demo.stage_nats import CONTROL_PLANE_PORT, STACK, archiver_argv
from specs.config import parse_config

REPO = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "demo" / "docker-compose.yml").read_text())
    return data


def command_argv(service: dict[str, Any]) -> list[str]:
    """The argv after the `pip install ... &&` prelude of a `sh -c "..."` command."""
    cmd = service["command"]
    assert isinstance(cmd, str) and cmd.startswith("sh -c ")
    script = shlex.split(cmd)[2]
    return shlex.split(script.split("&&")[-1])


def test_services_are_the_demo_stack_plus_init() -> None:
    assert set(compose()["services"]) == set(STACK) | {"init"}


def test_published_ports_are_the_stack_ports_on_loopback_only() -> None:
    services = compose()["services"]
    for name, ports in STACK.items():
        published = services[name].get("ports", [])
        assert all(p.startswith("127.0.0.1:") for p in published), (name, published)
        assert [int(p.rsplit(":", 1)[1]) for p in published] == ports, name


def test_the_control_plane_publishes_to_nats_and_listens_where_published() -> None:
    argv = command_argv(compose()["services"]["control-plane"])
    assert argv[argv.index("--port") + 1] == str(CONTROL_PLANE_PORT)
    assert argv[argv.index("--nats-url") + 1] == f"tls://nats:{NATS_CLIENT_PORT}"


def test_the_archiver_runs_as_make_demo_runs_it() -> None:
    argv = command_argv(compose()["services"]["archiver"])
    flags = [a for a in argv if a.startswith("--")]
    expected = archiver_argv(nats_url="u", ca="c", cert="p", key=None, directory="d",
                             metrics="m")
    assert argv[:4] == expected[:4]
    assert flags == [a for a in expected if a.startswith("--")]


def test_init_writes_the_nats_config_and_an_agent_config_with_wakeups(tmp_path: Path) -> None:
    assert compose_init.main([str(tmp_path)]) == 0
    nats = compose()["services"]["nats"]
    conf_path = nats["command"][nats["command"].index("-c") + 1]
    conf = (tmp_path / Path(conf_path).relative_to("/shared")).read_text()
    assert f'listen: "0.0.0.0:{NATS_CLIENT_PORT}"' in conf
    assert "verify: true" in conf and "jetstream {" in conf
    cfg = parse_config(json.loads((tmp_path / "agent" / "config.json").read_text()))
    assert cfg.nats_url == f"tls://nats:{NATS_CLIENT_PORT}"
    assert "nats" in cfg.allowed_hosts
