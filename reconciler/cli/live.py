"""Where `status` and `describe` get their answer, cheapest first.

1. The daemon's status socket (`/status`, JSON): the live view, no database
   and no pydantic/SQLAlchemy import; the few things it does not carry
   (evidence queue, order wake-ups, condition history) are read with the
   standard library's sqlite3, read-only, when this user may read the state.
2. Otherwise (daemon stopped, socket off or not ours to read): the state
   database, read-only, with the same standard-library reader (the documents
   have the shape the daemon serves, so one renderer serves both).

The config is read here as plain JSON for the two paths it needs; the full
validation stays with the daemon and `config check` (a config the daemon
runs with is valid, and any problem falls through to the validating path).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from reconciler.cli.common import CliError
from reconciler.ops.status_client import unix_get
from reconciler.store import peek

# AgentConfig's defaults (tests/unit/test_cli_conventions.py keeps them equal).
DEFAULT_STATUS_SOCKET = Path("/run/compliance-agent/status.sock")
DEFAULT_STATE_DIRECTORY = Path("/var/lib/compliance-agent")
SOCKET_TIMEOUT = 2.0
WAKEUPS_KEY = "order_wakeups"  # reconciler.delivery.wakeup.WATCH_STATE_KEY
WATCHES_KEY = "watches"  # reconciler.service.WATCHES_STATE_KEY
AGENT_USER = "compliance-agent"


class StatusUnavailable(CliError):
    """Neither the daemon's socket nor the state database can be read."""


class RawConfig:
    """The two paths `status` needs, from the config JSON without validating it."""

    def __init__(self, status_socket: Path | None, state_directory: Path) -> None:
        self.status_socket = status_socket
        self.state_directory = state_directory

    @property
    def database_path(self) -> Path:
        return self.state_directory / "state.db"

    @classmethod
    def read(cls, path: Path) -> RawConfig | None:
        """None when the file is unreadable or not a JSON object (the validating loader
        then reports it properly)."""
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict):
            return None
        sock = doc.get("statusSocket", doc.get("status_socket", str(DEFAULT_STATUS_SOCKET)))
        state = doc.get("stateDirectory", doc.get("state_directory",
                                                  str(DEFAULT_STATE_DIRECTORY)))
        if not isinstance(state, str) or (sock is not None and not isinstance(sock, str)):
            return None
        return cls(Path(sock) if sock else None, Path(state))


def ask_daemon(cfg: RawConfig) -> dict[str, Any] | None:
    """The daemon's live status document, or None when it does not answer."""
    if cfg.status_socket is None:
        return None
    try:
        code, body = unix_get(cfg.status_socket, "/status", timeout=SOCKET_TIMEOUT)
        doc = json.loads(body) if code == 200 else None
    except (OSError, ValueError, IndexError):  # absent, refused, not ours, garbled
        return None
    return doc if isinstance(doc, dict) and "resources" in doc else None


def add_store_extras(doc: dict[str, Any], cfg: RawConfig) -> None:
    """Evidence queue, order wake-ups and (when the daemon did not say it live) the
    unit/file watches from the state database, when readable."""
    conn = peek.open_readonly(cfg.database_path)
    if conn is None:
        return
    try:
        doc["evidence_queue"] = peek.outbox_stats(conn, time.time())
        raw = peek.meta_value(conn, WAKEUPS_KEY)
        raw_watches = None if "watches" in doc else peek.meta_value(conn, WATCHES_KEY)
    finally:
        conn.close()
    doc["order_wakeups"] = _json_object(raw)
    if "watches" not in doc:
        doc["watches"] = _json_object(raw_watches)


def _json_object(raw: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        value = None
    return value if isinstance(value, dict) else None


def history(cfg: RawConfig, kind: str, limit: int) -> list[dict[str, Any]] | None:
    """Condition changes, newest first; None when the state database is not readable."""
    conn = peek.open_readonly(cfg.database_path)
    if conn is None:
        return None
    try:
        return peek.condition_history(conn, kind, limit)
    finally:
        conn.close()


def summary_of(resources: list[dict[str, Any]], last_pass: dict[str, Any] | None) -> str:
    """The host roll-up of reconciler.runtime.conditions.host_summary (and its empty case
    in status_document), on the JSON documents: Failed if anything is stalled,
    InProgress if a resource is not Ready, else Current. A unit test keeps the two equal."""
    if not resources:
        return "Current" if last_pass else "InProgress"
    conds = [{c.get("type"): c.get("status") for c in r.get("conditions") or []}
             for r in resources]
    if any(c.get("Stalled") == "True" for c in conds):
        return "Failed"
    return "Current" if all(c.get("Ready") == "True" for c in conds) else "InProgress"


def _open_store(cfg: RawConfig) -> Any:
    db = cfg.database_path
    if not db.exists():
        raise StatusUnavailable(
            f"{db}: no state database yet (has the agent run? check stateDirectory)")
    conn = peek.open_readonly(db)
    if conn is None:
        sock = (f"; while the daemon runs, members of the group {AGENT_USER} read its status "
                f"socket {cfg.status_socket} instead (NixOS: users.users.<you>.extraGroups = "
                f'[ "{AGENT_USER}" ])') if cfg.status_socket else ""
        raise StatusUnavailable(
            f"{db}: cannot read the state database as this user: run as root or as the "
            f"agent's user (sudo -u {AGENT_USER} compliance-agent ...){sock}")
    return conn


def store_status(cfg: RawConfig) -> dict[str, Any]:
    """The status document from the state database (the daemon is not answering)."""
    from datetime import UTC, datetime

    conn = _open_store(cfg)
    try:
        resources = peek.resource_statuses(conn)
        if resources is None:
            raise StatusUnavailable(f"{cfg.database_path}: not an agent state database "
                                    "(no resource_status table)")
        last = peek.last_pass(conn)
    finally:
        conn.close()
    doc = {"summary": summary_of(resources, last),
           "generated_at": datetime.now(UTC).isoformat(), "last_pass": last,
           "resources": resources}
    add_store_extras(doc, cfg)
    return doc


def store_resources(cfg: RawConfig) -> list[dict[str, Any]]:
    conn = _open_store(cfg)
    try:
        resources = peek.resource_statuses(conn)
    finally:
        conn.close()
    if resources is None:
        raise StatusUnavailable(f"{cfg.database_path}: not an agent state database "
                                "(no resource_status table)")
    return resources
