"""`config check` refuses what the daemon would refuse: unsafe key modes and owners,
PEM files that do not parse, a baseline with an unknown kind; `-o json` for CI."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from reconciler.cli.main import main
from reconciler.trust.keys import write_seed_file
from tests.harness.require import require_root
from tests.support.tls import make_tls
from tests.unit.test_trust_support import write_config

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture
def good(tmp_path: Path) -> Path:
    tls = make_tls(tmp_path / "tls")
    write_seed_file(tmp_path / "signing.key", SigningKey.generate())
    (tmp_path / "baseline.json").write_text(json.dumps(
        {"version": 1, "policy_version": "1", "services": {"units": [{"name": "a.service"}]}}))
    return write_config(tmp_path, clientCertFile=str(tls.client_cert),
                        clientKeyFile=str(tls.client_key), caCertFile=str(tls.ca_cert))


def check(config: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    code = main(["config", "check", str(config), "-o", "json", "--user", ME, *extra])
    return code, json.loads(capsys.readouterr().out)


def problems(doc: Any) -> list[tuple[str, str]]:
    return [(f["option"], f["problem"]) for f in doc["findings"] if f["severity"] == "error"]


def test_a_good_config_passes(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = check(good, capsys)
    assert (code, doc["ok"], doc["findings"]) == (0, True, [])
    assert main(["config", "check", str(good), "--user", ME]) == 0
    assert "ok (site" in capsys.readouterr().out


def test_group_readable_client_key_is_refused(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tls" / "client.key").chmod(0o644)
    code, doc = check(good, capsys)
    assert code == 2 and not doc["ok"]
    (finding,) = [f for f in doc["findings"] if f["option"] == "clientKeyFile"]
    assert "mode 0644" in finding["problem"] and str(tmp_path) in finding["where"]
    assert finding["fix"]


def test_empty_pem_files_are_refused(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tls" / "ca.pem").write_text("")
    code, doc = check(good, capsys)
    assert code == 2 and ("caCertFile", "no PEM certificate in the file (empty, truncated, "
                          "or not PEM)") in problems(doc)
    make_tls(tmp_path / "tls")  # fresh, valid files again
    (tmp_path / "tls" / "client.key").write_text("-----BEGIN PRIVATE KEY-----\n"
                                                 "-----END PRIVATE KEY-----\n")
    code, doc = check(good, capsys)
    assert code == 2 and [o for o, _ in problems(doc)] == ["clientKeyFile"]
    (tmp_path / "signing.key").write_text("")
    code, doc = check(good, capsys)
    assert ("signingKeyFile" in [o for o, _ in problems(doc)])


def test_client_key_of_another_certificate_is_refused(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_tls(tmp_path / "other")
    (tmp_path / "tls" / "client.key").write_bytes(other.client_key.read_bytes())
    code, doc = check(good, capsys)
    assert code == 2 and [o for o, _ in problems(doc)] == ["clientKeyFile"]


def test_baseline_with_an_unknown_kind_is_refused(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "baseline.json").write_text(json.dumps(
        {"version": 1, "policy_version": "1", "antivirus": {"engine": "x"}}))
    code, doc = check(good, capsys)
    assert code == 2
    assert [o for o, _ in problems(doc)] == ["baselinePath"]
    assert "antivirus" in problems(doc)[0][1]


def test_owner_is_judged_for_the_agents_user_not_the_caller(
    good: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked as root for a daemon that runs as another user: a root-owned key is
    refused (the daemon could not read it), and the fix never says chown to root."""
    require_root()  # hands a file to another user; skips locally without root, fails in CI
    code, doc = check(good, capsys, "--user", "nobody")
    owners = [f for f in doc["findings"] if "owned by root" in f["problem"]]
    assert code == 2 and {f["option"] for f in owners} == {"signingKeyFile", "clientKeyFile"}
    assert all("chown nobody" in f["fix"] or "owner =" in f["fix"] for f in owners)
    nobody = pwd.getpwnam("nobody").pw_uid
    for name in ("signing.key", "tls/client.key"):
        os.chown(tmp_path / name, nobody, -1)
    code, doc = check(good, capsys, "--user", "nobody")
    assert code == 0, doc


def test_invalid_config_lists_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, pollInterval=-1, nope=1)
    code, doc = check(path, capsys)
    assert code == 2 and {o for o, _ in problems(doc)} == {"pollInterval", "nope"}
