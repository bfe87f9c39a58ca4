"""Persistence of reconcile status: resource conditions, their history,
pass records and per-action backoff, in the state database.

`StatusView` only reads (the CLI's `status` and `describe` use it on a read-only
store, next to the running daemon); `StatusStore` adds the daemon's writes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import Connection, text

from reconciler.store.database import Store
from reconciler.store.peek import HISTORY_KEYS, HISTORY_SQL, LATEST_RUN_QUERY
from specs.backoff import Backoff
from specs.status import ActionRecord, Condition, Outcome, ResourceStatus

_conditions = TypeAdapter(list[Condition])
_records = TypeAdapter(list[ActionRecord])


class StatusView:
    """Read-only access to status, history, passes and backoff."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self, kind: str) -> ResourceStatus:
        with self.store.begin() as conn:
            return self._load(conn, kind) or ResourceStatus(kind=kind)

    def load_all(self) -> list[ResourceStatus]:
        with self.store.begin() as conn:
            rows = conn.execute(text("SELECT kind FROM resource_status ORDER BY kind")).all()
            out = [self._load(conn, r[0]) for r in rows]
        return [s for s in out if s is not None]

    def _load(self, conn: Connection, kind: str) -> ResourceStatus | None:
        row = conn.execute(
            text(
                "SELECT generation, conditions_json, last_pass_at, last_outcome, observed_json,"
                " last_actions_json FROM resource_status WHERE kind = :k"
            ),
            {"k": kind},
        ).first()
        if row is None:
            return None
        return ResourceStatus(
            kind=kind,
            generation=row[0],
            conditions=_conditions.validate_json(row[1]),
            last_pass_at=datetime.fromisoformat(row[2]) if row[2] else None,
            last_outcome=Outcome(row[3]) if row[3] else None,
            observed=json.loads(row[4]) if row[4] else None,
            last_actions=_records.validate_json(row[5]),
        )

    def history(self, kind: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.store.begin() as conn:
            rows = conn.exec_driver_sql(HISTORY_SQL, (kind, limit)).all()
        return [dict(zip(HISTORY_KEYS, r, strict=True)) for r in rows]

    def last_pass(self) -> dict[str, Any] | None:
        with self.store.begin() as conn:
            row = conn.exec_driver_sql(LATEST_RUN_QUERY).first()
        if row is None:
            return None
        return {"started_at": row[0], "finished_at": row[1], "duration_sec": row[2],
                "cpu_sec": row[3], "summary": row[4]}

    def backoff_until(self, key: str, now: datetime | None = None) -> datetime | None:
        """When `key` may run again. With `now`, never later than `now` plus the
        delay that was scheduled: a time written while the wall clock was
        stepped forward (and since corrected) must not hold an action for days."""
        with self.store.begin() as conn:
            row = conn.execute(
                text("SELECT next_allowed_at, last_at FROM action_backoff WHERE key = :k"),
                {"k": key},
            ).first()
        if row is None:
            return None
        until = datetime.fromisoformat(row[0])
        if now is None:
            return until
        delay = max(timedelta(0), until - datetime.fromisoformat(row[1]))
        return min(until, now + delay)


class StatusStore(StatusView):
    """The daemon's writes of status, history, passes and backoff."""

    def save(self, status: ResourceStatus, transitions: list[Condition]) -> None:
        with self.store.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO resource_status (kind, generation, conditions_json, last_pass_at,"
                    " last_outcome, observed_json, last_actions_json)"
                    " VALUES (:kind, :gen, :conds, :at, :outcome, :obs, :acts)"
                    " ON CONFLICT(kind) DO UPDATE SET generation=excluded.generation,"
                    " conditions_json=excluded.conditions_json, last_pass_at=excluded.last_pass_at,"
                    " last_outcome=excluded.last_outcome, observed_json=excluded.observed_json,"
                    " last_actions_json=excluded.last_actions_json"
                ),
                {
                    "kind": status.kind,
                    "gen": status.generation,
                    "conds": _conditions.dump_json(status.conditions).decode(),
                    "at": status.last_pass_at.isoformat() if status.last_pass_at else None,
                    "outcome": status.last_outcome.value if status.last_outcome else None,
                    "obs": json.dumps(status.observed, default=str) if status.observed else None,
                    "acts": _records.dump_json(status.last_actions).decode(),
                },
            )
            for c in transitions:
                conn.execute(
                    text(
                        "INSERT INTO condition_history (kind, type, status, reason, message, at,"
                        " generation) VALUES (:k, :t, :s, :r, :m, :at, :g)"
                    ),
                    {
                        "k": status.kind, "t": c.type.value, "s": c.status.value,
                        "r": c.reason, "m": c.message,
                        "at": c.last_transition_time.isoformat(), "g": c.observed_generation,
                    },
                )

    def forget_kinds_except(self, kinds: set[str]) -> list[str]:
        """Drop status of kinds no longer in the baseline (history is kept);
        returns the kinds dropped."""
        dropped: list[str] = []
        with self.store.begin() as conn:
            for (kind,) in conn.execute(text("SELECT kind FROM resource_status")).all():
                if kind not in kinds:
                    conn.execute(text("DELETE FROM resource_status WHERE kind = :k"), {"k": kind})
                    dropped.append(kind)
        return dropped

    def record_pass(
        self, started: datetime, finished: datetime, duration: float, cpu: float,
        summary: str, dry_run: bool,
    ) -> None:
        with self.store.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO passes (started_at, finished_at, duration_sec, cpu_sec, summary,"
                    " dry_run) VALUES (:s, :f, :d, :c, :sum, :dry)"
                ),
                {"s": started.isoformat(), "f": finished.isoformat(), "d": duration, "c": cpu,
                 "sum": summary, "dry": int(dry_run)},
            )
            # keep the table small: the last 1000 passes are plenty for operators
            conn.execute(
                text("DELETE FROM passes WHERE id <= (SELECT MAX(id) FROM passes) - 1000")
            )

    def note_attempt(self, key: str, now: datetime, base: float, cap: float) -> datetime:
        """Record that `key` ran; the next attempt waits base*2^(n-1), capped."""
        with self.store.begin() as conn:
            row = conn.execute(
                text("SELECT attempts FROM action_backoff WHERE key = :k"), {"k": key}
            ).first()
            attempts = (row[0] if row else 0) + 1
            delay = Backoff(base, cap).ceiling(attempts)
            nxt = now + timedelta(seconds=delay)
            conn.execute(
                text(
                    "INSERT INTO action_backoff (key, attempts, last_at, next_allowed_at)"
                    " VALUES (:k, :a, :l, :n) ON CONFLICT(key) DO UPDATE SET"
                    " attempts=excluded.attempts, last_at=excluded.last_at,"
                    " next_allowed_at=excluded.next_allowed_at"
                ),
                {"k": key, "a": attempts, "l": now.isoformat(), "n": nxt.isoformat()},
            )
        return nxt

    def clear_stable_backoff(self, kind: str, now: datetime, stable_seconds: float) -> None:
        """Forget attempts of `kind` whose last try held for `stable_seconds`.

        Not cleared on the first clean pass: a unit that dies again seconds after
        each restart must keep backing off (crash loop), like systemd's
        StartLimitIntervalSec rather than client-go's immediate forget.
        """
        cutoff = (now - timedelta(seconds=stable_seconds)).isoformat()
        with self.store.begin() as conn:
            conn.execute(
                text("DELETE FROM action_backoff WHERE key LIKE :p AND last_at <= :c"),
                {"p": f"{kind}/%", "c": cutoff},
            )
