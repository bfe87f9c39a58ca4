"""The export's own verify_export.py, run in a clean venv that has only
securesystemslib (installed with pip from the configured index), accepts a
real export and refuses it after any one byte of any file is changed."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.trust.keys import write_seed_file
from specs.config import load_config
from tests.harness.require import unavailable
from tests.unit.test_evidence_tamper import KEY, Log, run
from tests.unit.test_trust_support import AGENT_SIGNER, write_config


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("auditor") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "securesystemslib"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        unavailable(f"cannot install securesystemslib into a clean venv: {r.stderr[-500:]}")
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"],
                            capture_output=True, text=True, check=True, timeout=60).stdout
    names = {line.split("==")[0].lower() for line in listed.split()}
    assert names - {"pip", "setuptools", "wheel"} == {"securesystemslib"}, names
    return py


def script(py: Path, export_dir: Path, key: str = KEY) -> subprocess.CompletedProcess[str]:
    """The shipped checker, run from inside the unpacked export."""
    return subprocess.run([str(py), "verify_export.py", "--public-key", key, str(export_dir)],
                          capture_output=True, text=True, timeout=120, cwd=export_dir)


def test_independent_script_verifies_and_catches_every_changed_byte(
    clean_venv: Path, tmp_path: Path
) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    write_seed_file(cfg.signing_key_file, AGENT_SIGNER._key)
    log = Log(cfg_path, cfg, [datetime(2026, 1, 1, tzinfo=UTC)])
    log.passes(5)
    out = tmp_path / "export.tar.gz"
    assert run(["evidence", "export", "--out", str(out), "--config", str(cfg_path)]) == 0
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    edir = tmp_path / "x" / "evidence-export"
    ok = script(clean_venv, edir)
    assert ok.returncode == 0, ok.stderr
    assert "OK compliance-agent.dev/evidence/clinic-1/host-1: seq 1..15" in ok.stdout
    # The archive itself, too.
    tool = edir / "verify_export.py"
    r = subprocess.run([str(clean_venv), str(tool), "--public-key", KEY, str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # Another key: refused.
    assert script(clean_venv, edir, "00" * 32).returncode == 1
    # One changed byte in any file (the script itself included: it is in the manifest).
    runner = tmp_path / "pristine_verify_export.py"
    runner.write_bytes(tool.read_bytes())
    for f in sorted(p for p in edir.rglob("*") if p.is_file()):
        data = f.read_bytes()
        pos = len(data) // 2
        f.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
        r = subprocess.run([str(clean_venv), str(runner), "--public-key", KEY, str(edir)],
                           capture_output=True, text=True, timeout=120)
        f.write_bytes(data)
        assert r.returncode == 1, (f.name, r.stdout, r.stderr)
        assert "FAILED" in r.stderr


def test_independent_script_accepts_a_declared_chain_break_and_says_so(
    clean_venv: Path, tmp_path: Path
) -> None:
    """A lost bundle (state database and one file gone) is explained by the signed
    chain-break bundle, for the independent checker too; the export still verifies."""
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    write_seed_file(cfg.signing_key_file, AGENT_SIGNER._key)
    log = Log(cfg_path, cfg, [datetime(2026, 1, 1, tzinfo=UTC)])
    log.passes(2)
    lost = log.file_of(3)
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (cfg.database_path.parent / name).unlink(missing_ok=True)
    lost.unlink()
    log.passes(2)  # the writer starts: rebuilds, breaks, continues after seq 6
    out = tmp_path / "export.tar.gz"
    assert run(["evidence", "export", "--out", str(out), "--config", str(cfg_path)]) == 0
    with tarfile.open(out) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    r = script(clean_venv, tmp_path / "x" / "evidence-export")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "chain break at seq 7" in r.stdout, r.stdout
