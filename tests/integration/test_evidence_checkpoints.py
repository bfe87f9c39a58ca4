"""Checkpoints delivered to the real mTLS demo control plane: countersigned after a
consistency check; a rolled-back agent is caught by the cosigned checkpoint it kept
elsewhere and refused (with evidence) by the control plane."""

from __future__ import annotations

import argparse
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from reconciler.cli.trust import register
from reconciler.delivery.checkpoints import CheckpointDelivery
from reconciler.delivery.client import ControlPlaneClient
from reconciler.evidence.checkpoint import Checkpointer, origin_for
from reconciler.evidence.note import SignedNote, verify_cosignature
from reconciler.evidence.writer import EvidenceIdentity, EvidenceRequest, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.store.evidence_tree import all_checkpoints
from reconciler.trust.dsse import Signer
from specs.config import AgentConfig
from tests.support.agent import load, write_agent_config
from tests.support.control_plane import ControlPlaneThread
from tests.support.tls import TlsFiles, make_tls

pytestmark = pytest.mark.integration


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="compliance-agent")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


class Agent:
    def __init__(self, cfg: AgentConfig, key: SigningKey) -> None:
        self.cfg, self.signer = cfg, Signer(key)
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def pass_and_deliver(self, n: int = 3) -> CheckpointDelivery:
        store = open_store(self.cfg.database_path)
        clock = lambda: self.now  # noqa: E731
        w = EvidenceWriter(store, self.signer, self.cfg.evidence_directory,
                           EvidenceIdentity(self.cfg.site_id, self.cfg.host_id), clock=clock)
        cp = Checkpointer(store, self.signer, self.cfg.evidence_directory,
                          origin_for(self.cfg.site_id, self.cfg.host_id), clock=clock)
        client = ControlPlaneClient(self.cfg)
        delivery = CheckpointDelivery(client, store, cp, self.cfg.mcp_public_keys)
        try:
            self.now += timedelta(minutes=5)
            w.record_many([EvidenceRequest(check=f"c{i}", outcome="success",
                                           post_state={"t": str(self.now)}) for i in range(n)])
            cp.checkpoint()
            delivery.deliver_once()
        finally:
            client.close()
            cp.close()
            w.close()
            store.close()
        return delivery

    def checkpoints(self) -> list[object]:
        store = open_store(self.cfg.database_path)
        try:
            with store.begin() as conn:
                return list(all_checkpoints(conn))
        finally:
            store.close()


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return make_tls(tmp_path / "tls")


def test_cosigned_checkpoints_and_a_rolled_back_state_directory(
    tmp_path: Path, tls: TlsFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    cp_key = SigningKey.generate()
    agent_key = SigningKey.generate()
    with ControlPlaneThread(tls, tmp_path / "cp.db", [Signer(agent_key).public_key_hex],
                            signing_key=cp_key) as server:
        path, _ = write_agent_config(tmp_path / "agent", tls, server.url(),
                                     [bytes(cp_key.verify_key).hex()])
        # The evidence key the control plane was told about.
        (tmp_path / "agent" / "signing.key").write_text(bytes(agent_key).hex() + "\n")
        cfg = load(path)
        agent = Agent(cfg, agent_key)
        for _ in range(3):
            assert agent.pass_and_deliver().cosigned == 1
        rows = agent.checkpoints()
        assert [r.tree_size for r in rows] == [3, 6, 9]  # type: ignore[attr-defined]
        newest = SignedNote.parse(rows[-1].cosigned_note)  # type: ignore[attr-defined]
        assert verify_cosignature(newest, "demo.control-plane.compliance-agent.dev",
                                  bytes(cp_key.verify_key)) > 0
        assert (cfg.evidence_directory / "checkpoints" / "000000000009.cosigned.note").exists()
        assert server.storage.checkpoint_heads() == {"clinic-1/host-a": 9}
        c = str(path)
        assert cli(["evidence", "verify", "--all", "--config", c]) == 0
        assert "countersigned checkpoint(s) verified" in capsys.readouterr().out
        # A forged countersignature (the control plane's key is in mcpPublicKeys).
        cosigned_file = cfg.evidence_directory / "checkpoints" / "000000000009.cosigned.note"
        good = cosigned_file.read_text()
        last_line = good.splitlines()[-1]
        forged = last_line[:-6] + ("AAAAA=" if not last_line.endswith("AAAAA=") else "BBBBB=")
        cosigned_file.write_text(good.replace(last_line, forged))
        assert cli(["evidence", "verify", "--all", "--config", c]) == 1
        assert "PROBLEM BadCosignature: seq 9" in capsys.readouterr().out
        cosigned_file.write_text(good)
        # Auditor mode on a copy of the evidence directory, countersignatures checked.
        copy = tmp_path / "copy"
        shutil.copytree(cfg.evidence_directory, copy)
        assert cli(["evidence", "verify", "--public-key", Signer(agent_key).public_key_hex,
                    "--cosigner-key", bytes(cp_key.verify_key).hex(), str(copy)]) == 0
        assert "3 countersigned checkpoint(s) verified" in capsys.readouterr().out

        backup = tmp_path / "backup"
        shutil.copytree(cfg.state_directory, backup)
        agent.pass_and_deliver()
        kept = tmp_path / "kept.note"
        kept.write_text(agent.checkpoints()[-1].cosigned_note)  # type: ignore[attr-defined]

        # Roll the state directory back to the older copy.
        shutil.rmtree(cfg.state_directory)
        shutil.copytree(backup, cfg.state_directory)
        assert cli(["evidence", "verify", "--all", "--config", c]) == 0
        capsys.readouterr()
        assert cli(["evidence", "verify", "--all", "--config", c, "--checkpoint", str(kept)]) == 1
        assert "PROBLEM Truncated: seq 12" in capsys.readouterr().out

        # The rolled-back agent goes on: its new tree of size 12 is a split view.
        d = agent.pass_and_deliver()
        assert d.cosigned == 0
        last = agent.checkpoints()[-1]
        assert last.tree_size == 12 and last.cosigned_note is None  # type: ignore[attr-defined]
        assert "SplitView" in (last.delivery_error or "")  # type: ignore[attr-defined]
        [split] = server.storage.split_views()
        assert split["reason"] == "SplitView" and split["host"] == "clinic-1/host-a"
        assert SignedNote.parse(split["known"]).text != SignedNote.parse(split["received"]).text
