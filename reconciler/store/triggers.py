"""Admitted orders become triggers in desired state (level-triggered orders).

An order such as "run a backup now" is not executed on receipt: it is stored
here and merged into the affected kind's spec (`spec.triggers`) on every pass
until it expires. The kind's controller treats the trigger as satisfied once
its observation shows the effect after `requested_at` (a newer snapshot, a
unit started after it, ...), so a crash or a deferral never loses the request
and a satisfied one is never repeated. The guards see the order id on the
actions a trigger causes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import text

from reconciler.store.database import Store, Transaction
from specs.resource import Trigger

# Long enough for a disruptive request to wait for the next maintenance window.
TRIGGER_LIFETIME = timedelta(hours=26)
ALL_KINDS = "*"


class TriggerStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, kind: str | None, trigger: Trigger, now: datetime) -> None:
        with self.store.begin() as tx:
            self.add_in(tx, kind, trigger, now)

    def add_in(self, tx: Transaction, kind: str | None, trigger: Trigger, now: datetime) -> None:
        """`add` inside the caller's transaction (with the order's nonce and evidence)."""
        tx.execute(
            text(
                "INSERT INTO order_triggers (order_id, kind, action, params_json,"
                " requested_at, admitted_at, expires_at) VALUES (:o, :k, :a, :p, :r, :n, :e)"
                " ON CONFLICT(order_id) DO NOTHING"
            ),
            {
                "o": trigger.order_id, "k": kind, "a": trigger.action,
                "p": json.dumps(trigger.params, sort_keys=True),
                "r": trigger.requested_at.isoformat(), "n": now.isoformat(),
                "e": (now + TRIGGER_LIFETIME).isoformat(),
            },
        )

    def active(self, now: datetime) -> dict[str, list[Trigger]]:
        """Unexpired triggers by kind (`*` = every kind); expired ones are dropped."""
        out: dict[str, list[Trigger]] = {}
        with self.store.begin() as conn:
            if not self.store.readonly:
                conn.execute(text("DELETE FROM order_triggers WHERE expires_at < :now"),
                             {"now": now.isoformat()})
            rows = conn.execute(
                text(
                    "SELECT order_id, kind, action, params_json, requested_at FROM order_triggers"
                    " WHERE expires_at >= :now ORDER BY requested_at"
                ),
                {"now": now.isoformat()},
            ).all()
        for order_id, kind, action, params, requested in rows:
            trig = Trigger(order_id=order_id, action=action, params=json.loads(params),
                           requested_at=datetime.fromisoformat(requested))
            out.setdefault(kind or ALL_KINDS, []).append(trig)
        return out
