"""Evidence export: written from a real log, verified by the CLI with the key alone,
and every single changed byte, added or removed file is detected."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.evidence.retention import Pruner, RetentionPolicy
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.trust.keys import write_seed_file
from specs.config import load_config
from tests.unit.test_evidence_tamper import KEY, Log, out_of, run
from tests.unit.test_trust_support import AGENT_SIGNER, HOST, OTHER_SIGNER, SITE, write_config


@pytest.fixture
def log(tmp_path: Path) -> Log:
    cfg_path = write_config(tmp_path, evidenceRetention=4, pruneRetentionDays=0)
    cfg = load_config(cfg_path)
    write_seed_file(cfg.signing_key_file, AGENT_SIGNER._key)
    lg = Log(cfg_path, cfg, [datetime(2026, 1, 1, tzinfo=UTC)])
    lg.passes(4, outcome="failed")  # 12 bundles
    store = open_store(cfg.database_path)
    w = EvidenceWriter(store, AGENT_SIGNER, cfg.evidence_directory, EvidenceIdentity(SITE, HOST),
                       clock=lambda: lg.clock[0])
    Pruner(w, RetentionPolicy(keep_last=4, min_age_days=0)).prune()  # prunes 1..8 -> seq 13
    w.close()
    store.close()
    lg.passes(2)  # 14..19
    return lg


def export(log: Log, out: Path, *extra: str) -> int:
    return run(["evidence", "export", "--out", str(out), "--config", str(log.cfg_path), *extra])


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def rewrite(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_export_window_with_pruned_bundles_verifies(log: Log, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.tar.gz"
    assert export(log, out, "--since", "2026-01-01T02:30:00Z", "--until",
                  "2026-01-01T05:30:00Z") == 0
    summary = json.loads(capsys.readouterr().out)
    # Passes 3..5 of the clock: seq 7..12 and the prune bundle 13 (same hour as pass 4).
    assert summary["first_sequence"] == 7 and summary["tree_size"] == 19
    names = set(members(out))
    assert "evidence-export/VERIFY.md" in names and "evidence-export/verify_export.py" in names
    assert run(["evidence", "verify", "--public-key", KEY, str(out)]) == 0
    assert "included in the signed checkpoint of size 19" in out_of(capsys)


def test_every_changed_byte_or_file_is_detected(log: Log, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.tar.gz"
    assert export(log, out) == 0
    files = members(out)
    for name, data in files.items():
        for pos in {0, len(data) // 2, len(data) - 2}:
            changed = dict(files)
            changed[name] = data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]
            rewrite(tmp_path / "x.tar.gz", changed)
            assert run(["evidence", "verify", "--public-key", KEY,
                        str(tmp_path / "x.tar.gz")]) == 1, (name, pos)
    dropped = {n: d for n, d in files.items() if "/bundles/" not in n or "13-" in n}
    rewrite(tmp_path / "x.tar.gz", dropped)
    assert run(["evidence", "verify", "--public-key", KEY, str(tmp_path / "x.tar.gz")]) == 1
    assert run(["evidence", "verify", "--public-key", OTHER_SIGNER.public_key_hex, str(out)]) == 1
    capsys.readouterr()
    raw = bytearray(out.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "y.tar.gz").write_bytes(bytes(raw))
    assert run(["evidence", "verify", "--public-key", KEY, str(tmp_path / "y.tar.gz")]) == 1


def test_export_of_an_empty_window_is_an_error(log: Log, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert export(log, tmp_path / "e.tar.gz", "--since", "2030-01-01T00:00:00Z") == 2
    assert "no evidence bundle created between" in out_of(capsys)


def test_export_signs_a_checkpoint_for_bundles_not_yet_covered(
    log: Log, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(log.db)
    w = EvidenceWriter(store, AGENT_SIGNER, log.edir, EvidenceIdentity(SITE, HOST),
                       clock=lambda: log.clock[0])
    w.record(check="order", outcome="rejected")  # seq 20, no checkpoint yet
    w.close()
    store.close()
    out = tmp_path / "e.tar.gz"
    assert export(log, out) == 0
    assert json.loads(capsys.readouterr().out)["tree_size"] == 20
    assert run(["evidence", "verify", "--public-key", KEY, str(out)]) == 0
