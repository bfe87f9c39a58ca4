"""DEV ONLY: `make demo` — the end-to-end story in about a minute.

A real systemd 252 container stands in for a clinic's NixOS host; a real
mutual-TLS control plane (demo/control_plane) runs on 127.0.0.1; the agent is
the production runtime (controllers, guards, actuator, evidence, outbox,
control-plane client) pointed at the container. The story:

1. the host converges to its baseline;
2. drift (a stopped service, an opened firewall port) is found and repaired;
3. one valid signed order takes effect; forged, expired, replayed and
   foreign-host orders are rejected with their reasons;
4. a signed baseline asks for a bad NixOS generation: deferred outside the
   maintenance window, then switched inside it, found unhealthy, rolled back;
5. the control plane goes down, evidence queues durably, comes back, drains;
6. the tally: bundles made, delivered, verified by the control plane, chain intact;
7. the auditor's reports over the run: HTML and OSCAL assessment results;
8. an evidence export that its own independent script (securesystemslib only) verifies.
9. NATS: an order takes effect within a second of being queued (a wake-up,
   not the 300 s poll), and the JetStream archiver's tally matches.

The state directory is left in place; its path is printed at the end.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from demo.stage import REPO, ControlPlane, agent_config, make_pki, preflight, write_baseline

WEB = "[Unit]\nDescription=EHR web front end\n[Service]\nExecStart=/bin/sleep infinity\n" \
      "[Install]\nWantedBy=multi-user.target\n"
RULESET = """flush ruleset
table inet filter {
  chain input {
    type filter hook input priority 0; policy drop;
    iif lo accept
    ct state established,related accept
    tcp dport 22 accept
  }
}
"""
SANDBOX_IN_CONTAINER = [
    "python3", "-I", "/opt/compliance-agent/reconciler/actuator/nft_sandbox.py"]
T0 = time.monotonic()


def say(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m  (+{time.monotonic() - T0:.1f}s)", flush=True)


def cli(config: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "reconciler.cli", *args, "--config", str(config)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    return (out.stdout + out.stderr).rstrip()


def indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


def window_excluding(now: datetime) -> str:
    start = now + timedelta(hours=3)
    return f"{start:%H}:00-{(start + timedelta(hours=1)):%H}:00"


def window_including(now: datetime) -> str:
    return f"{now - timedelta(hours=1):%H}:00-{now + timedelta(hours=2):%H}:00"


def main() -> int:
    problems = preflight()
    if problems:
        print("make demo needs: " + "; ".join(problems), file=sys.stderr)
        return 2
    from controllers.firewall import FirewallController
    from reconciler.actuator.local import LocalActuator
    from reconciler.cli.views import render_pass
    from reconciler.ops.logformat import setup_logging
    from reconciler.service import build_service
    from reconciler.trust.keys import generate_key_file
    from tests.harness.sdbox import Bind, SystemdContainer, ensure_rootfs
    from tests.integration.nixos_standin import StandinGeneration, install_nixos_standin

    setup_logging("ERROR")  # the story prints what matters
    state = REPO / "demo" / "state" / datetime.now(UTC).strftime("run-%Y%m%dT%H%M%SZ")
    state.mkdir(parents=True)
    say("Stage: throwaway CA and keys, control plane on 127.0.0.1, a systemd container")
    pki = make_pki(state / "pki")
    signer = generate_key_file(state / "agent-signing.key")
    from demo.stage_nats import NatsStage

    nats = NatsStage(state, pki)
    cp = ControlPlane(state, pki, signer.public_key_hex, nats_url=nats.nats.url)
    now = datetime.now(UTC)
    config = agent_config(state, pki, cp, state / "agent-signing.key", window_excluding(now),
                          nats_url=nats.nats.url_for("localhost"))
    print(f"   control plane https://localhost:{cp.port} (mutual TLS, DEV ONLY)")
    print(f"   NATS {nats.nats.url} (JetStream, TLS + client certificates), archiver running")
    print(f"   maintenance window {window_excluding(now)} UTC (closed right now)")

    box = SystemdContainer(state / "container", rootfs=ensure_rootfs(), private_network=True,
                           binds=[Bind(REPO, "/opt/compliance-agent")])
    box.start()
    try:
        return story(state, config, cp, box, pki, FirewallController, LocalActuator,
                     build_service, render_pass, StandinGeneration,
                     install_nixos_standin, nats)
    finally:
        box.stop()
        cp.stop()
        nats.stop()
        print(f"\nstate directory (kept): {state}")


def story(state: Path, config: Path, cp: ControlPlane, box: Any, pki: Any,
          FirewallController: Any, LocalActuator: Any, build_service: Any, render_pass: Any,
          StandinGeneration: Any, install_nixos_standin: Any,
          nats: Any) -> int:
    from specs.config import load_config

    box.install_unit("ehr-web.service", WEB)
    box.check(["systemctl", "enable", "--now", "ehr-web.service"])
    box.write_file("/etc/nftables.conf", RULESET)
    box.check(["nft", "-f", "/etc/nftables.conf"])
    app = "[Unit]\nDescription=clinic app {v}\n[Service]\nExecStart=/bin/sleep infinity\n"
    gens = install_nixos_standin(box, [
        StandinGeneration("24.05-good", units={"clinic-app.service": app.format(v="1")}),
        StandinGeneration("24.11-bad", units={
            "clinic-app.service": app.format(v="2"),
            "broken-migration.service": "[Service]\nType=oneshot\nExecStart=/bin/false\n"},
            switch_exit=0),
    ])
    baseline: dict[str, Any] = {
        "version": 1, "policy_version": "2026.11",
        "services": {"units": [{"name": "ehr-web.service"}], "restart_backoff_base": 1},
        "firewall": {"ruleset_path": "/etc/nftables.conf",
                     "ruleset_sha256": hashlib.sha256(RULESET.encode()).hexdigest()},
        "patching": {"target": gens["24.05-good"], "health_timeout": 20},
    }
    write_baseline(state, baseline)

    def start_agent(cfg: Any) -> tuple[Any, Any, Any]:
        svc = build_service(cfg, host=box, actuator=LocalActuator(box, rebuild_health_timeout=20),
                            controllers={"firewall": FirewallController(
                                sandbox_argv=SANDBOX_IN_CONTAINER)})
        assert svc.control_plane is not None, "control plane client could not be built"
        return svc, svc.agent, svc.control_plane

    cfg = load_config(config)
    svc, agent, loop = start_agent(cfg)

    say("1. The clinic host at its baseline")
    print(indent(render_pass(agent.run_pass(), as_json=False)))
    print(indent(cli(config, "status")))

    say("2. Drift: someone stops the EHR front end and opens port 8080")
    box.check(["systemctl", "stop", "ehr-web.service"])
    box.check(["nft", "add", "rule", "inet", "filter", "input", "tcp", "dport", "8080", "accept"])
    print(indent(render_pass(agent.run_pass(), as_json=False)))
    print(indent(cli(config, "status")))

    say("3. Orders from the control plane: one valid, four that must be refused")
    orders = signed_orders(cp, cfg)
    for env in orders.values():
        cp.storage().add_order(cfg.site_id, cfg.host_id, env)
    loop.poll_once()
    # Served again (as after a crash before the cursor was saved): recognised, not run twice.
    cp.storage().add_order(cfg.site_id, cfg.host_id, orders["valid restart_service"])
    loop.poll_once()
    print_verdicts(loop)
    before = box.run(["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value",
                      "ehr-web.service"]).stdout.strip()
    agent.run_pass()
    after = box.run(["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "--value",
                     "ehr-web.service"]).stdout.strip()
    print(f"   restart_service order took effect: ehr-web.service restarted "
          f"({'yes' if after != before else 'NO'})")

    say("4. A signed baseline asks for a new NixOS generation that turns out bad")
    bad = dict(baseline, version=2, patching={"target": gens["24.11-bad"], "health_timeout": 20})
    (state / "baseline-v2.json").write_text(json.dumps(bad))
    cp.cli("baseline", str(state / "baseline-v2.json"), "--signing-key", str(cp.seed_file),
           "--site", cfg.site_id, "--host", cfg.host_id)
    loop.poll_once()
    report = agent.run_pass()
    print(indent(render_pass(report, as_json=False)))
    say("   ... the maintenance window opens")
    # Rather than wait for it, the demo moves the window to now: a config change,
    # and the agent restarts with it (its state, evidence chain and queue are kept).
    svc.link.stop()
    svc.close()
    config = agent_config(state, pki, cp, state / "agent-signing.key",
                          window_including(datetime.now(UTC)),
                          nats_url=nats.nats.url_for("localhost"))
    cfg = load_config(config)
    print(f"   maintenance window {cfg.maintenance_window} UTC (open now)")
    svc, agent, loop = start_agent(cfg)
    report = agent.run_pass()
    print(indent(render_pass(report, as_json=False)))
    health = box.run(["systemctl", "is-system-running"]).stdout.strip()
    print(f"   system state after the transaction: {health}")
    print(indent(cli(config, "describe", "patching").split("Last observation:")[0]))

    say("5. Control plane outage: evidence queues durably, then drains")
    cp.cli("outage", "on")
    for _ in range(3):
        svc.recorder.request_snapshot()
        agent.run_pass()
        svc.checkpointer.checkpoint()  # what the daemon does after each pass
        loop.deliver_once()
    print(indent("\n".join(cli(config, "queue").splitlines()[:4])))
    print("   ... control plane back")
    cp.cli("outage", "off")
    deadline = time.monotonic() + 30
    while svc.outbox.stats().depth and time.monotonic() < deadline:
        loop.deliver_once()
        time.sleep(0.2)
    print(indent("\n".join(cli(config, "queue").splitlines()[:4])))

    svc.checkpointer.checkpoint()
    loop.deliver_once()  # the newest checkpoint, countersigned by the control plane

    say("6. Tally")
    summary = json.loads(cp.cli("summary"))
    made = svc.outbox.stats()
    verify = cli(config, "evidence", "verify", "--all")
    rows = [
        ("bundles made by the agent", str(made.depth + made.delivered + made.dead)),
        ("delivered (receipts recorded)", str(made.delivered)),
        ("received and verified by the control plane", str(summary["verified"])),
        ("chain intact at the control plane", str(summary["chain_intact"])),
        ("duplicates suppressed by Idempotency-Key", str(summary["duplicates_suppressed"])),
        ("local `evidence verify --all`", verify.splitlines()[-1] if verify else "?"),
        ("newest checkpoint countersigned by the control plane",
         ", ".join(f"{h} at tree size {n}" for h, n in summary["checkpoints"].items()) or "none"),
        ("split views refused", str(len(summary["split_views"]))),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"   {name.ljust(width)}  {value}")
    ok = summary["chain_intact"] and made.depth == 0 and made.delivered == summary["verified"]
    ok = write_reports(state, config) and ok
    ok = auditor_export(state, config) and ok
    ok = nats_story(cfg, svc, loop, cp, box, nats) and ok
    print("\n   " + ("demo complete" if ok else "demo finished WITH PROBLEMS (see above)"))
    svc.close()
    return 0 if ok else 1


def write_reports(state: Path, config: Path) -> bool:
    """7. The auditor's view: the run's evidence as an HTML report and as OSCAL."""
    say("7. Reports for the auditor: HTML and OSCAL assessment results")
    since = f"{datetime.strptime(state.name, 'run-%Y%m%dT%H%M%SZ'):%Y-%m-%dT%H:%M:%SZ}"
    paths = {fmt: state / f"compliance-report.{ext}" for fmt, ext in
             (("html", "html"), ("oscal", "oscal.json"))}
    for fmt, path in paths.items():
        print(indent(cli(config, "report", "--since", since, "--format", fmt, "--out", str(path))))
    from trestle.oscal.assessment_results import AssessmentResults

    doc = json.loads(paths["oscal"].read_text())
    ar = AssessmentResults.model_validate(doc["assessment-results"])
    print(f"   OSCAL validated by compliance-trestle: {len(ar.results[0].findings or [])} "
          "findings")
    for path in paths.values():
        print(f"   report: {path}")
    return all(p.exists() for p in paths.values())


def auditor_export(state: Path, config: Path) -> bool:
    """8. The export an auditor gets, checked by the script shipped inside it."""
    import tarfile

    say("8. Auditor export, checked by its own independent script (securesystemslib only)")
    out = state / "evidence-export.tar.gz"
    print(indent(cli(config, "evidence", "export", "--out", str(out))))
    unpacked = state / "export"
    with tarfile.open(out) as tar:
        tar.extractall(unpacked, filter="data")
    edir = unpacked / "evidence-export"
    key = (edir / "public_key.hex").read_text().strip()
    r = subprocess.run([sys.executable, "verify_export.py", "--public-key", key, str(out)],
                       cwd=edir, capture_output=True, text=True, timeout=120)
    print(indent((r.stdout + r.stderr).rstrip()))
    print(f"   {out}: see {edir / 'VERIFY.md'}")
    return r.returncode == 0


def nats_story(cfg: Any, svc: Any, loop: Any, cp: ControlPlane, box: Any, nats: Any) -> bool:
    """9. An order wake-up over NATS, then the JetStream archive's tally."""
    from demo.control_plane.app import make_order
    from reconciler.delivery.wakeup import WatchState

    say(f"9. NATS: order wake-ups (poll interval {cfg.poll_interval} s) and the evidence archive")
    watcher = svc.wakeups
    assert watcher is not None, "natsUrl is set in the demo config"
    loop.start()
    watcher.start()
    try:
        wait(lambda: watcher.snapshot().state is WatchState.connected and loop.stats.polls >= 1,
             15)
        print(f"   agent watching {watcher.subject} over TLS ({watcher.snapshot().state})")

        def started() -> str:
            return str(box.run(["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic",
                                "--value", "ehr-web.service"]).stdout.strip())

        before, admitted = started(), loop.stats.orders_admitted
        t0 = time.monotonic()
        cp.storage().add_order(cfg.site_id, cfg.host_id, make_order(
            cp.signing_key, cfg.site_id, cfg.host_id, "restart_service",
            {"unit": "ehr-web.service"}))
        wait(lambda: loop.stats.orders_admitted > admitted, 30)
        t_admitted = time.monotonic() - t0
        svc.agent.run_pass()
        t_effect = time.monotonic() - t0
        restarted = started() != before
        print(f"   order queued -> wake-up -> fetched over mTLS and admitted in "
              f"{t_admitted * 1000:.0f} ms; ehr-web.service restarted "
              f"({'yes' if restarted else 'NO'}) {t_effect * 1000:.0f} ms after queueing")
        svc.recorder.request_snapshot()
        svc.agent.run_pass()
        loop.kick()
        wait(lambda: svc.outbox.stats().depth == 0, 30)
        verified = json.loads(cp.cli("summary"))["verified"]
        wait(lambda: nats.tally()["archived"] >= verified, 30)
        tally = nats.tally()
        snap = watcher.snapshot()
    finally:
        watcher.stop()
    rows = [
        ("wake-ups received / polls they caused", f"{snap.wakeups} / {snap.polls_requested}"),
        ("envelopes verified by the control plane", str(verified)),
        ("archived from JetStream (append-only, per host)", str(tally["archived"])),
        ("archive chain intact", str(tally["chain_intact"])),
        ("archiver lag (messages)", nats.lag()),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"   {name.ljust(width)}  {value}")
    return restarted and t_effect < 1.0 and tally["chain_intact"] and \
        tally["archived"] == verified


def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the demo waited too long; see the state directory's logs")
        time.sleep(0.01)


def signed_orders(cp: ControlPlane, cfg: Any) -> dict[str, dict[str, Any]]:
    """One valid order and four bad ones, built the way a control plane would."""
    import secrets

    from nacl.signing import SigningKey

    from demo.control_plane.dsse import sign

    def order(action: str, params: dict[str, Any], *, host: str | None = None,
              issued: datetime | None = None, ttl: int = 600, nonce: str | None = None) -> bytes:
        return json.dumps({
            "order_id": f"ord-{secrets.token_hex(4)}", "site_id": cfg.site_id,
            "host_id": host or cfg.host_id, "nonce": nonce or secrets.token_hex(16),
            "issued_at": (issued or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "ttl_seconds": ttl, "action": action, "params": params,
        }).encode()

    ptype = "application/vnd.compliance-agent.order+json"
    restart = order("restart_service", {"unit": "ehr-web.service"})
    forged = sign(SigningKey.generate(), order("rebuild", {"target": "github:evil/x#h"}), ptype)
    forged["signatures"][0]["keyid"] = sign(cp.signing_key, b"x", ptype)["signatures"][0]["keyid"]
    return {
        "valid restart_service": sign(cp.signing_key, restart, ptype),
        "forged signature": forged,
        "expired": sign(cp.signing_key, order("reconcile_now", {},
                        issued=datetime.now(UTC) - timedelta(hours=2), ttl=60), ptype),
        "foreign host": sign(cp.signing_key, order("run_backup", {"job": "daily"},
                             host="front-desk-2"), ptype),
        # another order reusing the valid one's nonce: a replay attack
        "replayed nonce": sign(cp.signing_key, order(
            "rebuild", {"target": "github:evil/x#h"},
            nonce=json.loads(restart)["nonce"]), ptype),
    }


def print_verdicts(loop: Any) -> None:
    print("   order verdicts (each one is also a signed evidence bundle):")
    for v in loop.recent_verdicts:
        print(f"     {'admitted' if v.admitted else 'REFUSED':9} {v.reason:18} "
              f"{(v.order_id or '-'):14} {v.message[:70]}")


if __name__ == "__main__":
    sys.exit(main())
