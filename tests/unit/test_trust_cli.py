"""CLI: keygen, order verify, evidence list/show/verify/prune through register()."""

from __future__ import annotations

import argparse
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.trust import register
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.trust.keys import load_signing_key, write_seed_file
from specs.config import load_config
from tests.unit.test_trust_support import (
    AGENT_SIGNER,
    order_payload,
    sign_order,
    write_config,
)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compliance-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_keygen_prints_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert run(["keygen", "--out", str(out)]) == 0
    pub = capsys.readouterr().out.strip()
    assert pub == load_signing_key(out).public_key_hex and len(pub) == 64
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert run(["keygen", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert run(["keygen", "--out", str(out), "--force"]) == 0
    assert capsys.readouterr().out.strip() != pub


def test_order_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    order = tmp_path / "order.json"
    order.write_bytes(sign_order(order_payload()))
    at = "2026-03-01T12:00:10Z"
    assert run(["order", "verify", str(order), "--at", at, "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out) == {"admitted": True, "reason": "Admitted"}
    # Read-only: verifying twice admits twice (nothing recorded), no DB created.
    assert run(["order", "verify", str(order), "--at", at, "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert not (tmp_path / "state" / "state.db").exists()
    late = "2026-03-01T13:00:00Z"
    assert run(["order", "verify", str(order), "--at", late, "--config", str(cfg)]) == 3
    assert json.loads(capsys.readouterr().out) == {"admitted": False, "reason": "Expired"}


def test_order_verify_sees_replays_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler.store.nonces import NonceStore
    from reconciler.trust.admission import OrderAdmission

    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    store = open_store(cfg.database_path)
    env = sign_order(order_payload())
    adm = OrderAdmission(
        cfg.mcp_public_keys,
        cfg.site_id,
        cfg.host_id,
        900,
        5,
        NonceStore(store),
        clock=lambda: datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC),
    )
    assert adm.admit(env).admitted
    mtime = cfg.database_path.stat().st_mtime_ns
    order = tmp_path / "order.json"
    order.write_bytes(env)
    assert (
        run(
            [
                "order",
                "verify",
                str(order),
                "--at",
                "2026-03-01T12:00:10Z",
                "--config",
                str(cfg_path),
            ]
        )
        == 3
    )
    # The same order: admitted before (a replay of another payload is Replayed).
    assert json.loads(capsys.readouterr().out)["reason"] == "AlreadyAdmitted"
    assert cfg.database_path.stat().st_mtime_ns == mtime
    store.close()


def test_order_verify_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert run(["order", "verify", str(tmp_path / "nope"), "--config", str(cfg)]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad_cfg = tmp_path / "bad.json"
    bad_cfg.write_text("{}")
    assert run(["order", "verify", str(cfg), "--config", str(bad_cfg)]) == 2
    assert "siteId" in capsys.readouterr().err
    order = tmp_path / "o"
    order.write_bytes(b"junk")
    assert run(["order", "verify", str(order), "--at", "yesterday", "--config", str(cfg)]) == 2


def _populate(tmp_path: Path, **cfg_overrides: Any) -> tuple[Path, Any]:
    cfg_path = write_config(tmp_path, **cfg_overrides)
    cfg = load_config(cfg_path)
    write_seed_file(cfg.signing_key_file, AGENT_SIGNER._key)
    store = open_store(cfg.database_path)
    t = [datetime(2026, 1, 1, tzinfo=UTC)]
    w = EvidenceWriter(
        store,
        AGENT_SIGNER,
        cfg.evidence_directory,
        EvidenceIdentity.from_config(cfg),
        clock=lambda: t[0],
    )
    for i in range(5):
        t[0] += timedelta(days=1)
        w.record(check="backup", outcome="failed", post_state={"i": i})
    w.close()
    store.close()
    return cfg_path, cfg


def test_evidence_list_show_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = _populate(tmp_path)
    c = str(cfg_path)
    assert run(["evidence", "list", "--config", c]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "BUNDLE", "CHECK", "OUTCOME", "CREATED", "STATE"]
    assert len(lines) == 6 and lines[1].split()[0] == "5"
    assert run(["evidence", "list", "-o", "json", "--config", c]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["sequence"] for r in rows] == [5, 4, 3, 2, 1]

    assert run(["evidence", "show", rows[0]["bundle_id"], "--config", c]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["signature"] == "ok"
    assert shown["statement"]["predicate"]["sequence"] == 5
    assert run(["evidence", "show", "3", "--config", c]) == 0
    assert json.loads(capsys.readouterr().out)["index"]["sequence"] == 3
    assert run(["evidence", "show", "nope", "--config", c]) == 2
    capsys.readouterr()

    assert run(["evidence", "verify", "--all", "--config", c]) == 0
    assert "intact" in capsys.readouterr().out
    (cfg.evidence_directory / rows[2]["file_name"]).unlink()
    assert run(["evidence", "verify", "--all", "--config", c]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM Missing: seq 3" in out
    # Explicit files, key given on the command line.
    one = str(cfg.evidence_directory / rows[0]["file_name"])
    assert (
        run(["evidence", "verify", one, "--public-key", AGENT_SIGNER.public_key_hex, "--config", c])
        == 0
    )
    capsys.readouterr()
    assert run(["evidence", "verify", "--config", c]) == 2


def test_evidence_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path, cfg = _populate(tmp_path, evidenceRetention=2, pruneRetentionDays=0)
    assert run(["evidence", "prune", "--config", str(cfg_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["pruned_ranges"] == [[1, 3]] and len(result["prune_bundles"]) == 1
    assert run(["evidence", "list", "--all", "-o", "json", "--config", str(cfg_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["check"] == "evidence_prune" and rows[-1]["pruned_at"]
    assert run(["evidence", "verify", "--all", "--config", str(cfg_path)]) == 0
    assert "pruned" in capsys.readouterr().out
    # The prune bundle was queued for delivery like any evidence.
    from reconciler.store.outbox import Outbox

    store = open_store(cfg.database_path)
    assert [i.bundle_id for i in Outbox(store).claim_batch(10)] == result["prune_bundles"]
    store.close()


def test_evidence_prune_refuses_unsafe_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path, cfg = _populate(tmp_path)
    cfg.signing_key_file.chmod(0o644)
    assert run(["evidence", "prune", "--config", str(cfg_path)]) == 2
    assert "chmod 0600" in capsys.readouterr().err


def test_evidence_list_without_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert run(["evidence", "list", "--config", str(cfg)]) == 2
    assert "no state database" in capsys.readouterr().err
