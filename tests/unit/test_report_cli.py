"""`compliance-agent report`: every format, from a real state directory, through main()."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.cli.main import main
from reconciler.cli.report import parse_when
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.trust.keys import write_seed_file
from specs.config import load_config
from tests.unit.test_trust_support import AGENT_SIGNER, write_config

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    from nacl.signing import SigningKey

    path = write_config(tmp_path)
    cfg = load_config(path)
    write_seed_file(cfg.signing_key_file, SigningKey(bytes.fromhex("22" * 32)))
    store = open_store(cfg.database_path)
    now = [T0]
    w = EvidenceWriter(store, AGENT_SIGNER, cfg.evidence_directory,
                       EvidenceIdentity(cfg.site_id, cfg.host_id), clock=lambda: now[0])
    for hours, check, outcome in [(0, "services", "success"), (1, "services", "failed"),
                                  (2, "services", "success"), (1, "encryption", "alert")]:
        now[0] = T0 + timedelta(hours=hours)
        w.record(check=check, outcome=outcome, timestamp_end=now[0],
                 error="RootNotEncrypted: /" if outcome == "alert" else None)
    w.close()
    store.close()
    return path


def run(config: Path, fmt: str, out: Path) -> int:
    return main(["report", "--config", str(config), "--since", "2026-03-02",
                 "--until", "2026-03-02T12:00:00Z", "--format", fmt, "--out", str(out)])


def test_every_format(config: Path, tmp_path: Path) -> None:
    for fmt in ("html", "md", "csv", "json", "oscal"):
        assert run(config, fmt, tmp_path / f"r.{fmt}") == 0, fmt
    html = (tmp_path / "r.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "164.312(a)(2)(iv)" in html
    # self-contained: nothing is fetched from anywhere
    for marker in ("<script", "<link", "src=", "url(", "@import", "http://"):
        assert marker not in html.split("<footer>")[0], marker
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert {r["section"] for r in rows} >= {"check", "episode", "alert", "citation"}
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [c["check"] for c in doc["checks"]] == ["encryption", "services"]
    assert json.loads((tmp_path / "r.oscal").read_text())["assessment-results"]["results"]
    assert "| 164.312(a)(2)(iv) |" in (tmp_path / "r.md").read_text()


def test_tampered_evidence_is_reported_with_exit_1(config: Path, tmp_path: Path) -> None:
    cfg = load_config(config)
    victim = sorted(cfg.evidence_directory.iterdir())[1]
    env = json.loads(victim.read_text())
    env["signatures"][0]["sig"] = env["signatures"][0]["sig"][:-4] + "AAA="
    victim.write_text(json.dumps(env))
    assert run(config, "json", tmp_path / "r.json") == 1
    doc = json.loads((tmp_path / "r.json").read_text())
    assert len(doc["coverage"]["rejected"]) == 1 and not doc["coverage"]["chain_ok"]


def test_bad_input_writes_nothing(config: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", "--config", str(config), "--since", "2026-03-03",
                 "--until", "2026-03-02", "--out", str(out)]) == 2
    assert "is not before" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):
        main(["report", "--config", str(config), "--since", "last tuesday"])
    assert main(["report", "--config", str(config), "--public-key", "zz",
                 "--out", str(out)]) == 2
    assert not out.exists()


def test_iso_times() -> None:
    assert parse_when("2026-03-02") == datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_when("2026-03-02T10:00:00+02:00") == datetime(2026, 3, 2, 8, tzinfo=UTC)
    assert parse_when("2026-03-02T08:00:00Z") == parse_when("2026-03-02T08:00:00")


def test_o_json_prints_a_summary_for_scripts(config: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`-o` is the terminal output (the summary), `--format` the document's format."""
    out = tmp_path / "r.md"
    assert main(["report", "--config", str(config), "--since", "2026-03-02",
                 "--until", "2026-03-02T12:00:00Z", "--format", "md", "--out", str(out),
                 "-o", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"out": str(out), "format": "md", "bundles_in_period": 4,
                       "evidence_intact": True}
    assert out.read_text().startswith("#")
