"""The HTML report renders in a real browser: headless Chromium takes a
screenshot of it, and the screenshot must show a page, not a blank one."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nacl.signing import SigningKey

from reconciler.cli.main import main
from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
from reconciler.store.database import open_store
from reconciler.trust.keys import write_seed_file
from specs.config import load_config
from tests.harness.png import ink_ratio
from tests.harness.require import require_root, require_tool
from tests.unit.test_trust_support import AGENT_SIGNER, write_config

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1024,1280",
)


def screenshot(html: Path, png: Path, profile: Path) -> None:
    """Render `html` with a fresh profile and no network; raise if Chromium fails."""
    chromium = require_tool("chromium")
    require_root()  # --no-sandbox is only acceptable for root in a throwaway container/VM
    out = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
         html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and png.exists(), out.stderr[-2000:]


def _report(tmp_path: Path) -> Path:
    """A config and state directory with a few hours of signed evidence."""
    path = write_config(tmp_path)
    cfg = load_config(path)
    write_seed_file(cfg.signing_key_file, SigningKey(bytes.fromhex("22" * 32)))
    store = open_store(cfg.database_path)
    t0 = datetime.now(UTC) - timedelta(hours=6)
    now = [t0]
    w = EvidenceWriter(store, AGENT_SIGNER, cfg.evidence_directory,
                       EvidenceIdentity(cfg.site_id, cfg.host_id), clock=lambda: now[0])
    for hours, check, outcome in [(0, "services", "success"), (1, "services", "failed"),
                                  (2, "services", "success"), (1, "encryption", "alert"),
                                  (3, "patching", "deferred")]:
        now[0] = t0 + timedelta(hours=hours)
        w.record(check=check, outcome=outcome, timestamp_end=now[0])
    w.close()
    store.close()
    return path


def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    config = _report(tmp_path)
    html, png = tmp_path / "report.html", tmp_path / "report.png"
    assert main(["report", "--config", str(config), "--format", "html",
                 "--out", str(html)]) == 0
    screenshot(html, png, tmp_path / "profile")
    ink, colours = ink_ratio(png)
    # text, tables and coloured bars: a blank or error page has almost no ink
    assert ink > 0.03 and colours > 20, (ink, colours)


def test_blank_page_is_detected(tmp_path: Path) -> None:
    """The check above can fail: an empty page gives no ink."""
    html, png = tmp_path / "blank.html", tmp_path / "blank.png"
    html.write_text("<!DOCTYPE html><html><body></body></html>")
    screenshot(html, png, tmp_path / "profile")
    ink, _ = ink_ratio(png)
    assert ink < 0.001
