"""How soon the runtime may re-apply a ruleset that drifted again after a repair.

A firewall flushed over and over is re-applied with a per-action backoff (so the
agent does not fight another tool in a tight loop). Its bounds are the spec's,
like the services' restart backoff: a site that wants a flushed firewall back
within a minute, whatever happens, lowers the cap.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from controllers.firewall import FirewallController
from reconciler.store.database import Store
from reconciler.store.status import StatusStore
from specs.kinds.firewall import FirewallSpec

SHA = "0" * 64


def spec(**over: float) -> FirewallSpec:
    return FirewallSpec(ruleset_path="/etc/nftables.conf", ruleset_sha256=SHA, **over)


def test_defaults_are_unchanged() -> None:
    ctrl = FirewallController(sandbox_argv=["sandbox"])
    assert ctrl.backoff(spec()) == (10.0, 900.0)


def test_the_spec_bounds_the_reapply_backoff() -> None:
    ctrl = FirewallController(sandbox_argv=["sandbox"])
    assert ctrl.backoff(spec(reapply_backoff_base=2, reapply_backoff_cap=60)) == (2.0, 60.0)
    # a cap below the base is the base (never a shrinking backoff)
    assert ctrl.backoff(spec(reapply_backoff_base=30, reapply_backoff_cap=5)) == (30.0, 30.0)


def test_repeated_repairs_never_wait_longer_than_the_cap(tmp_path: Path) -> None:
    """Ten re-applications in a row: the runtime's backoff never exceeds the cap."""
    store = Store(tmp_path / "state.db")
    store.migrate()
    status = StatusStore(store)
    base, cap = FirewallController(sandbox_argv=["s"]).backoff(
        spec(reapply_backoff_base=2, reapply_backoff_cap=60))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    key = "firewall/ApplyNftRuleset"
    waits = []
    for _ in range(10):
        status.note_attempt(key, now, base, cap)
        until = status.backoff_until(key, now)
        assert until is not None
        waits.append((until - now).total_seconds())
        now = until + timedelta(seconds=1)
    assert max(waits) <= 60 and waits[0] <= 2 * 2


@pytest.mark.parametrize("field", ["reapply_backoff_base", "reapply_backoff_cap"])
def test_a_non_positive_bound_is_refused(field: str) -> None:
    with pytest.raises(ValidationError):
        spec(**{field: 0})
