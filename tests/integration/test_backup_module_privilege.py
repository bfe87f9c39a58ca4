"""The backup check under the NixOS module's privilege split, in a real systemd 252 container.

The module's arrangement: the agent runs as the unprivileged `compliance-agent`
user in its exact sandbox; the restic repository (/var/lib/restic-ehr, 0700)
and its password file (/run/secrets/restic-ehr-password, root:root 0400, as
the example declares it with sops-nix) are root's. The backup controller's
reads go to the root actuator (socket-activated by systemd from the module's
units), which runs them only as the baseline's backup spec names them
(reconciler/actuator/backup_reads.py).

Proven here, from inside the agent's unit: fresh and stale are reported
correctly (real restic snapshots, the repository check and the canary restore
pass); the agent can read neither the password file nor the repository; a
read the spec does not name (another password file, `cat config`, a dump of
another file) is refused; the password appears in no output, evidence fact
or journal line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from tests.harness.require import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "root-only backup passphrase 7f3c1d"
CANARY = "compliance-agent backup canary\n"
PW_FILE = "/run/secrets/restic-ehr-password"
RESTIC_REPO = "/var/lib/restic-ehr"

AGENT_PROBE = r"""
import json, sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from controllers.backup import BackupController, snapshots_argv
from reconciler.actuator.client import ActuatorClient, ActuatorRefused
from reconciler.actuator.host import LocalHost
from reconciler.service import host_for
from specs.config import load_config
from specs.kinds.backup import BackupSpec

cfg = load_config(Path(sys.argv[1]))
spec = BackupSpec.model_validate(json.loads(cfg.baseline_path.read_text())["backup"])
job = spec.jobs[0]
host = host_for(cfg)  # what the agent uses: PrivilegedReadHost with the actuator
for label, hours in (("fresh", 0), ("stale", 48)):
    ctl = BackupController(clock=lambda: datetime.now(UTC) + timedelta(hours=hours))
    obs = ctl.observe(host, spec)
    o = obs.jobs[job.name]
    print("RESULT " + label + " " + json.dumps({
        "error": o.error, "snapshot": o.latest.id if o.latest else None,
        "check_ok": o.check.ok if o.check else None,
        "restore_sha": o.restore.actual_sha256 if o.restore else None,
        "drifts": [d.reason for d in ctl.diff(spec, obs)],
        "facts": ctl.facts(spec, obs),
        "plan": [a.type for a in ctl.plan(spec, obs, ctl.diff(spec, obs))],
    }, default=str))
for path in (job.password_file, job.repository + "/config"):
    try:
        Path(path).read_bytes()
        print("READ " + path + " ok")
    except OSError as e:
        print("READ " + path + " " + type(e).__name__)
done = LocalHost().run(snapshots_argv(job), timeout=30)
print("LOCAL exit=%d" % done.exit_code)
client = ActuatorClient(cfg.actuator_socket, timeout=60)
base = snapshots_argv(job)[:7]
attacks = {
    "other-password-file": [a if a != job.password_file else "/etc/shadow"
                            for a in snapshots_argv(job)],
    "cat-config": [*base, "cat", "config"],
    "dump-other-file": [*base, "dump", "latest", "/etc/shadow"],
    "key-list": [*base, "key", "list", "--json"],
}
for name, argv in attacks.items():
    try:
        client.observe(argv)
        print("ATTACK " + name + " served")
    except ActuatorRefused as e:
        print("ATTACK " + name + " " + e.reason.value)
"""


def test_backup_check_under_the_module_privilege_split(
    systemd_rootfs: Path, tmp_path: Path
) -> None:
    from tests.harness.sdbox import Bind, SystemdContainer
    from tests.integration.test_unit_hardening import (
        PY_IN_BOX,
        PYENV,
        REPO_IN_BOX,
        SITE_IN_BOX,
        _boxed_service,
        _python_in_box,
        evaluate,
        render_unit,
    )

    restic = Path(shutil.which("restic") or require_tool("restic"))
    site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
    binds = [Bind(PYENV, PY_IN_BOX), Bind(site, SITE_IN_BOX),
             Bind(restic.resolve(), "/usr/local/bin/restic"),
             *(Bind(REPO / pkg, f"{REPO_IN_BOX}/{pkg}")
               for pkg in ("specs", "controllers", "reconciler"))]
    with SystemdContainer(tmp_path / "box", rootfs=systemd_rootfs, binds=binds) as box:
        evaluated = evaluate()
        services = evaluated["systemd"]["services"]
        box.check(["useradd", "--system", "--user-group", "--no-create-home",
                   "--home-dir", "/var/lib/compliance-agent", "compliance-agent"])
        # Root's backup, as services.restic.backups.ehr + the sops secret leave it.
        box.check(["mkdir", "-p", "-m", "0755", "/run/secrets", "/var/lib/ehr"])
        box.write_file(PW_FILE, PASSWORD + "\n", mode=0o400)
        box.write_file("/var/lib/ehr/canary.txt", CANARY)
        restic_root = ["restic", "-r", RESTIC_REPO, "--password-file", PW_FILE, "--no-cache"]
        box.check([*restic_root, "init"], timeout=120)
        box.check([*restic_root, "backup", "--quiet", "/var/lib/ehr"], timeout=120)
        perms = box.check(["stat", "-c", "%U %G %a", PW_FILE, RESTIC_REPO]).stdout.split("\n")
        assert perms[:2] == ["root root 400", "root root 700"], perms

        baseline = {
            "version": 1, "policy_version": "1",
            "backup": {"jobs": [{
                "name": "ehr", "tool": "restic", "repository": RESTIC_REPO,
                "password_file": PW_FILE, "max_snapshot_age": 26, "check_interval": 168,
                "restore_test": {"canary_path": "/var/lib/ehr/canary.txt",
                                 "expected_sha256": hashlib.sha256(CANARY.encode()).hexdigest()},
            }]},
        }
        box.write_file("/etc/compliance-agent/baseline.json", json.dumps(baseline))
        config = json.loads(evaluated["configText"])
        config.update(baselinePath="/etc/compliance-agent/baseline.json",
                      mcpPublicKeys=[SigningKey.generate().verify_key.encode().hex()])
        box.write_file("/etc/compliance-agent/config.json", json.dumps(config))
        box.write_file("/etc/tmpfiles.d/compliance-agent.conf",
                       "\n".join(evaluated["systemd"]["tmpfiles"]) + "\n")
        box.check(["systemd-tmpfiles", "--create", "/etc/tmpfiles.d/compliance-agent.conf"])

        py = _python_in_box()
        box.install_unit("compliance-agent-actuator.socket", render_unit(
            "socket", evaluated["systemd"]["sockets"]["compliance-agent-actuator"]))
        box.install_unit("compliance-agent-actuator.service", _boxed_service(
            services["compliance-agent-actuator"],
            f"{py} -m reconciler.actuator.server --config /etc/compliance-agent/config.json "
            "--allow-user compliance-agent --idle-exit 600"))
        box.write_file("/etc/compliance-agent/probe.py", AGENT_PROBE)
        # The agent's own unit, sandbox and user; only ExecStart differs.
        box.install_unit("agent-backup-probe.service", _boxed_service(
            services["compliance-agent"],
            f"{py} /etc/compliance-agent/probe.py /etc/compliance-agent/config.json",
            Type="oneshot", WatchdogSec="0", NotifyAccess="none", Restart="no"))
        box.check(["systemctl", "start", "compliance-agent-actuator.socket"])
        box.check(["systemctl", "start", "agent-backup-probe.service"], timeout=240)
        journal = box.check(["journalctl", "--no-pager", "-o", "cat", "-u",
                             "agent-backup-probe.service", "-u",
                             "compliance-agent-actuator.service"]).stdout
        probe_user = box.check(["systemctl", "show", "-p", "User", "--value",
                                "agent-backup-probe.service"]).stdout.strip()

    assert probe_user == "compliance-agent"
    results = {line.split()[1]: json.loads(line.split(" ", 2)[2])
               for line in journal.splitlines() if line.startswith("RESULT ")}
    fresh, stale = results["fresh"], results["stale"]
    assert fresh["error"] is None and fresh["snapshot"], journal
    assert fresh["drifts"] == [] and fresh["plan"] == [], fresh
    assert fresh["check_ok"] is True
    assert fresh["restore_sha"] == hashlib.sha256(CANARY.encode()).hexdigest()
    assert fresh["facts"]["snapshot_id"] == fresh["snapshot"]
    assert stale["drifts"] == ["BackupStale"] and stale["plan"] == ["RunBackup"], stale

    lines = journal.splitlines()
    assert f"READ {PW_FILE} PermissionError" in lines, journal
    assert f"READ {RESTIC_REPO}/config PermissionError" in lines, journal
    local = next(line for line in lines if line.startswith("LOCAL "))
    assert local != "LOCAL exit=0", "the agent could read the repository by itself"
    attacks = {line.split()[1]: line.split()[2] for line in lines if line.startswith("ATTACK ")}
    assert attacks == dict.fromkeys(
        ("other-password-file", "cat-config", "dump-other-file", "key-list"),
        "ObservationNotAllowed"), journal
    assert PASSWORD not in journal  # nor in the results and facts printed there
