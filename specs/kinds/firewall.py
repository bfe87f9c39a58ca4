from __future__ import annotations

from pydantic import Field

from specs.resource import ResourceSpec


class FirewallSpec(ResourceSpec):
    """The nftables ruleset must equal the baseline ruleset file (normalized)."""

    ruleset_path: str = Field(description="Path of the baseline ruleset file (nft -f syntax).")
    ruleset_sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the ruleset file's bytes; a file that does not match is "
        "never applied.",
    )
