"""`compliance-agent queue` and `queue retry` on a real state file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reconciler.cli import delivery as cli_delivery
from reconciler.store.database import open_store
from reconciler.store.outbox import Outbox


def run(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    cli_delivery.register(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = {
        "siteId": "s", "hostId": "h", "baselinePath": str(tmp_path / "b.json"),
        "clientCertFile": "/c", "clientKeyFile": "/k", "signingKeyFile": "/s",
        "caCertFile": "/ca", "mcpPublicKeys": ["ab" * 32], "deploymentMode": "direct",
        "stateDirectory": str(tmp_path / "state"),
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    store = open_store(tmp_path / "state" / "state.db")
    outbox = Outbox(store)
    with store.begin() as conn:
        for b in ("a", "b", "c", "d"):
            outbox.enqueue(conn, b, b"{}")
    outbox.settle(delivered=[("a", "r-a")], dead=[("b", "HTTP 422: BadSignature"),
                                                  ("c", "HTTP 409: conflict")])
    store.close()
    return path


def test_queue_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["queue", "-o", "json", "--config", str(config)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["depth"], out["dead"], out["delivered"]) == (1, 2, 1)
    assert [d["bundle_id"] for d in out["dead_letters"]] == ["b", "c"]
    assert out["dead_letters"][0]["last_error"] == "HTTP 422: BadSignature"


def test_queue_table_mentions_retry(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["queue", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "DEAD LETTERS" in out and "BadSignature" in out and "queue retry" in out


def test_queue_retry_named_and_all(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["queue", "retry", "b", "zzz", "--config", str(config)]) == 1
    assert "re-queued 1 of 2" in capsys.readouterr().out
    assert run(["queue", "retry", "--all", "--config", str(config)]) == 0
    assert "re-queued 1 dead letter" in capsys.readouterr().out
    run(["queue", "-o", "json", "--config", str(config)])
    out = json.loads(capsys.readouterr().out)
    assert (out["depth"], out["dead"]) == (3, 0)


def test_queue_retry_needs_ids_or_all(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["queue", "retry", "--config", str(config)]) == 2
    assert "--all" in capsys.readouterr().err


def test_queue_without_state_db_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({
        "siteId": "s", "baselinePath": "/b", "clientCertFile": "/c", "clientKeyFile": "/k",
        "signingKeyFile": "/s", "caCertFile": "/ca", "mcpPublicKeys": ["ab" * 32],
        "deploymentMode": "direct", "stateDirectory": str(tmp_path / "nope"),
    }))
    from reconciler.store.database import StoreError

    with pytest.raises(StoreError, match="no state database"):
        run(["queue", "--config", str(cfg)])
