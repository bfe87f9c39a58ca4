"""Operator CLI latency: `compliance-agent status` and `describe` while the
daemon runs, side by side with `cf-agent -K` on a small policy, in one run.

    python -m bench.bench_cli [--runs 15]

The daemon is started from this checkout on a scratch state directory with
its status socket on (as the NixOS module has it); each command is a fresh
process, as an operator or a script runs it. Prints the median and spread of
the wall time; asserts nothing (the issue's budget is 150 ms median).

cf-agent is CFEngine's agent, for scale: on Debian `apt-get install cfengine3`
(not needed by the tests, so not in scripts/debian-packages.txt). Without it
the bench prints "cf-agent not installed".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A small CFEngine policy: a file's presence and mode, a command's output
# classified, a report line: what a `status`-sized look at a host costs there.
CF_POLICY = """body common control { bundlesequence => { "main" }; }
bundle agent main {
  files:
    "{WORK}/probe" create => "true", perms => m("0640");
  commands:
    "/bin/true";
  reports:
    "checked";
}
body perms m(mode) { mode => "$(mode)"; }
"""


def _wall(cmd: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False, timeout=60)
        times.append(time.perf_counter() - t0)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-500:]}")
    return times


def _line(name: str, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (f"{name:<34} median {statistics.median(ms):7.1f} ms   min {ms[0]:6.1f}   "
            f"max {ms[-1]:6.1f}   (n={len(ms)})")


def _start_daemon(work: Path) -> tuple[subprocess.Popen[bytes], Path]:
    from reconciler.trust.keys import generate_key_file

    (work / "baseline.json").write_text(json.dumps({
        "version": 1, "policy_version": "1.0", "time": {"max_skew_ms": 5000}}))
    generate_key_file(work / "signing.key")
    sock = work / "run" / "status.sock"
    cfg = {
        "siteId": "bench", "hostId": "bench-host", "resellerId": "bench",
        "baselinePath": str(work / "baseline.json"),
        "clientCertFile": "/nonexistent/c", "clientKeyFile": "/nonexistent/k",
        "signingKeyFile": str(work / "signing.key"), "caCertFile": "/nonexistent/ca",
        "mcpPublicKeys": ["ab" * 32],
        "stateDirectory": str(work / "state"), "statusSocket": str(sock),
        "metricsTextfile": None, "pollInterval": 5,
    }
    config = work / "config.json"
    config.write_text(json.dumps(cfg))
    env = dict(os.environ)
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "run", "--config",
                             str(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited {proc.returncode} during start")
        if sock.exists() and (work / "state" / "state.db").exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                # the first pass is recorded: status has something to show
                from reconciler.ops.status_server import unix_get

                code, body = unix_get(sock, "/status")
                if code == 200 and json.loads(body).get("last_pass"):
                    return proc, config
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not answer on its status socket within 30 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs per command (>= 10)")
    args = ap.parse_args()
    runs = max(10, args.runs)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        work = Path(tmp)
        proc, config = _start_daemon(work)
        env = dict(os.environ)
        # The same state without the socket: what `status` costs when the daemon is down.
        no_socket = work / "config-no-socket.json"
        no_socket.write_text(json.dumps(dict(json.loads(config.read_text()),
                                             statusSocket=None)))
        cli = [sys.executable, "-m", "reconciler.cli"]
        try:
            kinds = json.loads(subprocess.run(
                [*cli, "status", "-o", "json", "--config", str(config)], env=env, cwd=REPO,
                capture_output=True, check=True).stdout)
            kind = (kinds.get("resources") or [{"kind": "time"}])[0]["kind"]
            print(_line("python -c pass (interpreter only)",
                        _wall([sys.executable, "-c", "pass"], env, runs)))
            for name, argv, cfg in (
                ("compliance-agent status", ["status"], config),
                ("compliance-agent status -o json", ["status", "-o", "json"], config),
                (f"compliance-agent describe {kind}", ["describe", kind], config),
                ("status, daemon's socket off", ["status"], no_socket),
                (f"describe {kind}, socket off", ["describe", kind], no_socket),
            ):
                print(_line(name, _wall(cli + argv + ["--config", str(cfg)], env, runs)))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cf_agent = shutil.which("cf-agent")
        if cf_agent is None:
            print("cf-agent -K                        cf-agent not installed "
                  "(Debian: apt-get install cfengine3)")
        else:
            policy = work / "cf" / "promises.cf"
            policy.parent.mkdir()
            policy.write_text(CF_POLICY.replace("{WORK}", str(work / "cf")))
            policy.chmod(0o600)
            cmd = [cf_agent, "-K", "-f", str(policy)]
            print(_line("cf-agent -K (small policy)", _wall(cmd, dict(os.environ), runs)))
    print("budget: status and describe <= 150 ms median (issue 12)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
