"""`compliance-agent config check`: everything the daemon would refuse at start.

Checked, each failure with what is wrong, where, and what to do:

* the config file parses (every problem with its option name);
* private key files (signingKeyFile, clientKeyFile, webhookSecretFile): a
  regular file, no group/other access, owned by the agent's user (or root if
  the agent runs as root), the same rule `reconciler.trust.keys` applies;
* contents parse: the signing key (seed or PKCS#8 PEM Ed25519, the daemon's
  own parser), the CA and client certificates (PEM, not expired), and the
  client key matching the client certificate (the TLS library loads the pair
  as the control-plane client does); the webhook secret is not empty;
* the baseline parses, and every kind in it has a controller.

Whose view: ownership is judged for the user the daemon runs as (`--user`;
default `compliance-agent` when that account exists, else whoever runs the
check), so an administrator checking with sudo is not told to chown the key
to root, which would lock the daemon out. Contents the invoking user cannot
read are reported as not checked, with the command that can check them.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import stat
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.common import CONFIG_HELP, add_output_option, config_path

if TYPE_CHECKING:  # pydantic loads only when a check runs: `status` shares this parser
    from specs.config import AgentConfig

SERVICE_USER = "compliance-agent"
EXIT_OK, EXIT_REFUSED = 0, 2


@dataclass(frozen=True)
class Finding:
    severity: str  # error: the daemon refuses or fails; warning: could not check
    option: str
    where: str
    problem: str
    fix: str


@dataclass(frozen=True)
class Account:
    name: str
    uid: int

    @classmethod
    def resolve(cls, name: str | None) -> Account:
        """The daemon's user: `name`, else compliance-agent if it exists, else the caller."""
        if name is None:
            try:
                entry = pwd.getpwnam(SERVICE_USER)
            except KeyError:
                entry = pwd.getpwuid(os.geteuid())
        else:
            entry = pwd.getpwnam(name)
        return cls(entry.pw_name, entry.pw_uid)


def on_nixos() -> bool:
    return Path("/etc/NIXOS").exists()


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _secret_fix(option: str, path: Path, agent: Account, what: str) -> str:
    if on_nixos():
        return (f"in the NixOS configuration give the secret to the agent: e.g. with sops-nix "
                f'sops.secrets."<name>".owner = "{agent.name}"; mode = "0400"; then '
                f"nixos-rebuild switch (files under /run/secrets are re-created on activation, "
                f"so a chown by hand does not last; never chown it to yourself or root)")
    return f"{what} {path}"


def check_private_file(option: str, path: Path, agent: Account) -> list[Finding]:
    """Mode and owner of a secret file, judged for the agent's user."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        fix = ("create it with 'compliance-agent keygen --out PATH'" if option == "signingKeyFile"
               else "point the option at the file that holds it, or create it")
        return [Finding("error", option, str(path), "no such file", fix)]
    except OSError as e:
        return [Finding("warning", option, str(path), f"cannot stat: {e.strerror}",
                        f"run the check as the agent: sudo -u {agent.name} compliance-agent "
                        "config check")]
    out: list[Finding] = []
    if not stat.S_ISREG(st.st_mode):
        out.append(Finding("error", option, str(path), "not a regular file",
                           "point the option at the key file itself"))
        return out
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        out.append(Finding(
            "error", option, str(path),
            f"mode {mode:04o} lets group/others access a private secret (the agent refuses it)",
            _secret_fix(option, path, agent, "chmod 0600")))
    if st.st_uid != agent.uid and not (st.st_uid == 0 and agent.uid == 0):
        if st.st_uid == 0:
            problem = (f"owned by root with no group/other access: the agent, running as "
                       f"{agent.name}, cannot read it")
        else:
            problem = (f"owned by {_owner_name(st.st_uid)}, but the agent runs as {agent.name} "
                       "and refuses a key another user owns")
        out.append(Finding("error", option, str(path), problem,
                           _secret_fix(option, path, agent, f"chown {agent.name}")))
    return out


def _read(option: str, path: Path, agent: Account) -> tuple[bytes | None, list[Finding]]:
    try:
        return path.read_bytes(), []
    except PermissionError:
        who = _owner_name(os.geteuid())
        return None, [Finding(
            "warning", option, str(path), f"contents not checked: {who} cannot read the file",
            f"run the check as the agent: sudo -u {agent.name} compliance-agent config check")]
    except OSError as e:
        return None, [Finding("error", option, str(path), f"cannot read: {e.strerror}",
                              "check the path")]


def _read_secret(option: str, path: Path, agent: Account) -> tuple[bytes | None, list[Finding]]:
    """Contents of a secret file that passed `check_private_file`. Run as the agent's
    user, this is the daemon's own read (reconciler.trust.keys: fstat on the open file,
    size cap), so anything it would refuse beyond mode and owner shows up too."""
    from reconciler.trust.keys import KeyFileError, read_private_key_file

    if os.geteuid() != agent.uid:
        return _read(option, path, agent)
    try:
        return read_private_key_file(path), []
    except KeyFileError as e:
        return None, [Finding("error", option, str(path), e.problem,
                              _secret_fix(option, path, agent, "fix the file at"))]


def check_signing_key(cfg: AgentConfig, agent: Account) -> list[Finding]:
    from reconciler.trust.keys import KeyFileError, parse_private_key

    path = cfg.signing_key_file
    out = check_private_file("signingKeyFile", path, agent)
    if out:
        return out
    data, problems = _read_secret("signingKeyFile", path, agent)
    if data is not None:
        try:
            parse_private_key(path, data)
        except KeyFileError as e:
            problems.append(Finding("error", "signingKeyFile", str(path), e.problem,
                                    "replace it with a key from 'compliance-agent keygen --out "
                                    "PATH' (or 'openssl genpkey -algorithm ed25519')"))
    return out + problems


def _check_certificates(option: str, path: Path, agent: Account,
                        now: datetime) -> list[Finding]:
    from cryptography import x509

    data, problems = _read(option, path, agent)
    if data is None:
        return problems
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        return [Finding("error", option, str(path), "no PEM certificate in the file "
                        "(empty, truncated, or not PEM)",
                        "point the option at the PEM certificate file")]
    out = []
    for cert in certs:
        if cert.not_valid_after_utc < now:
            out.append(Finding("error", option, str(path),
                               f"certificate {cert.subject.rfc4514_string()} expired on "
                               f"{cert.not_valid_after_utc:%Y-%m-%d}",
                               "renew it (the control plane will refuse the connection)"))
    return out


def check_tls(cfg: AgentConfig, agent: Account, now: datetime) -> list[Finding]:
    out = check_private_file("clientKeyFile", cfg.client_key_file, agent)
    out += _check_certificates("caCertFile", cfg.ca_cert_file, agent, now)
    out += _check_certificates("clientCertFile", cfg.client_cert_file, agent, now)
    if any(f.severity == "error" or "not checked" in f.problem for f in out):
        return out
    key, problems = _read_secret("clientKeyFile", cfg.client_key_file, agent)
    if key is None:
        return out + problems
    import ssl  # here: `config` shares the parser with `status`, which must start fast

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(str(cfg.client_cert_file), str(cfg.client_key_file))
    except (ssl.SSLError, OSError) as e:
        reason = getattr(e, "reason", None) or str(e)
        out.append(Finding("error", "clientKeyFile", str(cfg.client_key_file),
                           f"the key does not load with clientCertFile {cfg.client_cert_file} "
                           f"({reason}): empty, not PEM, encrypted, or not the certificate's key",
                           "install the unencrypted PEM private key that belongs to the client "
                           "certificate"))
    return out


def check_webhook_secret(cfg: AgentConfig, agent: Account) -> list[Finding]:
    path = cfg.webhook_secret_file
    if path is None:
        return []
    out = check_private_file("webhookSecretFile", path, agent)
    if out:
        return out
    data, problems = _read_secret("webhookSecretFile", path, agent)
    if data is not None and not data.strip():
        problems.append(Finding("error", "webhookSecretFile", str(path), "the file is empty",
                                "put the shared HMAC secret the RMM expects in it"))
    return out + problems


def check_baseline(cfg: AgentConfig) -> list[Finding]:
    from reconciler.runtime.registry import BUILTIN
    from specs.baseline import BaselineError, load_baseline

    where = str(cfg.baseline_path)
    try:
        baseline = load_baseline(cfg.baseline_path)
    except BaselineError as e:
        return [Finding("error", "baselinePath", where, p,
                        "fix the baseline; kinds and fields are in schemas/ (JSON Schema)")
                for p in e.problems]
    return [Finding("error", "baselinePath", where, f"kind {kind!r} has no controller",
                    f"known kinds: {', '.join(BUILTIN)}")
            for kind in baseline.resources() if kind not in BUILTIN]


def check(path: Path, agent: Account, now: datetime) -> tuple[AgentConfig | None, list[Finding]]:
    """Every finding for the config at `path` (no side effects)."""
    from specs.config import ConfigError, load_config

    try:
        cfg = load_config(path)
    except ConfigError as e:
        return None, [Finding("error", p.split(":", 1)[0], str(path),
                              p.split(":", 1)[1].strip() if ":" in p else p,
                              "see 'compliance-agent config options'") for p in e.problems]
    findings = check_signing_key(cfg, agent)
    findings += check_tls(cfg, agent, now)
    findings += check_webhook_secret(cfg, agent)
    findings += check_baseline(cfg)
    return cfg, findings


def cmd_config_check(args: argparse.Namespace) -> int:
    path = config_path(args.file or args.config)
    try:
        agent = Account.resolve(args.user)
    except KeyError:
        print(f"compliance-agent: --user {args.user!r}: no such user", file=sys.stderr)
        return EXIT_REFUSED
    cfg, findings = check(path, agent, datetime.now(UTC))
    errors = [f for f in findings if f.severity == "error"]
    if args.output == "json":
        print(json.dumps({"config": str(path), "agent_user": agent.name, "ok": not errors,
                          "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{f.severity.upper():7} {f.option}: {f.problem}\n"
                  f"        where: {f.where}\n        fix: {f.fix}", file=sys.stderr)
        if cfg is not None and not errors:
            print(f"{path}: ok (site {cfg.site_id}, host {cfg.host_id}, mode "
                  f"{cfg.deployment_mode.value}, window {cfg.maintenance_window} UTC; checked "
                  f"as the agent's user {agent.name})")
        elif errors:
            print(f"{path}: {len(errors)} problem(s) the agent would refuse to start with",
                  file=sys.stderr)
    return EXIT_REFUSED if errors else EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default=None, help=CONFIG_HELP)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="the same as FILE, as every other command spells it")
    add_output_option(parser, help="text: findings for people; json: one object with "
                                   "every finding, for CI")
    parser.add_argument("--user", default=None,
                        help=f"the user the daemon runs as (default: {SERVICE_USER} if that "
                             "account exists, else you)")
