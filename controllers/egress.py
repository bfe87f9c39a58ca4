"""Egress allowlist controller (guardrail 4: DNS refresh, fail closed).

observe: resolves every allowed name through the system resolver
(`getent ahostsv4|ahostsv6 NAME`, i.e. NSS, so it behaves the same in a
container or network namespace) and reads the live sets with
`nft -j list set inet TABLE SET`.

diff: the desired content of each set is the union of the addresses of the
names that resolved *now*. A name that fails contributes nothing, so its
previous addresses are removed (fail closed: an allowlist entry nobody can
vouch for is not kept). A failed name is also an alert-only drift, so the
pass ends with outcome `alert` and the loop keeps running; the next
successful refresh restores it. A missing table is alert-only too: the NixOS
module owns the table and its drop policy, and the agent never creates policy.

plan: one UpdateEgressSet per set whose content differs; it replaces the set
in one nft transaction.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from controllers.base import ControllerBase
from specs.actions import Action, UpdateEgressSet
from specs.drift import Drift, Remedy
from specs.errors import ComplianceAgentError
from specs.host import CommandTimeout, Host, HostError
from specs.kinds.egress import EgressSpec
from specs.watch import WatchTargets

Family = Literal["v4", "v6"]
FAMILIES: tuple[Family, ...] = ("v4", "v6")
GETENT_DB: dict[Family, str] = {"v4": "ahostsv4", "v6": "ahostsv6"}
NFT_TIMEOUT = 10.0
MAX_LOOKUP_THREADS = 8
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REASON_OUT_OF_DATE = "EgressSetOutOfDate"
REASON_RESOLUTION_FAILED = "ResolutionFailed"
REASON_TABLE_MISSING = "EgressTableMissing"
REASON_SET_MISSING = "EgressSetMissing"


class EgressObserveError(ComplianceAgentError):
    """nft could not be asked about the sets (not: the table is missing)."""


# --- parsing -----------------------------------------------------------------


def parse_getent(stdout: str, family: Family) -> list[str]:
    """Addresses of one family from `getent ahostsv4|ahostsv6` output, canonical, sorted.

    Each line is `ADDRESS SOCKTYPE [NAME]`, one per socket type. ahostsv6 answers
    v4-mapped addresses (::ffff:a.b.c.d) for a name without AAAA records; those
    are not IPv6 destinations and are dropped.
    """
    found: set[IPAddress] = set()
    for line in stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            addr = ipaddress.ip_address(fields[0])
        except ValueError:
            continue
        mapped = isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None
        if addr.version == (4 if family == "v4" else 6) and not mapped:
            found.add(addr)
    return [str(a) for a in sorted(found)]


def _element_to_string(elem: Any) -> str:
    # nft -j shows "a.b.c.d", {"prefix": {"addr", "len"}}, {"range": [lo, hi]},
    # or any of these wrapped as {"elem": {"val": ..., "timeout"/"counter": ...}}.
    if isinstance(elem, dict) and "elem" in elem:
        return _element_to_string(elem["elem"].get("val"))
    if isinstance(elem, str):
        return str(ipaddress.ip_address(elem))
    if isinstance(elem, dict) and "prefix" in elem:
        p = elem["prefix"]
        return str(ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False))
    if isinstance(elem, dict) and "range" in elem:
        lo, hi = elem["range"]
        return f"{ipaddress.ip_address(lo)}-{ipaddress.ip_address(hi)}"
    raise ValueError(f"unexpected nft set element {elem!r}")


def parse_nft_set(text: str) -> list[str]:
    """Elements of the single set in `nft -j list set ...` output, as nft syntax strings."""
    try:
        doc = json.loads(text)
        items = [i["set"] for i in doc["nftables"] if "set" in i]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"nft -j output is not the expected JSON ({e})") from None
    if len(items) != 1:
        raise ValueError(f"nft -j output holds {len(items)} sets, expected 1")
    try:
        return [_element_to_string(e) for e in items[0].get("elem", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"cannot parse nft set element: {e}") from None


def intervals(elements: Iterable[str]) -> list[tuple[int, int]]:
    """Merged [lo, hi] integer intervals covered by elements (address, prefix or a-b).

    Comparing coverage instead of strings makes an `auto-merge` set, which shows
    adjacent addresses as one range, equal to the same addresses listed singly.
    """
    raw: list[tuple[int, int]] = []
    for e in elements:
        lo_s, sep, hi_s = e.partition("-")
        if sep:
            raw.append((int(ipaddress.ip_address(lo_s)), int(ipaddress.ip_address(hi_s))))
        else:
            net = ipaddress.ip_network(e, strict=False)
            raw.append((int(net.network_address), int(net.broadcast_address)))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(raw):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


# --- observed model ----------------------------------------------------------


class Lookup(BaseModel):
    """One family's answer for one name."""

    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "not_found", "timeout", "error"]
    addresses: list[str] = []
    detail: str = ""


class NameResolution(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    v4: Lookup
    v6: Lookup

    def lookup(self, family: Family) -> Lookup:
        return self.v4 if family == "v4" else self.v6

    @property
    def addresses(self) -> list[str]:
        return self.v4.addresses + self.v6.addresses

    @property
    def failure(self) -> str | None:
        """Why this name cannot be trusted now, or None.

        No address in either family is a failure (NXDOMAIN, SERVFAIL: getent
        cannot tell them apart). A timeout or error in one family is one too,
        even if the other answered: that family's addresses are unknown.
        """
        broken = [
            f"{f}: {self.lookup(f).status}"
            + (f" ({self.lookup(f).detail})" if self.lookup(f).detail else "")
            for f in FAMILIES
            if self.lookup(f).status in ("timeout", "error")
        ]
        if broken:
            return "; ".join(broken)
        if not self.addresses:
            return "no A or AAAA answer (name not found or resolver failed)"
        return None


class LiveSet(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    present: bool
    elements: list[str] = []


class EgressObserved(BaseModel):
    model_config = ConfigDict(frozen=True)

    table: str
    table_present: bool
    names: list[NameResolution]
    sets: dict[Family, LiveSet]

    def desired(self, family: Family) -> list[str]:
        """Union of the addresses of names that resolved, sorted; failed names add nothing."""
        found: set[IPAddress] = set()
        for n in self.names:
            lk = n.lookup(family)
            if lk.status == "ok":
                found.update(ipaddress.ip_address(a) for a in lk.addresses)
        return [str(a) for a in sorted(found)]

    @property
    def failed(self) -> dict[str, str]:
        return {n.name: f for n in self.names if (f := n.failure) is not None}


# --- controller --------------------------------------------------------------


def _summary(elements: list[str], limit: int = 16) -> str:
    if not elements:
        return "(empty)"
    shown = ", ".join(elements[:limit])
    return shown if len(elements) <= limit else f"{shown}, ... (+{len(elements) - limit} more)"


class EgressController(ControllerBase[EgressSpec, EgressObserved]):
    spec_type = EgressSpec
    kind = "egress"

    def targets(self, spec: EgressSpec) -> WatchTargets:
        return WatchTargets.of(nftables=True)  # its sets live in the ruleset

    def observe(self, host: Host, spec: EgressSpec) -> EgressObserved:
        jobs = [(name, fam) for name in spec.hosts for fam in FAMILIES]
        results: dict[tuple[str, Family], Lookup] = {}
        if jobs:
            # Lookups are independent and mostly wait on the network: in
            # parallel, a pass with dead DNS costs one timeout, not one per name.
            workers = min(MAX_LOOKUP_THREADS, len(jobs))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egress-dns") as pool:
                answers = pool.map(lambda j: resolve(host, j[0], j[1], spec.resolve_timeout), jobs)
                results = dict(zip(jobs, answers, strict=True))
        names = [
            NameResolution(name=n, v4=results[(n, "v4")], v6=results[(n, "v6")])
            for n in spec.hosts
        ]
        sets: dict[Family, LiveSet] = {
            "v4": read_set(host, spec.table, spec.set_v4),
            "v6": read_set(host, spec.table, spec.set_v6),
        }
        present = all(s.present for s in sets.values()) or table_exists(host, spec.table)
        return EgressObserved(table=spec.table, table_present=present, names=names, sets=sets)

    def diff(self, spec: EgressSpec, observed: EgressObserved) -> list[Drift]:
        drifts: list[Drift] = []
        if not observed.table_present:
            drifts.append(
                Drift(
                    field="egress.table",
                    reason=REASON_TABLE_MISSING,
                    expected=f"table inet {spec.table}",
                    actual="absent",
                    message=f"nftables table 'inet {spec.table}' does not exist: egress is not "
                    "restricted. It is declared by the NixOS module (services.compliance-agent."
                    "egressTable); rebuild the system or check networking.nftables.enable.",
                    remedy=Remedy.alert,
                )
            )
        else:
            for fam in FAMILIES:
                live = observed.sets[fam]
                want = observed.desired(fam)
                if not live.present:
                    drifts.append(
                        Drift(
                            field=f"egress.sets.{live.name}",
                            reason=REASON_SET_MISSING,
                            expected=f"set {live.name} in table inet {spec.table}",
                            actual="absent",
                            message=f"set '{live.name}' is missing from table inet "
                            f"{spec.table}; the NixOS module declares it, rebuild the system.",
                            remedy=Remedy.alert,
                        )
                    )
                elif intervals(live.elements) != intervals(want):
                    drifts.append(
                        Drift(
                            field=f"egress.sets.{live.name}",
                            reason=REASON_OUT_OF_DATE,
                            expected=_summary(want),
                            actual=_summary(live.elements),
                            message=f"allowlist set {live.name} differs from the current DNS "
                            "answers of the allowed hosts",
                        )
                    )
        for name, why in observed.failed.items():
            drifts.append(
                Drift(
                    field=f"egress.hosts.{name}",
                    reason=REASON_RESOLUTION_FAILED,
                    expected="resolves to at least one address",
                    actual=why,
                    message=f"{name} did not resolve ({why}); its addresses are not allowed "
                    "until it resolves again. Check the resolver (resolv.conf, DNS server).",
                    remedy=Remedy.alert,
                )
            )
        return drifts

    def plan(self, spec: EgressSpec, observed: EgressObserved, drifts: list[Drift]) -> list[Action]:
        stale = {d.field for d in drifts if d.reason == REASON_OUT_OF_DATE}
        actions: list[Action] = []
        for fam in FAMILIES:
            set_name = observed.sets[fam].name
            if f"egress.sets.{set_name}" in stale:
                actions.append(
                    UpdateEgressSet(
                        table=spec.table,
                        set_name=set_name,
                        family="inet",
                        elements=observed.desired(fam),
                        reason=REASON_OUT_OF_DATE,
                    )
                )
        return actions

    def facts(self, spec: EgressSpec, observed: EgressObserved) -> dict[str, Any]:
        return {
            "egress_table": spec.table,
            "egress_resolved": {n.name: n.addresses for n in observed.names if n.failure is None},
            "egress_failed": observed.failed,
            "egress_element_counts": {s.name: len(s.elements) for s in observed.sets.values()},
        }


# --- host reads --------------------------------------------------------------


def resolve(host: Host, name: str, family: Family, timeout: float) -> Lookup:
    """One getent lookup; every failure is a Lookup status, never an exception."""
    try:
        done = host.run(["getent", GETENT_DB[family], name], timeout=timeout)
    except CommandTimeout:
        return Lookup(status="timeout", detail=f"no answer within {timeout:g}s")
    except HostError as e:  # getent missing, cannot execute, ...
        return Lookup(status="error", detail=str(e))
    if done.exit_code == 2:  # getent: key not found (any getaddrinfo failure)
        return Lookup(status="not_found")
    if done.exit_code != 0:
        return Lookup(
            status="error",
            detail=f"getent exited {done.exit_code}: {done.stderr.strip()[:200]}",
        )
    addresses = parse_getent(done.stdout, family)
    return Lookup(status="ok" if addresses else "not_found", addresses=addresses)


def _nft_missing(stderr: str) -> bool:
    return "No such file or directory" in stderr


def read_set(host: Host, table: str, set_name: str) -> LiveSet:
    argv = ["nft", "-j", "list", "set", "inet", table, set_name]
    done = host.run(argv, timeout=NFT_TIMEOUT)
    if done.exit_code != 0:
        if _nft_missing(done.stderr):
            return LiveSet(name=set_name, present=False)
        raise EgressObserveError(
            f"'{' '.join(argv)}' exited {done.exit_code}: {done.stderr.strip()[:300]} "
            "(the agent needs CAP_NET_ADMIN to read nftables)"
        )
    try:
        return LiveSet(name=set_name, present=True, elements=parse_nft_set(done.stdout))
    except ValueError as e:
        raise EgressObserveError(f"'{' '.join(argv)}': {e}") from None


def table_exists(host: Host, table: str) -> bool:
    argv = ["nft", "-j", "list", "table", "inet", table]
    done = host.run(argv, timeout=NFT_TIMEOUT)
    if done.exit_code == 0:
        return True
    if _nft_missing(done.stderr):
        return False
    raise EgressObserveError(f"'{' '.join(argv)}' exited {done.exit_code}: {done.stderr.strip()}")
