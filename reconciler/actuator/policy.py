"""What the root actuator allows, decided from its own inputs only.

The agent is assumed compromised: nothing in a request is taken as a
permission. `ActuatorPolicy.check` answers None (run it) or a
`PolicyDecision` (refuse, with a stable reason), in this order:

* a unit action (start, restart, enable, backup) must name a unit listed by a
  unit-bearing kind of the governing baseline (services, av_edr, logging, backup);
* `ApplyNftRuleset` must name exactly the baseline firewall file and hash
  (the bytes are then hashed again and piped to `nft -f -`, see
  reconciler.actuator.local);
* `UpdateEgressSet` must target the configured egress table and one of its
  two sets, and every element must be a single address that the actuator's
  OWN resolution of the allowed host names (the baseline's egress hosts, or
  the config's `allowedHosts`) returned for that family. The actuator
  resolves through the same system resolver (NSS) the agent's `getent`
  uses, so an honest request matches; one it cannot vouch for is refused
  and the next pass retries (fail closed), instead of trusting the agent's
  answer or applying something other than what the agent recorded;
* `NixosRebuild` must target a system the baseline's patching spec names
  (a rollback exists only inside that transaction: there is no Rollback action);
* what is disruptive is this module's call (`is_disruptive`): a rebuild
  always, a restart of a unit in `DISRUPTIVE_UNITS` or of the baseline's
  journald unit always, whatever the request's `disruptive` flag says (the
  flag can only make an action stricter); disruptive actions run only inside
  the maintenance window unless `allowDisruptiveOutsideWindow` is set.

`check_observe` maps an allowlisted privileged read to the argv root runs
(nft listings, LUKS headers, the ruleset sandbox, and the backup reads of
reconciler.actuator.backup_reads).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Any, Protocol

from reconciler.actuator.backup_reads import (
    allowed_backup_read,
    backup_read_timeout,
    is_backup_read,
)
from reconciler.actuator.devices import BlockDevices
from reconciler.actuator.protocol import (
    MAX_BACKUP_READ_TIMEOUT,
    MAX_OBSERVE_TIMEOUT,
    PolicyDecision,
    Refusal,
)
from specs.actions import (
    UNIT_RE,
    Action,
    ApplyNftRuleset,
    EnableUnit,
    NixosRebuild,
    RestartUnit,
    RunBackup,
    StartUnit,
    UpdateEgressSet,
)
from specs.baseline import Baseline
from specs.window import MaintenanceWindow

# Baseline kinds whose specs name systemd units the actuator may act on.
UNIT_KINDS = ("services", "av_edr", "logging", "backup")
EGRESS_SETS = {"allowed_v4": 4, "allowed_v6": 6}
NFT_SANDBOX_MODULE = "reconciler.actuator.nft_sandbox"
NFT_SANDBOX_SCRIPT = "nft_sandbox.py"
DEVICE_READS = (
    ["blkid", "-p", "-o", "export"], ["cryptsetup", "isLuks"], ["cryptsetup", "luksDump"]
)
# Restarting these interrupts the host for its users (logging, logins, the
# system bus, networking, builds): disruptive whatever the request claims.
DISRUPTIVE_UNITS = frozenset({
    "systemd-journald.service", "dbus.service", "dbus-broker.service",
    "systemd-logind.service", "systemd-networkd.service", "systemd-resolved.service",
    "NetworkManager.service", "nix-daemon.service",
})
RESOLVE_TIMEOUT = 5.0  # seconds for all lookups of one egress check


class Resolver(Protocol):
    def addresses(self, names: list[str], version: int) -> set[str]:
        """Canonical addresses of `version` the names resolve to now; failures add nothing."""
        ...


class SystemResolver:
    """getaddrinfo (NSS, like the agent's `getent ahostsv4|ahostsv6`), bounded in time."""

    def __init__(self, timeout: float = RESOLVE_TIMEOUT) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="egress-resolve")

    def addresses(self, names: list[str], version: int) -> set[str]:
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        futures = [self._pool.submit(_lookup, n, family) for n in names]
        out: set[str] = set()
        for f in futures:
            try:
                out |= f.result(timeout=self.timeout)
            except (FutureTimeout, OSError, UnicodeError):
                continue  # fail closed: a name nobody can vouch for allows nothing
        return out


def _lookup(name: str, family: int) -> set[str]:
    infos = socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
    return {str(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos}


def is_sandbox_request(argv: list[str]) -> bool:
    """The ruleset sandbox as the agent starts it (`python -m MODULE` or `python -I
    .../nft_sandbox.py`, then `--sha256 HEX PATH`). Only the last two arguments are
    used: the actuator runs its own interpreter and its own copy of the script."""
    head = argv[:-3]
    return len(argv) in (6, 7) and argv[-3] == "--sha256" and (
        head[1:] == ["-m", NFT_SANDBOX_MODULE]
        or (head[1:2] == ["-I"] and len(head) == 3 and head[2].endswith("/" + NFT_SANDBOX_SCRIPT)
            and "reconciler/actuator/" in head[2])
    )


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a dumped spec (kinds differ in shape; walking is shape-agnostic)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def baseline_units(baseline: Baseline) -> set[str]:
    units: set[str] = set()
    for kind in UNIT_KINDS:
        spec = getattr(baseline, kind, None)
        if spec is not None:
            units.update(s for s in _strings(spec.model_dump()) if UNIT_RE.fullmatch(s))
    return units


def baseline_rebuild_targets(baseline: Baseline) -> set[str]:
    """The systems a rebuild may switch to: the patching spec's `target`."""
    spec = baseline.patching
    target = getattr(spec, "target", None) if spec is not None else None
    return {target} if isinstance(target, str) and target else set()


def is_disruptive(action: Action, baseline: Baseline) -> bool:
    """The actuator's own table; the request's flag can only add to it."""
    if isinstance(action, NixosRebuild):
        return True
    if isinstance(action, RestartUnit):
        journald = baseline.logging.journald_unit if baseline.logging else None
        if action.unit in DISRUPTIVE_UNITS or action.unit == journald:
            return True
    return action.disruptive


class ActuatorPolicy:
    def __init__(
        self,
        *,
        egress_table: str,
        allowed_hosts: Iterable[str],
        window: MaintenanceWindow,
        allow_disruptive_outside_window: bool,
        clock: Callable[[], datetime],
        resolver: Resolver,
        devices: BlockDevices,
    ) -> None:
        self.egress_table = egress_table
        self.allowed_hosts = list(allowed_hosts)
        self.window = window
        self.allow_disruptive_outside_window = allow_disruptive_outside_window
        self.clock = clock
        self.resolver = resolver
        self.devices = devices

    def check(self, action: Action, baseline: Baseline) -> PolicyDecision | None:
        """None if the action may run now; otherwise why not."""
        decision = self._target_allowed(action, baseline)
        if decision is not None:
            return decision
        if is_disruptive(action, baseline) and not self.allow_disruptive_outside_window:
            now = self.clock()
            if not self.window.contains(now):
                return PolicyDecision(
                    Refusal.OutsideMaintenanceWindow,
                    f"{action.type} is disruptive and {now:%H:%M} UTC is outside the "
                    f"maintenance window {self.window}; it will run in the window "
                    "(or set allowDisruptiveOutsideWindow)",
                )
        return None

    def check_observe(
        self, argv: list[str], baseline: Baseline, sandbox: list[str]
    ) -> list[str] | PolicyDecision:
        """The argv root runs for a privileged read, or why not.

        `sandbox` is how the actuator itself starts the ruleset sandbox; the
        client's interpreter (argv[0]) is never run, nor a device path as given.
        """
        t = self.egress_table
        fixed = [["nft", "-j", "list", "ruleset"], ["nft", "-j", "list", "table", "inet", t]]
        fixed += [["nft", "-j", "list", "set", "inet", t, name] for name in EGRESS_SETS]
        if argv in fixed:
            return argv
        if argv[:-1] in DEVICE_READS:
            device = self.devices.canonical(argv[-1], self.devices.allowed(baseline.encryption))
            if device is not None:
                return [*argv[:-1], device]  # header metadata only; luksDump prints no keys
        fw = baseline.firewall
        if (is_sandbox_request(argv) and fw is not None and argv[-2] == fw.ruleset_sha256
                and argv[-1] == fw.ruleset_path):
            return [*sandbox, "--sha256", argv[-2], argv[-1]]
        if is_backup_read(argv) and allowed_backup_read(argv, baseline.backup):
            return argv  # root's tool reads the password file; see backup_reads
        return PolicyDecision(
            Refusal.ObservationNotAllowed,
            f"{' '.join(argv)[:200]!r} is not one of the privileged reads the actuator serves "
            "(nft -j list ruleset/table/set of the egress table, the baseline ruleset sandbox, "
            "blkid -p / cryptsetup isLuks|luksDump of a block device the baseline's "
            "encryption spec names, the backup spec's snapshot listing, check and canary "
            "dump of one of its jobs)",
        )

    @staticmethod
    def observe_timeout(
        argv: list[str], requested: float, baseline: Baseline
    ) -> float | PolicyDecision:
        """The time root gives an admitted read, or why not. A backup read gets
        what the agent asked, at most what its job in the verified baseline
        allows (the agent's number never raises it; the two baselines may
        differ for a pass). Any other read is quick: asking more than the
        short cap is refused."""
        allowed = backup_read_timeout(argv, baseline.backup) if is_backup_read(argv) else None
        if allowed is not None:
            return min(requested, allowed, MAX_BACKUP_READ_TIMEOUT)
        if requested > MAX_OBSERVE_TIMEOUT:
            return PolicyDecision(
                Refusal.InvalidParams,
                f"timeout {requested:g} s: reads other than the backup spec's may take at "
                f"most {MAX_OBSERVE_TIMEOUT:g} s",
            )
        return requested

    def _target_allowed(self, action: Action, baseline: Baseline) -> PolicyDecision | None:
        if isinstance(action, StartUnit | RestartUnit | EnableUnit | RunBackup):
            if action.unit not in baseline_units(baseline):
                return PolicyDecision(
                    Refusal.UnitNotInBaseline,
                    f"{action.unit} is not listed by the baseline's "
                    f"{'/'.join(UNIT_KINDS)} specs; add it to the baseline to manage it",
                )
            return None
        if isinstance(action, ApplyNftRuleset):
            fw = baseline.firewall
            if fw and fw.ruleset_path == action.path and fw.ruleset_sha256 == action.sha256:
                return None
            return PolicyDecision(
                Refusal.RulesetNotInBaseline,
                f"{action.path} (sha256 {action.sha256[:12]}...) is not the baseline "
                "firewall ruleset file and hash",
            )
        if isinstance(action, UpdateEgressSet):
            return self._egress(action, baseline)
        if isinstance(action, NixosRebuild):
            if action.target not in baseline_rebuild_targets(baseline):
                return PolicyDecision(
                    Refusal.RebuildTargetNotInBaseline,
                    f"rebuild target {action.target!r} is not named by the baseline's "
                    "patching spec",
                )
            return None
        return PolicyDecision(Refusal.UnknownAction, f"no policy for action {action.type}")

    def _egress(self, action: UpdateEgressSet, baseline: Baseline) -> PolicyDecision | None:
        if action.family != "inet" or action.table != self.egress_table:
            return PolicyDecision(
                Refusal.EgressTableMismatch,
                f"egress updates may only target 'inet {self.egress_table}', "
                f"not '{action.family} {action.table}'",
            )
        version = EGRESS_SETS.get(action.set_name)
        if version is None:
            return PolicyDecision(
                Refusal.EgressTableMismatch,
                f"set {action.set_name!r} is not one of {sorted(EGRESS_SETS)}",
            )
        wrong = [e for e in action.elements if ipaddress.ip_address(e).version != version]
        if wrong:
            return PolicyDecision(
                Refusal.InvalidParams,
                f"{wrong[0]!r} is not an IPv{version} address for set {action.set_name}",
            )
        if not action.elements:
            return None  # emptying the set only ever closes egress
        hosts = list(baseline.egress.hosts) if baseline.egress and baseline.egress.hosts else []
        hosts = hosts or self.allowed_hosts
        literals = {h for h in hosts if _is_ip(h)}
        resolved = {str(ipaddress.ip_address(h)) for h in literals}
        names = [h for h in hosts if h not in literals]
        if names:
            resolved |= self.resolver.addresses(names, version)
        unknown = sorted(set(action.elements) - resolved)
        if unknown:
            return PolicyDecision(
                Refusal.EgressElementNotAllowed,
                f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''} "
                f"{'is' if len(unknown) == 1 else 'are'} not among the IPv{version} addresses "
                f"the actuator itself resolved for the allowed hosts {hosts[:16]}; "
                "refused (the next refresh retries)",
            )
        return None


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
