"""One CLI convention for every command (issue 12): walks the whole parser tree.

Every command that prints takes `-o` with the same choices (text|json, plus
wide for status/describe); every option, positional and subcommand has help
text; `--version` works; old spellings still work with a note on stderr;
config discovery; `status`/`describe` answer from the daemon's socket
without importing pydantic, SQLAlchemy, httpx or prometheus_client.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.common import (
    CONFIG_ENV,
    TEXT_JSON,
    TEXT_JSON_WIDE,
    ConfigNotFound,
    config_path,
    render_fields,
    use_colour,
)
from reconciler.cli.live import DEFAULT_STATE_DIRECTORY, DEFAULT_STATUS_SOCKET
from reconciler.cli.main import build_parser, main
from reconciler.cli.status_views import render_describe, render_status
from reconciler.ops.status_server import StatusServer
from tests.unit.test_cli_status import write_config

REPO = Path(__file__).resolve().parents[2]
# Daemons: they log, they do not print an answer.
NOT_PRINTING = {("run",), ("actuator",)}
WIDE = {("status",), ("describe",)}


def _subparsers(p: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def walk(p: argparse.ArgumentParser, path: tuple[str, ...] = ()
         ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, p
    sub = _subparsers(p)
    if sub is not None:
        for name, child in sub.choices.items():
            yield from walk(child, (*path, name))


def runnable(p: argparse.ArgumentParser) -> bool:
    return p.get_default("func") is not None


PARSER = build_parser()
COMMANDS = [(path, p) for path, p in walk(PARSER) if runnable(p)]


def test_the_tree_has_every_command() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"status", "describe", "config check", "config options", "order verify",
            "evidence show", "evidence list", "egress refresh", "queue", "queue retry",
            "report", "keygen", "reconcile"} <= names


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_printing_commands_take_o_with_the_same_choices(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    if path in NOT_PRINTING:
        return
    out = next((a for a in parser._actions if "-o" in a.option_strings), None)
    assert out is not None, f"'{' '.join(path)}' prints but has no -o"
    assert out.option_strings == ["-o", "--output"]
    assert tuple(out.choices or ()) == (TEXT_JSON_WIDE if path in WIDE else TEXT_JSON)


@pytest.mark.parametrize(("path", "parser"), list(walk(PARSER)),
                         ids=[" ".join(p) or "(top)" for p, _ in walk(PARSER)])
def test_every_option_and_subcommand_has_help(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            assert set(helps) == set(action.choices), f"{path}: a subcommand without help"
            assert all(h and h != argparse.SUPPRESS for h in helps.values()), (path, helps)
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, \
            f"'{' '.join(path)}' {name}: no help text"


def test_config_option_is_the_shared_one_everywhere() -> None:
    for path, parser in COMMANDS:
        if path in {("actuator",), ("config", "options"), ("keygen",)}:
            continue  # the actuator gets an explicit --config from systemd; the others read none
        cfg = next((a for a in parser._actions if "--config" in a.option_strings), None)
        assert cfg is not None, f"{path}: no --config"
        assert cfg.default in (None, argparse.SUPPRESS) and not cfg.required, path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("compliance-agent ") and len(out.split()) == 2


# -- config discovery ----------------------------------------------------------------
def test_config_path_order(tmp_path: Path) -> None:
    etc = tmp_path / "etc-config.json"
    assert config_path("x.json", environ={CONFIG_ENV: "env.json"}, default=etc) == Path("x.json")
    assert config_path(None, environ={CONFIG_ENV: "env.json"}, default=etc) == Path("env.json")
    with pytest.raises(ConfigNotFound) as none:
        config_path(None, environ={}, default=etc)
    message = str(none.value)
    assert str(etc) in message and CONFIG_ENV in message and "--config" in message
    assert "services.compliance-agent" in message  # what to do on NixOS
    etc.write_text("{}")
    assert config_path(None, environ={}, default=etc) == etc


def test_commands_find_the_config_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    monkeypatch.setenv(CONFIG_ENV, str(cfg))
    assert main(["status"]) == 2  # found the config; the state database does not exist yet
    assert "no state database yet" in capsys.readouterr().err
    assert main(["config", "options", "-o", "json"]) == 0
    assert any(r["option"] == "siteId" for r in json.loads(capsys.readouterr().out))


def test_no_config_anywhere_says_where_it_looked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    if Path("/etc/compliance-agent/config.json").exists():
        pytest.skip("this host has a real agent config")
    assert main(["evidence", "list"]) == 2
    err = capsys.readouterr().err
    assert "/etc/compliance-agent/config.json" in err and CONFIG_ENV in err


def test_raw_config_defaults_match_the_validated_config() -> None:
    from specs.config import AgentConfig

    fields = AgentConfig.model_fields
    assert fields["status_socket"].default == DEFAULT_STATUS_SOCKET
    assert fields["state_directory"].default == DEFAULT_STATE_DIRECTORY


# -- deprecated spellings ------------------------------------------------------------------
def test_old_output_spellings_still_work_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(["evidence", "list", "-o", "table"])
    assert args.output == "text"
    assert "deprecated" in capsys.readouterr().err
    args = build_parser().parse_args(["egress", "refresh", "--json"])
    assert args.output == "json"
    assert "use '-o json'" in capsys.readouterr().err
    args = build_parser().parse_args(["status", "-o", "table"])
    assert args.output == "text"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["status", "-o", "yaml"])


# -- status / describe from the daemon's socket ---------------------------------------------
LONG = "the unit failed to start: " + "x" * 150 + " END"


def _doc() -> dict[str, Any]:
    cond = {"type": "Ready", "status": "False", "reason": "UnitFailed", "message": LONG,
            "last_transition_time": "2026-11-30T12:00:00+00:00", "observed_generation": "g1"}
    return {"summary": "Failed", "generated_at": "2026-11-30T12:01:00+00:00",
            "last_pass": {"started_at": "2026-11-30T12:00:59+00:00",
                          "finished_at": "2026-11-30T12:01:00+00:00", "duration_sec": 0.02,
                          "cpu_sec": 0.01, "summary": "Failed"},
            "resources": [{"kind": "services", "generation": "g1", "conditions": [cond],
                           "last_pass_at": "2026-11-30T12:01:00+00:00",
                           "last_outcome": "failed", "observed": {"state": "failed"},
                           "last_actions": []}],
            "workqueue": {"depth": 0}, "loop_healthy": True}


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[Path]:
    sock = Path(f"/tmp/ca-cli-{os.getpid()}-{tmp_path.name[-12:]}.sock")  # sun_path limit
    server = StatusServer(sock, lambda: b"", _doc)
    server.start()
    try:
        yield sock
    finally:
        server.stop()


def _socket_config(tmp_path: Path, sock: Path) -> Path:
    cfg = write_config(tmp_path)
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), statusSocket=str(sock))))
    return cfg


def test_status_and_describe_answer_from_the_socket_without_a_database(
    tmp_path: Path, daemon_socket: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _socket_config(tmp_path, daemon_socket)
    assert main(["status", "-o", "json", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source"] == "daemon" and doc["resources"][0]["kind"] == "services"
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[1].split()[:4] == ["services", "False", "Unknown", "UnitFailed"]
    assert main(["describe", "services", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    # nothing cut: the whole message is there, wrapped
    assert "END" in out and "needs read access to the state database" in out
    assert main(["describe", "services", "-o", "wide", "--config", str(cfg)]) == 0
    assert LONG in capsys.readouterr().out  # wide: on one line
    assert main(["describe", "nope", "--config", str(cfg)]) == 2


def test_status_via_socket_imports_no_heavy_library(tmp_path: Path, daemon_socket: Path) -> None:
    cfg = _socket_config(tmp_path, daemon_socket)
    code = (
        "import sys\n"
        "from reconciler.cli.main import main\n"
        f"for argv in (['status', '--config', {str(cfg)!r}],"
        f" ['describe', 'services', '--config', {str(cfg)!r}]):\n"
        "    assert main(argv) == 0\n"
        "heavy = {'pydantic', 'sqlalchemy', 'httpx', 'prometheus_client', 'nacl',"
        " 'cryptography'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_describe_text_wraps_and_wide_does_not() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 30, 12, 2, tzinfo=UTC)
    status = _doc()["resources"][0]
    text = render_describe(status, [], now)
    assert all(len(line) <= max(100, 130) for line in text.splitlines()
               if "x" * 10 in line)
    assert "".join(line.strip() for line in text.splitlines() if "x" in line).count("x") >= 150
    wide = render_describe(status, [], now, wide=True)
    assert any(LONG in line for line in wide.splitlines())


def test_colour_only_for_a_terminal_and_never_with_no_color() -> None:
    from datetime import UTC, datetime

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_colour(Tty(), {}) is True
    assert use_colour(Tty(), {"NO_COLOR": "1"}) is False
    assert use_colour(Tty(), {"TERM": "dumb"}) is False
    assert use_colour(io.StringIO(), {}) is False
    now = datetime(2026, 11, 30, 12, 2, tzinfo=UTC)
    assert "\033[" in render_status(_doc(), now, colour=True)
    plain = render_status(_doc(), now, colour=False)
    assert "\033[" not in plain
    wide = render_status(_doc(), now, wide=True)
    assert "MESSAGE" in wide and LONG in wide


def test_render_fields_for_document_commands() -> None:
    text = render_fields({"admitted": False, "reason": "Expired", "detail": {"a": 1},
                          "items": ["x"], "none": None})
    assert text.splitlines() == ["admitted: no", "reason: Expired", "detail:", "  a: 1",
                                 "items:", "  - x", "none: -"]


# -- the store fallback (daemon not answering) ----------------------------------------------
def test_store_fallback_reads_what_pydantic_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The standard-library reader returns exactly the documents the models dump."""
    from reconciler.cli.live import RawConfig, store_resources, store_status
    from reconciler.runtime.agent import status_document
    from reconciler.store.database import open_store
    from reconciler.store.status import StatusView
    from tests.unit.test_runtime import ScriptedController, make_agent

    world = {"state": "masked"}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world),
                                     "firewall": ScriptedController({"state": "active"})}, world)
    agent.run_pass()
    agent.close()
    raw = RawConfig.read(write_config(tmp_path))
    assert raw is not None
    store = open_store(raw.database_path, readonly=True)
    view = StatusView(store)
    expected = [s.model_dump(mode="json") for s in view.load_all()]
    from datetime import UTC, datetime

    reference = status_document(view.load_all(), view.last_pass(), datetime.now(UTC))
    store.close()
    assert store_resources(raw) == expected
    doc = store_status(raw)
    assert doc["resources"] == expected
    assert doc["summary"] == reference["summary"] and doc["last_pass"] == reference["last_pass"]


@pytest.mark.parametrize("conditions", [
    [], [("Ready", "True")], [("Ready", "False")], [("Ready", "Unknown")],
    [("Ready", "True"), ("Stalled", "True")], [("Ready", "False"), ("Stalled", "False")],
    [("Drifted", "True")],
])
@pytest.mark.parametrize("others", [0, 1])
def test_summary_of_documents_matches_host_summary(
    conditions: list[tuple[str, str]], others: int
) -> None:
    from reconciler.cli.live import summary_of
    from reconciler.runtime.agent import status_document
    from specs.status import ResourceStatus

    now = "2026-11-30T12:00:00Z"
    docs = [{"kind": "a", "conditions": [{"type": t, "status": s, "reason": "R",
                                          "last_transition_time": now} for t, s in conditions]}]
    docs += [{"kind": f"b{i}", "conditions": [{"type": "Ready", "status": "True", "reason": "R",
                                               "last_transition_time": now}]}
             for i in range(others)]
    statuses = [ResourceStatus.model_validate(d) for d in docs]
    from datetime import UTC, datetime

    for last in (None, {"finished_at": now}):
        expected = status_document(statuses, last, datetime.now(UTC))["summary"]
        assert summary_of(docs, last) == expected
    assert summary_of([], None) == status_document([], None, datetime.now(UTC))["summary"]


def test_unreadable_state_database_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "state" / "state.db").mkdir(parents=True)  # exists, but sqlite cannot open it
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()),
                                   statusSocket=str(tmp_path / "absent.sock"))))
    assert main(["status", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "sudo -u compliance-agent" in err and "extraGroups" in err


def test_status_from_the_store_imports_no_heavy_library(tmp_path: Path) -> None:
    from tests.unit.test_runtime import ScriptedController, make_agent

    world = {"state": "active"}
    agent, _ = make_agent(tmp_path, {"services": ScriptedController(world)}, world)
    agent.run_pass()
    agent.close()
    cfg = write_config(tmp_path)
    code = (
        "import sys\n"
        "from reconciler.cli.main import main\n"
        f"for argv in (['status', '--config', {str(cfg)!r}],"
        f" ['describe', 'services', '--config', {str(cfg)!r}]):\n"
        "    assert main(argv) == 0\n"
        "heavy = {'pydantic', 'sqlalchemy', 'httpx', 'prometheus_client', 'nacl',"
        " 'cryptography'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_keygen_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "k"
    assert main(["keygen", "--out", str(key), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["file"] == str(key) and len(doc["public_key"]) == 64 and doc["keyid"]
