"""Canonical form of an nftables ruleset (`nft -j list ruleset`), and its digest.

Two listings are "the same firewall" when they filter the same way. So the
canonical form drops what the kernel or traffic changes without changing
behaviour, and keeps what does change behaviour:

dropped                                      kept
-------------------------------------------  ----------------------------------------
metainfo (nft version)                       tables, chains (type, hook, prio, policy,
handles (allocation order)                   devices), sets/maps (type, flags, elements)
counter packets/bytes, quota "used"          rule order within a chain, every expression
set element "expires" (a countdown)          comments (a changed comment is a change)
elements of dynamic/timeout sets (filled by  named objects (counters, quotas, limits,
  rules at runtime, e.g. meters)               ct helpers...) without their live state
order of tables, chains, sets, objects, and
  of elements inside any set (none is semantic)

`unmanaged_tables` ("inet compliance_egress") and `unmanaged_set_elements`
("inet filter allowed_v4") leave out what another controller owns, so two
controllers never fight over the same state.

Pure functions only: the controller feeds them JSON it got through a Host.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from specs.errors import ComplianceAgentError

# Keys whose value is runtime state, not configuration, wherever they occur.
STATE_KEYS = frozenset({"handle", "used", "used_unit", "expires"})
# Counter values; only inside counters: a named quota's "bytes" is its limit.
COUNTER_KEYS = frozenset({"packets", "bytes"})
# Set flags meaning "elements are added by the datapath at runtime".
DYNAMIC_SET_FLAGS = frozenset({"dynamic", "timeout"})
SET_KINDS = ("set", "map")
OBJECT_KINDS = (
    "counter", "quota", "limit", "ct helper", "ct timeout", "ct expectation",
    "secmark", "synproxy", "flowtable",
)  # fmt: skip


class RulesetFormatError(ComplianceAgentError, ValueError):
    """The text is not `nft -j list ruleset` output."""


def _canon(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _strip_state(node: Any) -> Any:
    """Drop runtime state recursively; sort anonymous set literals (order is not semantic)."""
    if isinstance(node, dict):
        out = {k: _strip_state(v) for k, v in node.items() if k not in STATE_KEYS}
        if isinstance(out.get("counter"), dict):  # counter statement / element counter
            out["counter"] = {k: v for k, v in out["counter"].items() if k not in COUNTER_KEYS}
        if isinstance(out.get("set"), list):
            out["set"] = sorted(out["set"], key=_canon)
        return out
    if isinstance(node, list):
        return [_strip_state(v) for v in node]
    return node


def _flags(raw: Any) -> set[str]:
    """Set flags as a set; nft writes one flag as a string, several as a list."""
    if isinstance(raw, str):
        return {raw}
    if isinstance(raw, list):
        return {f for f in raw if isinstance(f, str)}
    return set()


def parse_listing(text: str) -> list[dict[str, Any]]:
    """The object list of `nft -j list ruleset` output ("" = empty ruleset)."""
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RulesetFormatError(f"not JSON at line {e.lineno}: {e.msg}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RulesetFormatError('expected {"nftables": [...]} from `nft -j list ruleset`')
    if not all(isinstance(i, dict) and len(i) == 1 for i in items):
        raise RulesetFormatError("each nftables entry must be an object with exactly one key")
    return items


def normalize(
    items: Iterable[dict[str, Any]],
    unmanaged_tables: Iterable[str] = (),
    unmanaged_set_elements: Iterable[str] = (),
) -> dict[str, Any]:
    """Canonical, order-independent (except rule order) form of a ruleset listing."""
    skip_tables = {" ".join(t.split()) for t in unmanaged_tables}
    skip_elems = {" ".join(s.split()) for s in unmanaged_set_elements}
    tables: list[Any] = []
    chains: list[Any] = []
    sets: list[Any] = []
    objects: list[Any] = []
    rules: dict[str, list[Any]] = {}
    for item in items:
        (kind, body), = item.items()
        if kind == "metainfo" or not isinstance(body, dict):
            continue
        family = body.get("family", "")
        table = body.get("name") if kind == "table" else body.get("table", "")
        if f"{family} {table}" in skip_tables:
            continue
        clean = _strip_state(body)
        if kind == "counter":  # a named counter object: its values are traffic
            clean = {k: v for k, v in clean.items() if k not in COUNTER_KEYS}
        if kind == "table":
            tables.append(clean)
        elif kind == "chain":
            chains.append(clean)
        elif kind == "rule":
            key = f"{family} {table} {body.get('chain', '')}"
            # rule order within a chain is what the packet path follows: keep it
            rules.setdefault(key, []).append(
                {k: v for k, v in clean.items() if k not in ("family", "table", "chain")}
            )
        elif kind in SET_KINDS:
            flags = _flags(body.get("flags"))
            ident = f"{family} {table} {body.get('name', '')}"
            if flags & DYNAMIC_SET_FLAGS or ident in skip_elems:
                clean.pop("elem", None)
            elif isinstance(clean.get("elem"), list):
                clean["elem"] = sorted(clean["elem"], key=_canon)
            sets.append({"kind": kind, **clean})
        else:
            objects.append({"kind": kind, **clean})
    return {
        "tables": sorted(tables, key=_canon),
        "chains": sorted(chains, key=_canon),
        "sets": sorted(sets, key=_canon),
        "objects": sorted(objects, key=_canon),
        "rules": dict(sorted(rules.items())),
    }


def digest(normalized: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a normalized ruleset."""
    return hashlib.sha256(_canon(normalized).encode()).hexdigest()


def summarize_difference(expected: dict[str, Any], live: dict[str, Any]) -> str:
    """A short, operator-readable hint of where two normalized rulesets differ."""
    notes: list[str] = []
    for section in ("tables", "chains", "sets", "objects"):
        exp = {_canon(x) for x in expected.get(section, [])}
        got = {_canon(x) for x in live.get(section, [])}
        if exp != got:
            notes.append(f"{section}: {len(got - exp)} unexpected, {len(exp - got)} missing")
    exp_rules, got_rules = expected.get("rules", {}), live.get("rules", {})
    for chain in sorted(set(exp_rules) | set(got_rules)):
        e, g = exp_rules.get(chain, []), got_rules.get(chain, [])
        if e != g:
            notes.append(f"chain {chain}: {len(g)} rules live vs {len(e)} expected")
    return "; ".join(notes) or "no difference"
