from __future__ import annotations

import re

from pydantic import Field, field_validator

from specs.resource import ResourceSpec

_FAMILY = r"(ip|ip6|inet|arp|bridge|netdev)"
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TABLE_REF_RE = re.compile(rf"^{_FAMILY} {_IDENT}$")
SET_REF_RE = re.compile(rf"^{_FAMILY} {_IDENT} {_IDENT}$")


class FirewallSpec(ResourceSpec):
    """The nftables ruleset must equal the baseline ruleset file (normalized)."""

    ruleset_path: str = Field(description="Path of the baseline ruleset file (nft -f syntax).")
    ruleset_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the ruleset file's bytes; a file that does not match is "
        "never applied.",
    )
    unmanaged_tables: list[str] = Field(
        default_factory=list,
        description="Tables owned by something else, as 'family name' (e.g. 'inet "
        "compliance_egress'): left out of the comparison on both sides.",
    )
    unmanaged_set_elements: list[str] = Field(
        default_factory=list,
        description="Sets whose elements another controller maintains, as 'family table set' "
        "(e.g. 'inet filter allowed_v4'): the set is compared, its elements are not.",
    )
    reapply_backoff_base: float = Field(
        10.0, gt=0, description="Seconds before a ruleset re-applied once may be re-applied "
        "again (the wait doubles with each attempt in a row)."
    )
    reapply_backoff_cap: float = Field(
        900.0, gt=0, description="Upper bound of that wait, in seconds: the longest a firewall "
        "flushed over and over stays down between re-applications. The attempts are forgotten "
        "after this long without one."
    )

    @field_validator("unmanaged_tables")
    @classmethod
    def _tables(cls, v: list[str]) -> list[str]:
        for t in v:
            if not TABLE_REF_RE.fullmatch(t):
                raise ValueError(f"{t!r} is not 'family table', e.g. 'inet compliance_egress'")
        return v

    @field_validator("unmanaged_set_elements")
    @classmethod
    def _sets(cls, v: list[str]) -> list[str]:
        for s in v:
            if not SET_REF_RE.fullmatch(s):
                raise ValueError(f"{s!r} is not 'family table set', e.g. 'inet filter allowed'")
        return v
