"""Agent configuration: the JSON file the NixOS module writes.

Keys are the NixOS option names (camelCase). Unknown keys are rejected so a
typo in the module or a hand-written file never silently falls back to a
default. Secrets appear only as file paths; their contents are never read here.
"""

from __future__ import annotations

import json
import re
import socket
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from specs.errors import ComplianceAgentError

WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
HEX_KEY_RE = re.compile(r"^[0-9a-f]{64}$")


class DeploymentMode(StrEnum):
    reseller = "reseller"
    direct = "direct"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


PositiveSeconds = Annotated[int, Field(gt=0)]


class AgentConfig(BaseModel):
    """Every option of `services.compliance-agent` that the agent reads.

    Field docs double as the option descriptions (see docs/options and the
    module test that checks the option list, this model and the docs agree).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    enable: bool = Field(False, description="Whether the agent runs.")
    site_id: str = Field(
        min_length=1, description="Site (clinic) identifier assigned by the control plane."
    )
    host_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Host identifier; defaults to the machine's hostname.",
    )
    baseline_path: Path = Field(
        description="Local baseline JSON file (from the NixOS config); the fallback when "
        "the control plane has no newer signed baseline."
    )
    client_cert_file: Path = Field(description="mTLS client certificate (PEM) path.")
    client_key_file: Path = Field(description="mTLS client private key (PEM) path; mode 0600/0400.")
    signing_key_file: Path = Field(
        description="Ed25519 private key that signs evidence; mode 0600/0400."
    )
    ca_cert_file: Path = Field(
        description="CA certificate the control plane's server certificate must chain to."
    )
    mcp_public_keys: list[str] = Field(
        min_length=1,
        description="Hex-encoded 32-byte Ed25519 public keys trusted for orders and baselines "
        "(more than one allows key rotation).",
    )
    mcp_url: str = Field("https://mcp.local", description="Control plane base URL (https).")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["mcp.local"],
        description="Host names the egress allowlist resolves; the only HTTPS destinations.",
    )
    nats_url: str | None = Field(
        None,
        description="Optional NATS server 'tls://host:port' (port 4222 if omitted) for order "
        "wake-ups: the agent keeps one outbound TLS connection with its client certificate and "
        "caCertFile, and a wake-up only makes it poll orders over HTTPS now. Its host must be in "
        "allowedHosts; null disables it (orders still arrive every pollInterval).",
    )
    deployment_mode: DeploymentMode = Field(
        DeploymentMode.reseller,
        description="'reseller' (MSP: webhook + syslog integrations) or 'direct'.",
    )
    reseller_id: str | None = Field(None, description="MSP identifier; required in reseller mode.")
    policy_version: str = Field("1.0", description="Compliance policy version stamped in evidence.")
    poll_interval: PositiveSeconds = Field(
        60, description="Seconds between reconcile passes (+-10% jitter)."
    )
    order_ttl: PositiveSeconds = Field(
        900, description="Maximum order lifetime in seconds, whatever the order asks for."
    )
    maintenance_window: str = Field(
        "02:00-04:00",
        description="UTC window 'HH:MM-HH:MM' for disruptive actions; may cross midnight.",
    )
    allow_disruptive_outside_window: bool = Field(
        False, description="Allow disruptive actions outside the maintenance window."
    )
    evidence_retention: int = Field(
        200, ge=1, description="Minimum number of newest evidence bundles kept by pruning."
    )
    prune_retention_days: int = Field(
        90, ge=0, description="Evidence younger than this many days is never pruned."
    )
    ntp_max_skew_ms: int = Field(
        5000, gt=0, description="Clock offset above which disruptive actions are skipped; also "
        "the time resource's ClockSkewed limit unless the baseline sets time.max_skew_ms."
    )
    rebuild_health_check_timeout: PositiveSeconds = Field(
        60, description="Seconds the system has to reach 'running' after a rebuild."
    )
    rmm_webhook_url: str | None = Field(
        None, description="Reseller RMM webhook URL (reseller mode only)."
    )
    syslog_target: str | None = Field(
        None,
        description="RFC 5424 syslog target: 'tls://host:6514' (RFC 5425, TLS 1.2+, the "
        "collector's certificate checked against syslogCaFile and the host name), "
        "'tcp://host:port' (octet counting, RFC 6587) or 'udp://host:port'.",
    )
    syslog_ca_file: Path | None = Field(
        None,
        description="CA certificate (PEM, public) the syslog collector's certificate must chain "
        "to; required for a tls:// syslogTarget and only then used. Pinned: the system trust "
        "store is not consulted. The MSP's own CA usually, not necessarily caCertFile.",
    )
    webhook_secret_file: Path | None = Field(
        None, description="File holding the HMAC secret for the RMM webhook."
    )
    log_level: LogLevel = Field(LogLevel.INFO, description="Log verbosity.")

    # Beyond the seed list: where the agent keeps things and how it is reached.
    state_directory: Path = Field(
        Path("/var/lib/compliance-agent"),
        description="State directory (SQLite store, evidence files); mode 0700.",
    )
    status_socket: Path | None = Field(
        Path("/run/compliance-agent/status.sock"),
        description="Unix socket serving /metrics and /status (mode 0660); null disables it. "
        "The agent never listens on TCP or UDP.",
    )
    actuator_socket: Path | None = Field(
        None,
        description="Unix socket of the privileged actuator; null runs actions in-process "
        "(the NixOS module sets /run/compliance-agent-actuator/actuator.sock, in a "
        "root-owned directory).",
    )
    metrics_textfile: Path | None = Field(
        None,
        description="Prometheus textfile written atomically after every pass; null disables it.",
    )
    egress_table: str = Field(
        "compliance_egress",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="nftables 'inet' table holding the egress allowlist sets.",
    )
    workers: int = Field(2, ge=1, le=16, description="Concurrent reconcile workers.")
    watches: bool = Field(
        True, description="Reconcile a kind as soon as a unit or file it depends on changes "
        "(systemd bus, inotify); the periodic pass stays. False: polling only."
    )
    evidence_snapshot_interval: PositiveSeconds = Field(
        3600, description="Seconds between periodic evidence snapshots per resource."
    )

    @field_validator("maintenance_window")
    @classmethod
    def _window_format(cls, v: str) -> str:
        if not WINDOW_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a UTC window 'HH:MM-HH:MM' (e.g. '02:00-04:00'; may cross midnight)"
            )
        start, end = v.split("-")
        if start == end:
            raise ValueError(f"{v!r} is an empty window: start and end must differ")
        return v

    @field_validator("mcp_public_keys")
    @classmethod
    def _hex_keys(cls, v: list[str]) -> list[str]:
        out = []
        for i, k in enumerate(v):
            k = k.strip().lower()
            if not HEX_KEY_RE.fullmatch(k):
                raise ValueError(
                    f"entry {i} is not a hex-encoded 32-byte Ed25519 public key "
                    "(64 hex characters, as printed by 'compliance-agent keygen')"
                )
            out.append(k)
        return out

    @field_validator("mcp_url")
    @classmethod
    def _https_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"{v!r} must be an https:// URL with a host name")
        return v.rstrip("/")

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if "@" in parts.netloc:  # never echo what may be a password
            raise ValueError("natsUrl must not carry credentials (the client certificate "
                             "authenticates the agent); use 'tls://host:port'")
        try:
            port = parts.port
        except ValueError:
            port = None
            parts = parts._replace(netloc="")  # an out-of-range port: report below
        if (parts.scheme != "tls" or not parts.hostname or parts.path not in ("", "/")
                or parts.query or parts.fragment or parts.username or parts.password
                or (port is None and ":" in parts.netloc.rsplit("]", 1)[-1])):
            raise ValueError(
                f"{v!r} must look like 'tls://nats.example.net:4222' (TLS only, no credentials "
                "in the URL: the client certificate authenticates the agent)")
        return v.rstrip("/")

    @field_validator("syslog_target")
    @classmethod
    def _syslog_target(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if "@" in parts.netloc:  # never echo what may be a password
            raise ValueError("syslogTarget must not carry credentials; use 'tls://host:6514', "
                             "'tcp://host:514' or 'udp://host:514'")
        try:
            port = parts.port
        except ValueError:
            port = None
        if (parts.scheme not in ("tcp", "udp", "tls") or not parts.hostname or not port
                or parts.path not in ("", "/")
                or parts.query or parts.fragment):
            raise ValueError(
                f"{v!r} must look like 'tls://host:6514', 'tcp://host:514' or 'udp://host:514'"
            )
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> AgentConfig:
        if self.deployment_mode is DeploymentMode.reseller and not self.reseller_id:
            raise ValueError(
                "resellerId is required when deploymentMode is 'reseller' "
                "(set resellerId, or deploymentMode = 'direct')"
            )
        host = urlsplit(self.mcp_url).hostname
        if host not in self.allowed_hosts:
            raise ValueError(
                f"the mcpUrl host {host!r} is not in allowedHosts {self.allowed_hosts}: "
                "the egress allowlist would block the control plane; add it to allowedHosts"
            )
        nats_host = urlsplit(self.nats_url).hostname if self.nats_url else None
        if nats_host is not None and nats_host not in self.allowed_hosts:
            raise ValueError(
                f"the natsUrl host {nats_host!r} is not in allowedHosts {self.allowed_hosts}: "
                "the egress allowlist would block order wake-ups; add it to allowedHosts"
            )
        if self.rmm_webhook_url and not self.webhook_secret_file:
            raise ValueError("rmmWebhookUrl needs webhookSecretFile (the HMAC secret's path)")
        syslog_tls = bool(self.syslog_target and self.syslog_target.startswith("tls://"))
        if syslog_tls and self.syslog_ca_file is None:
            raise ValueError(
                "a tls:// syslogTarget needs syslogCaFile: the CA certificate that signs the "
                "syslog collector's certificate (the only CA trusted for it)"
            )
        if self.syslog_ca_file is not None and not syslog_tls:
            raise ValueError("syslogCaFile is only used with a tls:// syslogTarget")
        return self

    @property
    def database_path(self) -> Path:
        return self.state_directory / "state.db"

    @property
    def evidence_directory(self) -> Path:
        return self.state_directory / "evidence"


class ConfigError(ComplianceAgentError):
    """The configuration file is missing, unreadable or invalid.

    `problems` lists one human-readable line per offending key.
    """

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


def format_validation_error(err: ValidationError) -> list[str]:
    """One line per problem: `key: message` with the camelCase key path."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown option (typo? see 'compliance-agent config options')"
        elif e["type"] == "missing":
            msg = "required option is not set"
        lines.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return lines


def parse_config(data: Any, path: Path = Path("<memory>")) -> AgentConfig:
    if not isinstance(data, dict):
        raise ConfigError(path, ["(top level): must be a JSON object of option names"])
    try:
        return AgentConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as err:
        raise ConfigError(path, format_validation_error(err)) from None


def load_config(path: Path) -> AgentConfig:
    """Read and validate the agent's JSON config; raises ConfigError with every problem."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, [f"cannot read: {e.strerror}"]) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON: {e.msg} at line {e.lineno} col {e.colno}"
        raise ConfigError(path, [problem]) from None
    return parse_config(data, path)


def option_names() -> list[str]:
    """The camelCase option names, in declaration order."""
    return [f.alias or name for name, f in AgentConfig.model_fields.items()]
