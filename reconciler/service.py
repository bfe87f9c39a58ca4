"""Wiring for the real service: which parts exist depends on the config.

Kept apart from agent.py so the runtime stays testable with injected parts,
and so optional parts are imported only when used.

Start-up refuses what must never be silently degraded: a signing key that is
unreadable or readable by others (evidence could not be trusted). A control
plane that cannot be set up (missing client certificate, say) is reported and
the agent runs offline: it keeps reconciling and queueing evidence.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reconciler.evidence.retention import Pruner, RetentionPolicy
from reconciler.runtime.agent import Agent, PassReport
from reconciler.runtime.daemon import Daemon
from specs.config import AgentConfig
from specs.errors import ComplianceAgentError
from specs.host import Host

if TYPE_CHECKING:
    from reconciler.actuator.result import Actuator
    from reconciler.delivery.loop import ControlPlaneLoop
    from reconciler.evidence.checkpoint import Checkpointer
    from reconciler.evidence.recorder import EvidenceRecorder
    from reconciler.evidence.writer import EvidenceWriter
    from reconciler.store.outbox import Outbox
    from reconciler.store.triggers import TriggerStore

log = logging.getLogger("compliance_agent.service")


class StartupError(ComplianceAgentError):
    """The agent must not start; the message says what to fix."""


@dataclass
class Service:
    agent: Agent
    writer: EvidenceWriter
    outbox: Outbox
    recorder: EvidenceRecorder
    triggers: TriggerStore
    checkpointer: Checkpointer
    control_plane: ControlPlaneLoop | None = None
    wake: Callable[[], None] = lambda: None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:
                log.exception("error while closing")


def build_service(
    cfg: AgentConfig,
    *,
    host: Host | None = None,
    actuator: Actuator | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    with_control_plane: bool = True,
    controllers: dict[str, Any] | None = None,
) -> Service:
    """The full agent: runtime + evidence + outbox + triggers (+ control plane)."""
    from reconciler.delivery.baseline_resolver import BaselineResolver
    from reconciler.delivery.integrations import (
        IntegrationError,
        IntegrationHook,
        build_integrations,
    )
    from reconciler.evidence.checkpoint import Checkpointer, origin_for
    from reconciler.evidence.recorder import EvidenceRecorder
    from reconciler.evidence.writer import EvidenceIdentity, EvidenceWriter
    from reconciler.store.outbox import Outbox
    from reconciler.store.triggers import TriggerStore
    from reconciler.trust.keys import KeyFileError, load_signing_key

    try:
        signer = load_signing_key(cfg.signing_key_file)
    except KeyFileError as e:
        raise StartupError(f"signingKeyFile: {e}") from None

    try:
        sinks = build_integrations(cfg)
    except IntegrationError as e:
        raise StartupError(f"reseller integrations: {e}") from None
    agent = Agent(cfg, host=host, actuator=actuator, clock=clock, controllers=controllers)
    outbox = Outbox(agent.store)
    hook = IntegrationHook(sinks)
    writer = EvidenceWriter(
        agent.store, signer, cfg.evidence_directory, EvidenceIdentity.from_config(cfg),
        clock=clock, on_stored=[outbox.on_stored, hook],
    )
    recorder = EvidenceRecorder(writer, cfg.evidence_snapshot_interval,
                                agent.runtime.effective_clock_offset)
    agent.listeners.append(recorder)
    triggers = TriggerStore(agent.store)
    agent.desired.trigger_source = lambda: triggers.active(clock())
    agent.metrics.add_collect_hook(lambda: _outbox_metrics(agent, outbox))
    # Passes read the local file and the stored signed baseline; only the
    # control-plane thread talks to the network.
    local_source = BaselineResolver(cfg, None, agent.store, cfg.mcp_public_keys, clock=clock)
    agent.desired.baseline_loader = local_source.current

    checkpointer = Checkpointer(agent.store, signer, cfg.evidence_directory,
                                origin_for(cfg.site_id, cfg.host_id), clock=clock)
    svc = Service(agent=agent, writer=writer, outbox=outbox, recorder=recorder,
                  triggers=triggers, checkpointer=checkpointer,
                  closers=[agent.close, writer.close, checkpointer.close, hook.close])
    if with_control_plane:
        svc.control_plane = _control_plane(cfg, svc, clock)
    return svc


def _control_plane(
    cfg: AgentConfig, svc: Service, clock: Callable[[], datetime]
) -> ControlPlaneLoop | None:
    from reconciler.delivery.baseline_resolver import BaselineResolver
    from reconciler.delivery.checkpoints import CheckpointDelivery
    from reconciler.delivery.client import ControlPlaneClient, ControlPlaneError
    from reconciler.delivery.deliverer import Deliverer
    from reconciler.delivery.loop import ControlPlaneLoop
    from reconciler.store.nonces import NonceStore
    from reconciler.trust.admission import OrderAdmission

    agent = svc.agent
    try:
        client = ControlPlaneClient(cfg)
    except ControlPlaneError as e:
        log.error("control plane disabled: running offline, evidence is queued",
                  extra={"reason": "ControlPlaneUnavailable", "detail": str(e)})
        return None
    admission = OrderAdmission.from_config(cfg, NonceStore(agent.store), clock=clock)

    def on_admitted(kind: str | None, action: str) -> None:
        if action == "collect_evidence":
            svc.recorder.request_snapshot(None if kind is None else [kind])
        svc.wake()  # level-triggered: the next pass sees the trigger

    loop = ControlPlaneLoop(
        client=client, admission=admission, triggers=svc.triggers, writer=svc.writer,
        outbox=svc.outbox, deliverer=Deliverer(svc.outbox, client, clock=clock),
        baseline_resolver=BaselineResolver(cfg, client, agent.store, cfg.mcp_public_keys,
                                           clock=clock),
        store=agent.store, poll_interval=float(cfg.poll_interval),
        on_admitted=on_admitted, clock=clock,
        checkpoints=CheckpointDelivery(client, agent.store, svc.checkpointer,
                                       cfg.mcp_public_keys),
    )

    def feed_http_offset(_res: object) -> None:
        agent.runtime.http_offset_ms = loop.stats.http_offset_ms

    agent.listeners.insert(0, feed_http_offset)
    return loop


def _outbox_metrics(agent: Agent, outbox: Outbox) -> None:
    stats = outbox.stats()
    agent.metrics.outbox_depth.set(stats.depth)
    agent.metrics.outbox_oldest.set(stats.oldest_age_seconds or 0)
    agent.metrics.outbox_dead.set(stats.dead)


def build_agent(cfg: AgentConfig, dry_run: bool = False) -> Agent:
    """The full pipeline with evidence, no network.
    A dry run writes nothing, so it needs no signing key."""
    if dry_run:
        return Agent(cfg)
    return build_service(cfg, with_control_plane=False).agent


def reconcile_once(cfg: AgentConfig, dry_run: bool = False) -> PassReport:
    """`reconcile --once`: one pass, then a signed checkpoint of the evidence it wrote."""
    if dry_run:
        agent = Agent(cfg)
        try:
            return agent.run_pass(dry_run=True)
        finally:
            agent.close()
    svc = build_service(cfg, with_control_plane=False)
    try:
        report = svc.agent.run_pass()
        svc.checkpointer.checkpoint_safely()
        return report
    finally:
        svc.close()


def build_daemon(cfg: AgentConfig) -> Daemon:
    svc = build_service(cfg, with_control_plane=False)
    daemon = Daemon(svc.agent)
    svc.wake = daemon.request_pass
    clock = svc.agent.clock

    def start_control_plane() -> None:
        # After READY, on its own thread: the HTTP/TLS stack is not needed for the
        # first pass, and the loop never waits on the network.
        cp = _control_plane(cfg, svc, clock)
        if cp is None:
            return
        svc.control_plane = cp
        daemon.on_stop.insert(0, cp.stop)  # before the store closes
        daemon.on_pass_done.append(cp.kick)
        cp.start()

    daemon.after_ready.append(
        lambda: threading.Thread(target=start_control_plane, name="control-plane-setup",
                                 daemon=True).start())
    daemon.on_pass_done.append(svc.checkpointer.checkpoint_safely)  # before delivery's kick
    daemon.on_stop.append(svc.close)
    daemon.background.append(_daily_prune(Pruner(svc.writer, RetentionPolicy.from_config(cfg))))
    return daemon


PRUNE_INTERVAL = 24 * 3600.0


def _daily_prune(pruner: Pruner) -> Callable[[], None]:
    """Evidence retention once a day from the daemon too (the NixOS timer runs
    `evidence prune` as well; both share one chain through SQLite's write lock)."""
    import time

    next_at = [time.monotonic() + 600.0]  # not during start-up

    def job() -> None:
        if time.monotonic() < next_at[0]:
            return
        next_at[0] = time.monotonic() + PRUNE_INTERVAL
        result = pruner.prune()
        log.info("evidence pruned", extra={"reason": "Retention",
                                           "detail": json.dumps(result.to_json())[:300]})

    return job
