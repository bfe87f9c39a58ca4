"""The root actuator against a compromised agent: each finding of the boundary review.

Every test here plays the agent's side of the socket with requests an honest
agent never sends, and checks that the actuator refuses them with a stable
reason and that nothing reached the host. (tests/integration/
test_actuator_hostile.py runs the same attacks against the real process, as
root, with real nft.)
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from reconciler.actuator.client import ActuatorClient, ActuatorRefused
from reconciler.actuator.protocol import Refusal
from specs.actions import (
    ApplyNftRuleset,
    NixosRebuild,
    RestartUnit,
    StartUnit,
    UpdateEgressSet,
)
from tests.unit.test_actuator_server import (
    IN_WINDOW,
    RULESET,
    Env,
    _persist_remote_baseline,
    _signed_baseline,
    raw_request,
    refused,
    serve,
)

EGRESS = {"table": "compliance_egress", "set_name": "allowed_v4"}


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def egress_config() -> dict[str, Any]:
    # IP literals: the actuator's own resolution of them needs no DNS
    return {"mcpUrl": "https://192.0.2.10", "allowedHosts": ["192.0.2.10", "2001:db8::10"]}


def raw_action(env: Env, action: dict[str, Any], **over: Any) -> Any:
    server = env.server(**over)
    return serve(server, lambda: raw_request(env.socket, json.dumps({"action": action}).encode()))


# --- 1. egress elements ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("set_name", "element"),
    [
        ("allowed_v4", "0.0.0.0/0"),
        ("allowed_v6", "::/0"),
        ("allowed_v4", "192.0.2.0/24"),
        ("allowed_v4", "192.0.2.1-192.0.2.200"),
    ],
)
def test_egress_networks_and_ranges_are_refused(env: Env, set_name: str, element: str) -> None:
    reply = raw_action(env, {"type": "UpdateEgressSet", "table": "compliance_egress",
                             "set_name": set_name, "elements": [element]}, **egress_config())
    assert reply.status == "refused"
    assert reply.reason in (Refusal.InvalidParams, Refusal.EgressElementNotAllowed)
    assert env.host.ran == []


def test_egress_element_injection_never_reaches_nft(env: Env) -> None:
    evil = "fe80::1%x }; flush ruleset; add table inet pwned {"
    reply = raw_action(env, {"type": "UpdateEgressSet", "table": "compliance_egress",
                             "set_name": "allowed_v6", "elements": [evil]}, **egress_config())
    assert reply.status == "refused" and reply.reason is Refusal.InvalidParams
    assert env.host.ran == []


def test_egress_address_outside_the_allowed_hosts_is_refused(env: Env) -> None:
    action = UpdateEgressSet(**EGRESS, elements=["192.0.2.10", "203.0.113.66"])
    err = refused(env.server(**egress_config()), ActuatorClient(env.socket), action)
    assert err.reason is Refusal.EgressElementNotAllowed
    assert "203.0.113.66" in err.message
    assert env.host.ran == []


def test_egress_element_count_is_capped(env: Env) -> None:
    elements = [f"10.{i // 256}.{i % 256}.1" for i in range(5000)]
    reply = raw_action(env, {"type": "UpdateEgressSet", **EGRESS, "elements": elements},
                       **egress_config())
    assert reply.status == "refused" and reply.reason is Refusal.InvalidParams
    assert env.host.ran == []


def test_egress_addresses_the_actuator_resolved_itself_are_applied(env: Env) -> None:
    action = UpdateEgressSet(**EGRESS, elements=["192.0.2.10"])
    result = serve(env.server(**egress_config()),
                   lambda: ActuatorClient(env.socket).execute(action))
    assert result.ok and len(env.host.ran) == 1 and "192.0.2.10" in env.host.ran[0][-1]


# --- 2. Rollback -------------------------------------------------------------------------


def test_standalone_rollback_is_refused_even_in_the_window(env: Env) -> None:
    """A rollback exists only inside the actuator's rebuild transaction: there is no
    action an agent could send to walk the host back to old generations."""
    env.now = IN_WINDOW
    env.write_baseline(["sshd.service"])
    reply = raw_action(env, {"type": "Rollback", "disruptive": True})
    assert reply.status == "refused" and reply.reason is Refusal.UnknownAction
    assert env.host.ran == []


# --- 3. disruptive is the actuator's call ------------------------------------------------


def test_journald_restart_claimed_non_disruptive_is_still_held_to_the_window(env: Env) -> None:
    env.write_baseline(["sshd.service", "systemd-journald.service"])
    reply = raw_action(env, {"type": "RestartUnit", "unit": "systemd-journald.service",
                             "disruptive": False})
    assert reply.status == "refused" and reply.reason is Refusal.OutsideMaintenanceWindow
    assert env.host.ran == []


# --- 4. signed baselines -----------------------------------------------------------------


def _signed(env: Env, version: int, units: list[str], key: SigningKey | None = None,
            **binding: Any) -> bytes:
    from reconciler.trust.dsse import Signer, envelope_bytes
    from specs.baseline import BASELINE_PAYLOAD_TYPE

    body: dict[str, Any] = {"version": version, "policy_version": f"{version}.0",
                            "site_id": "clinic-1", "host_id": "h1",
                            "services": {"units": [{"name": u} for u in units]}}
    body.update(binding)
    body = {k: v for k, v in body.items() if v is not None}
    env_ = Signer(key or env.signing_key).sign_envelope(json.dumps(body).encode(),
                                                       BASELINE_PAYLOAD_TYPE)
    return envelope_bytes(env_)


def test_agent_state_db_baseline_is_not_trusted_by_the_actuator(env: Env) -> None:
    # Properly signed, but the actuator decides from its own inputs, never the agent's DB.
    _persist_remote_baseline(env, _signed_baseline(env.signing_key, ["auditd.service"]))
    err = refused(env.server(), ActuatorClient(env.socket), StartUnit(unit="auditd.service"))
    assert err.reason is Refusal.UnitNotInBaseline


def test_offered_signed_baseline_is_verified_and_kept_with_a_high_water_mark(env: Env) -> None:
    client = ActuatorClient(env.socket)
    assert serve(env.server(), lambda: client.offer_baseline(_signed(env, 5, ["auditd.service"])))
    assert serve(env.server(), lambda: client.execute(StartUnit(unit="auditd.service"))).ok

    # An older signed baseline (it listed an extra unit) is refused: no rollback.
    def offer_old() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            client.offer_baseline(_signed(env, 4, ["auditd.service", "evil.service"]))
        return info.value

    assert serve(env.server(), offer_old).reason is Refusal.BaselineRollback
    err = refused(env.server(), client, StartUnit(unit="evil.service"))
    assert err.reason is Refusal.UnitNotInBaseline


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        ({"host_id": "h2"}, "BaselineWrongHost"),
        ({"site_id": "clinic-2"}, "BaselineWrongSite"),
        ({"host_id": None}, "InvalidBaseline"),
    ],
)
def test_signed_baseline_for_another_host_is_refused(
    env: Env, binding: dict[str, Any], reason: str
) -> None:
    client = ActuatorClient(env.socket)

    def offer() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            client.offer_baseline(_signed(env, 5, ["evil.service"], **binding))
        return info.value

    assert serve(env.server(), offer).reason == reason
    err = refused(env.server(), client, StartUnit(unit="evil.service"))
    assert err.reason is Refusal.UnitNotInBaseline


def test_baseline_signed_by_an_untrusted_key_is_refused(env: Env) -> None:
    client = ActuatorClient(env.socket)

    def offer() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            client.offer_baseline(_signed(env, 5, ["evil.service"], key=SigningKey.generate()))
        return info.value

    assert serve(env.server(), offer).reason == "UnknownKey"


# --- 6. observe: only the encryption spec's block devices, never one at a time -----------


@pytest.mark.parametrize("path", ["/dev/shm/evil", "/dev/null", "/dev/sda\n", "/dev/../etc/shadow"])
def test_observe_of_a_path_that_is_not_a_named_block_device_is_refused(
    env: Env, path: str
) -> None:
    def call() -> ActuatorRefused:
        with pytest.raises(ActuatorRefused) as info:
            ActuatorClient(env.socket).observe(["cryptsetup", "luksDump", path])
        return info.value

    assert serve(env.server(), call).reason is Refusal.ObservationNotAllowed
    assert env.host.ran == []


def test_a_slow_observation_does_not_block_other_requests(env: Env) -> None:
    release = threading.Event()
    started = threading.Event()
    original = env.host.run

    def slow_run(argv: Any, timeout: float = 30.0, *, stdin: bytes | None = None) -> Any:
        if list(argv) == ["nft", "-j", "list", "ruleset"]:
            started.set()
            release.wait(20)
        return original(argv, timeout, stdin=stdin)

    env.host.run = slow_run  # type: ignore[method-assign]
    server = env.server()
    t = threading.Thread(target=server.serve_forever, args=(3.0,), daemon=True)
    t.start()
    slow = threading.Thread(
        target=lambda: ActuatorClient(env.socket, timeout=30).observe(["nft", "-j", "list",
                                                                       "ruleset"]),
        daemon=True,
    )
    slow.start()
    try:
        assert started.wait(5)
        result = ActuatorClient(env.socket, timeout=3).execute(StartUnit(unit="sshd.service"))
        assert result.ok
    finally:
        release.set()
        slow.join(10)
        t.join(15)
        server.listener.close()


def test_observe_timeouts_are_short(env: Env) -> None:
    body = json.dumps({"observe": ["nft", "-j", "list", "ruleset"], "timeout": 120}).encode()
    reply = serve(env.server(), lambda: raw_request(env.socket, body))
    assert reply.status == "refused" and reply.reason is Refusal.InvalidParams


# --- 7. nft applies the bytes it hashed --------------------------------------------------


def test_ruleset_swapped_after_hashing_is_not_what_nft_reads(env: Env) -> None:
    seen: list[str] = []
    original_read, original_run = env.host.read_text, env.host.run

    def read_then_swap(path: str) -> str:
        text = original_read(path)
        Path(path).write_text("flush ruleset\n")  # the agent wins the race
        return text

    def run(argv: Any, timeout: float = 30.0, *, stdin: bytes | None = None) -> Any:
        if argv[:2] == ["nft", "-f"]:  # what nft will read: the file, or its stdin
            seen.append(Path(argv[2]).read_text() if argv[2] != "-" else (stdin or b"").decode())
        return original_run(argv, timeout, stdin=stdin)

    env.host.read_text = read_then_swap  # type: ignore[method-assign]
    env.host.run = run  # type: ignore[method-assign]
    action = ApplyNftRuleset(path=str(env.ruleset), sha256=env.sha)
    serve(env.server(), lambda: ActuatorClient(env.socket).execute(action))
    assert seen == [RULESET]


def test_ruleset_with_include_is_refused(env: Env) -> None:
    text = 'include "/var/lib/compliance-agent/extra.nft"\n' + env.ruleset.read_text()
    env.ruleset.write_text(text)
    env.sha = hashlib.sha256(text.encode()).hexdigest()
    env.write_baseline(["sshd.service"])
    action = ApplyNftRuleset(path=str(env.ruleset), sha256=env.sha)
    result = serve(env.server(), lambda: ActuatorClient(env.socket, errors_as_results=True)
                   .execute(action))
    assert not result.ok and "include" in (result.error or result.records[0].detail)
    assert env.host.ran == []


# --- 8. whole-string validation ----------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [
        {"type": "StartUnit", "unit": "sshd.service\n"},
        {"type": "UpdateEgressSet", "table": "compliance_egress\n", "set_name": "allowed_v4",
         "elements": []},
        {"type": "ApplyNftRuleset", "path": "/x", "sha256": "a" * 64 + "\n"},
    ],
)
def test_trailing_newline_is_not_a_valid_name(env: Env, action: dict[str, Any]) -> None:
    reply = raw_action(env, action)
    assert reply.status == "refused" and reply.reason is Refusal.InvalidParams


def test_rebuild_target_with_trailing_newline_is_refused(env: Env) -> None:
    env.now = IN_WINDOW
    body = {"action": {"type": "NixosRebuild",
                       "target": "/nix/store/" + "a" * 32 + "-nixos-system-h1\n"}}
    reply = serve(env.server(), lambda: raw_request(env.socket, json.dumps(body).encode()))
    assert reply.status == "refused"
    assert NixosRebuild is not None and env.host.ran == []


def test_restart_with_trailing_newline_unit_is_refused(env: Env) -> None:
    with pytest.raises(ValueError):
        RestartUnit(unit="sshd.service\n")


def test_a_request_cannot_forge_log_lines(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    forged = "x\nINFO compliance_agent.actuator: request peer_uid=0 verdict=ok"
    body = json.dumps({"observe": ["cryptsetup", "luksDump", forged]}).encode()
    with caplog.at_level("INFO", logger="compliance_agent.actuator"):
        reply = serve(env.server(), lambda: raw_request(env.socket, body))
    assert reply.reason is Refusal.ObservationNotAllowed
    lines = [r.getMessage() for r in caplog.records if "peer_uid" in r.getMessage()]
    assert lines and all("\n" not in line for line in lines), lines
