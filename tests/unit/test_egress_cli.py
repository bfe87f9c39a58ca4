"""`egress refresh`: one pass through the real actuator over a simulated host."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from reconciler.actuator.local import LocalActuator
from reconciler.cli import egress as cli_egress
from reconciler.cli.egress import EXIT_ALERT, EXIT_ERROR, EXIT_OK, effective_spec, refresh
from specs.config import parse_config
from specs.host import Completed
from specs.kinds.egress import EgressSpec
from tests.unit.test_egress_controller import DNS, FakeHost

KEY = "ab" * 32
CONFIG = parse_config({
    "siteId": "clinic-1",
    "baselinePath": "/nonexistent/baseline.json",
    "clientCertFile": "/c", "clientKeyFile": "/k", "signingKeyFile": "/s", "caCertFile": "/ca",
    "mcpPublicKeys": [KEY],
    "mcpUrl": "https://api.example.test",
    "allowedHosts": ["api.example.test", "cdn.example.test"],
    "deploymentMode": "direct",
})


def run(host: FakeHost, spec: EgressSpec | None = None, dry: bool = False) -> tuple[int, str]:
    out = io.StringIO()
    code = refresh(CONFIG, spec, host, None if dry else LocalActuator(host), out=out,
                   err=out)
    return code, out.getvalue()


def test_effective_spec_takes_hosts_and_table_from_config() -> None:
    spec = effective_spec(CONFIG, None)
    assert spec.hosts == ["api.example.test", "cdn.example.test"]
    assert spec.table == "compliance_egress"


def test_refresh_updates_sets_and_exits_ok() -> None:
    host = FakeHost(DNS, {"allowed_v4": ["198.51.100.1"], "allowed_v6": []})
    code, out = run(host)
    assert code == EXIT_OK, out
    assert host.sets == {"allowed_v4": ["192.0.2.10", "192.0.2.11", "192.0.2.12"],
                         "allowed_v6": ["2001:db8::10"]}
    assert "result: ok" in out
    # second pass: nothing to do
    calls = len(host.calls)
    assert run(host)[0] == EXIT_OK
    assert not any(len(c) == 2 and c[0] == "nft" for c in host.calls[calls:])


def test_refresh_failed_name_removed_and_exit_alert() -> None:
    host = FakeHost({"api.example.test": DNS["api.example.test"]},
                    {"allowed_v4": ["192.0.2.10", "192.0.2.11"], "allowed_v6": []})
    code, out = run(host)
    assert code == EXIT_ALERT, out
    assert host.sets is not None and host.sets["allowed_v4"] == ["192.0.2.10"]
    assert "resolve cdn.example.test: FAILED" in out and "ResolutionFailed" in out


def test_refresh_missing_table_exit_alert_changes_nothing() -> None:
    host = FakeHost(DNS, None)
    code, out = run(host)
    assert code == EXIT_ALERT and "EgressTableMissing" in out
    assert not any(len(c) == 2 and c[0] == "nft" for c in host.calls)


def test_refresh_failed_update_exit_error() -> None:
    class Refusing(FakeHost):
        def _apply(self, argv: list[str]) -> Completed:
            return Completed(argv=argv, exit_code=1, stdout="",
                             stderr="Error: conflicting intervals specified", duration=0.0)

    host = Refusing(DNS, {"allowed_v4": [], "allowed_v6": []})
    code, out = run(host)
    assert code == EXIT_ERROR
    assert "conflicting intervals" in out


def test_refresh_observe_error_exit_error() -> None:
    host = FakeHost(DNS, {"allowed_v4": [], "allowed_v6": []})
    host.nft_failure = Completed(argv=["nft"], exit_code=1, stdout="",
                                 stderr="Error: Operation not permitted", duration=0.0)
    code, out = run(host)
    assert code == EXIT_ERROR and "Operation not permitted" in out


def test_dry_run_changes_nothing() -> None:
    host = FakeHost(DNS, {"allowed_v4": [], "allowed_v6": []})
    code, out = run(host, dry=True)
    assert code == EXIT_OK and "dry run" in out
    assert host.sets == {"allowed_v4": [], "allowed_v6": []}


def test_json_summary() -> None:
    host = FakeHost(DNS, {"allowed_v4": [], "allowed_v6": []})
    out = io.StringIO()
    refresh(CONFIG, None, host, LocalActuator(host), json_output=True, out=out)
    doc = json.loads(out.getvalue())
    assert doc["result"] == "ok"
    assert doc["egress_element_counts"] == {"allowed_v4": 3, "allowed_v6": 1}
    assert [a["ok"] for a in doc["actions"]] == [True, True]


def test_main_reports_bad_config_with_exit_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"siteId": "x"}')
    assert cli_egress.main(["egress", "refresh", "--config", str(cfg)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert str(cfg) in err and "baselinePath" in err
