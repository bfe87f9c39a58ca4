"""Egress allowlist: the nftables sets that say where HTTPS may go.

The NixOS module owns the table and its policy (output chain, policy drop;
only DNS, NTP, and tcp/443 to the two sets leave the host). The agent only
keeps the sets' contents equal to the current DNS answers for `hosts`. A name
that does not resolve contributes nothing: the allowlist fails closed.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator

from specs.resource import ResourceSpec

NFT_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
# RFC 1123 host names (labels of letters, digits, hyphens; no leading hyphen,
# so a name can never be taken for a getent option).
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def check_host_name(v: str) -> str:
    """A DNS host name or an IP literal, lower-cased; raises ValueError otherwise."""
    v = v.strip().lower()
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(v):
        raise ValueError(f"{v!r} is not a host name like 'mcp.example.org' or an IP address")
    return v.rstrip(".")


class EgressSpec(ResourceSpec):
    """The allowlist sets of table `inet <table>` must hold exactly the addresses
    that `hosts` resolve to right now (IPv4 in `set_v4`, IPv6 in `set_v6`)."""

    hosts: list[str] = Field(
        default_factory=list,
        description="Host names whose addresses may be reached over HTTPS. Empty: the agent "
        "uses the config option allowedHosts (see with_config_defaults).",
    )
    table: str = Field(
        "compliance_egress",
        pattern=NFT_IDENT,
        description="nftables 'inet' table declared by the NixOS module. Left unset, the "
        "config option egressTable is used.",
    )
    set_v4: str = Field("allowed_v4", pattern=NFT_IDENT, description="ipv4_addr interval set.")
    set_v6: str = Field("allowed_v6", pattern=NFT_IDENT, description="ipv6_addr interval set.")
    resolve_timeout: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Seconds one lookup (one name, one family) may take; slower counts as a "
        "failed resolution.",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for name in v:
            name = check_host_name(name)
            if name not in out:
                out.append(name)
        return out

    def with_config_defaults(self, allowed_hosts: list[str], egress_table: str) -> EgressSpec:
        """The effective spec: config `allowedHosts` when `hosts` is empty, and config
        `egressTable` when the baseline did not name a table itself."""
        update: dict[str, object] = {}
        if not self.hosts:
            update["hosts"] = list(allowed_hosts)  # validated (and deduplicated) below
        if "table" not in self.model_fields_set:
            update["table"] = egress_table
        if not update:
            return self
        return type(self).model_validate({**self.model_dump(), **update})
