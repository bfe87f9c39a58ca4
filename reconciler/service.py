"""The composition root: which parts exist, and how they are wired, from the config.

This is the one place (with the CLI) that reads `AgentConfig`. Every other
part gets the small policy it needs (`GuardPolicy`, `DaemonPolicy`, a path)
and its collaborators as constructor arguments; nothing here assigns another
object's attributes after it is built. Optional parts are imported only when
used.

Start-up refuses what must never be silently degraded: a signing key that is
unreadable or readable by others (evidence could not be trusted). A control
plane that cannot be set up (missing client certificate, say) is reported and
the agent runs offline: it keeps reconciling and queueing evidence.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from controllers.base import KindController
from reconciler.evidence.retention import Pruner, RetentionPolicy
from reconciler.ops.metrics import AgentMetrics, CollectHook
from reconciler.runtime.agent import VERSION, Agent, PassReport
from reconciler.runtime.clock_health import ClockHealth, HttpDateReading, NtpReading
from reconciler.runtime.daemon import Daemon, DaemonPolicy
from reconciler.runtime.desired import (
    BaselineLoader,
    DesiredState,
    SpecDefaults,
    TriggerSource,
    local_baseline,
    no_triggers,
)
from reconciler.runtime.guards import GuardPolicy
from reconciler.runtime.reconcile import ReconcileListener
from reconciler.runtime.registry import ControllerRegistry
from reconciler.runtime.watch import WatchFactory
from reconciler.store.database import Store, open_store
from specs.baseline import Baseline
from specs.config import AgentConfig
from specs.errors import ComplianceAgentError
from specs.host import Host
from specs.watch import EVERY_KIND
from specs.window import MaintenanceWindow

if TYPE_CHECKING:
    from reconciler.actuator.result import Actuator
    from reconciler.delivery.loop import ControlPlaneLoop
    from reconciler.delivery.wakeup import WakeupWatcher
    from reconciler.evidence.checkpoint import Checkpointer
    from reconciler.evidence.recorder import EvidenceRecorder
    from reconciler.evidence.writer import EvidenceWriter
    from reconciler.store.outbox import Outbox
    from reconciler.store.triggers import TriggerStore

log = logging.getLogger("compliance_agent.service")

# The kind whose result carries the NTP reading the clock guard judges.
CLOCK_KIND = "time"
WATCHES_STATE_KEY = "watches"


class StartupError(ComplianceAgentError):
    """The agent must not start; the message says what to fix."""


# -- policies: the few config values each part needs ----------------------------
def guard_policy(cfg: AgentConfig) -> GuardPolicy:
    return GuardPolicy(
        window=MaintenanceWindow.parse(cfg.maintenance_window),
        allow_outside_window=cfg.allow_disruptive_outside_window,
        max_skew_ms=cfg.ntp_max_skew_ms,
    )


def watch_factories(cfg: AgentConfig) -> list[WatchFactory]:
    """The watches (`watches: true`): files through inotify (the baseline file asks
    for a whole pass), systemd units on the system bus, and the live nftables
    ruleset: `nft monitor` run by the agent when it changes the host itself, or
    the root actuator's change notices when it has one (listening needs the
    privilege only the actuator has then). Each is optional at run time: one
    that cannot start is reported down and polling covers for it."""
    if not cfg.watches:
        return []
    from reconciler.runtime.inotify import InotifyWatch
    from reconciler.runtime.unit_watch import UnitWatch

    baseline = str(cfg.baseline_path)
    factories: list[WatchFactory] = [
        lambda emit: InotifyWatch(emit, always={baseline: EVERY_KIND}),
        lambda emit: UnitWatch(emit)]
    if cfg.actuator_socket is None:
        from reconciler.runtime.nft_watch import NftMonitorWatch

        factories.append(lambda emit: NftMonitorWatch(emit))
    else:
        from reconciler.actuator.client import ActuatorClient
        from reconciler.runtime.actuator_nft_watch import ActuatorNftWatch

        socket_path = cfg.actuator_socket
        factories.append(lambda emit: ActuatorNftWatch(
            emit, client=ActuatorClient(socket_path)))
    return factories


def daemon_policy(cfg: AgentConfig) -> DaemonPolicy:
    return DaemonPolicy(poll_interval=float(cfg.poll_interval), workers=cfg.workers,
                        status_socket=cfg.status_socket)


def spec_defaults(cfg: AgentConfig) -> list[SpecDefaults]:
    """What a baseline leaves to the host's config: the egress hosts and table,
    and the time resource's skew limit (one threshold: `ntpMaxSkewMs`)."""

    allowed_hosts, egress_table = list(cfg.allowed_hosts), cfg.egress_table
    max_skew_ms = cfg.ntp_max_skew_ms

    def fill(baseline: Baseline) -> Baseline:
        update: dict[str, object] = {}
        if baseline.egress is not None:
            update["egress"] = baseline.egress.with_config_defaults(allowed_hosts, egress_table)
        if baseline.time is not None:
            update["time"] = baseline.time.with_config_defaults(max_skew_ms)
        return baseline.model_copy(update=update) if update else baseline

    return [fill]


# -- the host and the actuator ------------------------------------------------------
def host_for(cfg: AgentConfig) -> Host:
    """The host the agent observes. Under the NixOS module the agent has no
    capabilities, so the few privileged reads (nft listings, LUKS headers) go
    to the root actuator; everything else runs locally."""
    from reconciler.actuator.host import LocalHost

    if cfg.actuator_socket is None:
        return LocalHost()
    from reconciler.actuator.client import ActuatorClient, PrivilegedReadHost

    return PrivilegedReadHost(LocalHost(), ActuatorClient(cfg.actuator_socket))


def actuator_for(cfg: AgentConfig, host: Host) -> Actuator:
    """In-process actuator, or the root actuator's socket when configured. A
    refusal or an unreachable actuator becomes a failed (or deferred) result,
    never an exception in the loop."""
    if cfg.actuator_socket is not None:
        from reconciler.actuator.client import ActuatorClient

        return ActuatorClient(cfg.actuator_socket, errors_as_results=True)
    from reconciler.actuator.local import LocalActuator

    return LocalActuator(host, rebuild_health_timeout=cfg.rebuild_health_check_timeout)


# -- the agent ------------------------------------------------------------------------
def new_agent(
    cfg: AgentConfig,
    *,
    host: Host | None = None,
    actuator: Actuator | None = None,
    store: Store | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    controllers: Mapping[str, KindController] | None = None,
    baseline: BaselineLoader | None = None,
    triggers: TriggerSource = no_triggers,
    clock_health: ClockHealth | None = None,
    listeners: Sequence[ReconcileListener] = (),
    collect_hooks: Sequence[CollectHook] = (),
) -> Agent:
    """The reconcile loop alone (no evidence, no network): `reconcile --dry-run`,
    tests. `controllers` replace the built-in controller of their kinds."""
    host = host or host_for(cfg)
    health = clock_health or ClockHealth()
    return Agent(
        store=store or open_store(cfg.database_path),
        host=host,
        actuator=actuator or actuator_for(cfg, host),
        desired=DesiredState(baseline or local_baseline(cfg.baseline_path),
                             defaults=spec_defaults(cfg), triggers=triggers),
        controllers=ControllerRegistry(controllers),
        policy=guard_policy(cfg),
        clock_health=health,
        metrics=AgentMetrics(VERSION, collect_hooks),
        metrics_textfile=cfg.metrics_textfile,
        # The clock reading first, so every later listener sees this result's offset.
        listeners=(NtpReading(health, CLOCK_KIND), *listeners),
        clock=clock,
    )


# -- companions of the daemon ------------------------------------------------------------
class CheckpointOnPass:
    """Signs a checkpoint of the evidence log after each pass that wrote bundles."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        self._checkpointer = checkpointer

    def start(self) -> None:
        pass

    def pass_done(self) -> None:
        self._checkpointer.checkpoint_safely()

    def stop(self) -> None:
        pass


# -- the control plane, as a companion of the daemon ---------------------------------
class ControlPlaneLink:
    """The control-plane loop, built on demand: `connect()` builds it now (tests,
    the demo); as a daemon companion, `start()` builds and starts it on its own
    thread after READY, because the HTTP/TLS stack is not needed for the first
    pass and the reconcile loop never waits on the network."""

    def __init__(self, build: Callable[[], ControlPlaneLoop | None]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._loop: ControlPlaneLoop | None = None
        self._built = False
        self._stopped = False

    @property
    def loop(self) -> ControlPlaneLoop | None:
        with self._lock:
            return self._loop

    def connect(self) -> ControlPlaneLoop | None:
        """Builds the loop (once; later calls return it). Not under the lock, so
        a shutdown never waits for the TLS set-up."""
        with self._lock:
            if self._built:
                return self._loop
            self._built = True
        loop = self._build()
        with self._lock:
            self._loop = loop
        return loop

    def start(self) -> None:
        threading.Thread(target=self._start, name="control-plane-setup", daemon=True).start()

    def _start(self) -> None:
        loop = self.connect()
        if loop is None:
            return
        with self._lock:
            started = not self._stopped
            if started:
                loop.start()
        if not started:
            loop.stop()  # the daemon stopped while it was being built: close its client

    def pass_done(self) -> None:
        loop = self.loop
        if loop is not None:
            loop.kick()  # deliver the pass's evidence now

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            loop = self._loop
        if loop is not None:
            loop.stop()

    def http_offset_ms(self) -> float | None:
        loop = self.loop
        return None if loop is None else loop.stats.http_offset_ms


@dataclass(frozen=True)
class Service:
    agent: Agent
    writer: EvidenceWriter
    outbox: Outbox
    recorder: EvidenceRecorder
    triggers: TriggerStore
    checkpointer: Checkpointer
    link: ControlPlaneLink
    wake: threading.Event  # set: run a pass now (an order was admitted)
    closers: tuple[Callable[[], None], ...]
    wakeups: WakeupWatcher | None = None  # NATS order wake-ups (natsUrl), not yet started

    @property
    def control_plane(self) -> ControlPlaneLoop | None:
        return self.link.loop

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
    controllers: Mapping[str, KindController] | None = None,
) -> Service:
    """The full agent: runtime + evidence + outbox + triggers (+ control plane,
    built now when `with_control_plane`, else left to `link.start()`)."""
    from reconciler.delivery.baseline_resolver import BaselineResolver
    from reconciler.delivery.integrations import (
        IntegrationError,
        IntegrationHook,
        build_integrations,
    )
    from reconciler.evidence.checkpoint import Checkpointer, origin_for
    from reconciler.evidence.recorder import EvidenceCollector, EvidenceRecorder
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
    store = open_store(cfg.database_path)
    outbox = Outbox(store)
    hook = IntegrationHook(sinks)
    writer = EvidenceWriter(
        store, signer, cfg.evidence_directory, EvidenceIdentity.from_config(cfg),
        clock=clock, on_stored=[outbox.on_stored, hook],
    )
    health = ClockHealth()
    recorder = EvidenceRecorder(writer, cfg.evidence_snapshot_interval,
                                health.effective_offset_ms)
    triggers = TriggerStore(store)
    wake = threading.Event()
    checkpointer = Checkpointer(store, signer, cfg.evidence_directory,
                                origin_for(cfg.site_id, cfg.host_id), clock=clock)
    link = ControlPlaneLink(lambda: _control_plane(
        cfg, store, writer, outbox, triggers, recorder, checkpointer, wake, clock))
    # Passes read the local file and the stored signed baseline; only the
    # control-plane thread talks to the network.
    local_source = BaselineResolver(cfg, None, store, cfg.mcp_public_keys, clock=clock,
                                    publish=_baseline_publisher(cfg))
    agent = new_agent(
        cfg, host=host, actuator=actuator, store=store, clock=clock, controllers=controllers,
        baseline=local_source.current, triggers=lambda: triggers.active(clock()),
        clock_health=health,
        # the HTTP Date offset before the recorder, which writes the offset into evidence
        listeners=(HttpDateReading(health, link.http_offset_ms), recorder),
        collect_hooks=(_outbox_metrics(outbox),),
    )
    agent.metrics.registry.register(EvidenceCollector(recorder))
    if with_control_plane:
        link.connect()
    wakeups = order_wakeups(cfg, store, link, agent.metrics)
    return Service(agent=agent, writer=writer, outbox=outbox, recorder=recorder,
                   triggers=triggers, checkpointer=checkpointer, link=link, wake=wake,
                   closers=(agent.close, writer.close, checkpointer.close, hook.close,
                            *([wakeups.stop] if wakeups else [])),  # stopped first
                   wakeups=wakeups)


def _baseline_publisher(cfg: AgentConfig) -> Callable[[bytes], None] | None:
    """With a root actuator, the signed baseline the agent applies is offered to it:
    the actuator verifies and keeps its own copy (it never reads the agent's DB)."""
    if cfg.actuator_socket is None:
        return None
    from reconciler.actuator.client import ActuatorClient, BaselinePublisher

    return BaselinePublisher(ActuatorClient(cfg.actuator_socket, timeout=30.0))


def _control_plane(
    cfg: AgentConfig,
    store: Store,
    writer: EvidenceWriter,
    outbox: Outbox,
    triggers: TriggerStore,
    recorder: EvidenceRecorder,
    checkpointer: Checkpointer,
    wake: threading.Event,
    clock: Callable[[], datetime],
) -> ControlPlaneLoop | None:
    from reconciler.delivery.baseline_resolver import BaselineResolver
    from reconciler.delivery.checkpoints import CheckpointDelivery
    from reconciler.delivery.client import ControlPlaneClient, ControlPlaneError
    from reconciler.delivery.deliverer import Deliverer
    from reconciler.delivery.loop import ControlPlaneLoop
    from reconciler.store.nonces import NonceStore
    from reconciler.trust.admission import OrderAdmission

    try:
        client = ControlPlaneClient(cfg)
    except ControlPlaneError as e:
        log.error("control plane disabled: running offline, evidence is queued",
                  extra={"reason": "ControlPlaneUnavailable", "detail": str(e)})
        return None
    admission = OrderAdmission.from_config(cfg, NonceStore(store), clock=clock)

    def on_admitted(kind: str | None, action: str) -> None:
        if action == "collect_evidence":
            recorder.request_snapshot(None if kind is None else [kind])
        wake.set()  # level-triggered: the next pass sees the trigger

    return ControlPlaneLoop(
        client=client, admission=admission, triggers=triggers, writer=writer,
        outbox=outbox, deliverer=Deliverer(outbox, client, clock=clock),
        baseline_resolver=BaselineResolver(cfg, client, store, cfg.mcp_public_keys, clock=clock),
        store=store, poll_interval=float(cfg.poll_interval),
        on_admitted=on_admitted, clock=clock,
        checkpoints=CheckpointDelivery(client, store, checkpointer, cfg.mcp_public_keys),
    )


def order_wakeups(cfg: AgentConfig, store: Store, link: ControlPlaneLink,
                  metrics: AgentMetrics) -> WakeupWatcher | None:
    """The NATS order wake-up watch when natsUrl is set (its client is imported only
    then): a wake-up asks the control-plane loop to poll now; its state goes to
    `status` (meta table) and the metrics."""
    if cfg.nats_url is None:
        return None
    from reconciler.delivery.client import ClientConfigError, build_ssl_context
    from reconciler.delivery.wakeup import WATCH_STATE_KEY, WakeupCollector, watch_order_wakeups
    from reconciler.store.meta import MetaStore

    try:
        context = build_ssl_context(cfg.ca_cert_file, cfg.client_cert_file, cfg.client_key_file)
    except ClientConfigError as e:
        log.error("order wake-ups disabled: polling continues", extra={
            "reason": "WakeupWatchUnavailable", "detail": str(e)})
        return None
    meta = MetaStore(store)

    def poll_now() -> None:
        loop = link.loop  # None until built: it polls as soon as it starts anyway
        if loop is not None:
            loop.request_poll()

    watcher = watch_order_wakeups(
        url=cfg.nats_url, context=context, site_id=cfg.site_id, host_id=cfg.host_id,
        request_poll=poll_now,
        on_change=lambda snap: meta.put(WATCH_STATE_KEY, json.dumps(snap.to_json())))
    metrics.registry.register(WakeupCollector(watcher))
    return watcher


def _outbox_metrics(outbox: Outbox) -> CollectHook:
    def collect(metrics: AgentMetrics) -> None:
        stats = outbox.stats()
        metrics.outbox_depth.set(stats.depth)
        metrics.outbox_oldest.set(stats.oldest_age_seconds or 0)
        metrics.outbox_dead.set(stats.dead)

    return collect


def build_agent(cfg: AgentConfig, dry_run: bool = False) -> Agent:
    """The full pipeline with evidence, no network.
    A dry run writes nothing, so it needs no signing key."""
    if dry_run:
        return new_agent(cfg)
    return build_service(cfg, with_control_plane=False).agent


def reconcile_once(cfg: AgentConfig, dry_run: bool = False) -> PassReport:
    """`reconcile --once`: one pass, then a signed checkpoint of the evidence it wrote."""
    if dry_run:
        agent = new_agent(cfg)
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
    daemon = Daemon(
        svc.agent, daemon_policy(cfg), wake=svc.wake,
        # in this order after each pass: sign a checkpoint, then deliver it with the
        # pass's bundles; stopped before the closers, while the store is still open
        companions=(CheckpointOnPass(svc.checkpointer), svc.link,
                    *([svc.wakeups] if svc.wakeups else [])),
        background=(_daily_prune(Pruner(svc.writer, RetentionPolicy.from_config(cfg))),),
        closers=(svc.close,),
        health_inputs=(svc.recorder,),  # evidence that cannot be written fails the host
        watches=watch_factories(cfg),
        watch_state=_watch_state_recorder(svc.agent.store),
    )
    svc.agent.metrics.registry.register(daemon.health_collector())
    return daemon


def _watch_state_recorder(store: Store) -> Callable[[dict[str, object]], None]:
    """`status` reads the watches' health from the meta table (it does not ask the daemon)."""
    from reconciler.store.meta import MetaStore

    meta = MetaStore(store)
    return lambda state: meta.put(WATCHES_STATE_KEY, json.dumps(state))


PRUNE_INTERVAL = 24 * 3600.0


def _daily_prune(pruner: Pruner) -> Callable[[], None]:
    """Evidence retention once a day from the daemon too (the NixOS timer runs
    `evidence prune` as well; both share one chain through SQLite's write lock)."""
    next_at = [time.monotonic() + 600.0]  # not during start-up

    def job() -> None:
        if time.monotonic() < next_at[0]:
            return
        next_at[0] = time.monotonic() + PRUNE_INTERVAL
        result = pruner.prune()
        log.info("evidence pruned", extra={"reason": "Retention",
                                           "detail": json.dumps(result.to_json())[:300]})

    return job
