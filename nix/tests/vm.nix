# NixOS VM test of services.compliance-agent. It needs Nix with KVM and
# cannot run on the project's CI machine (Debian, no Nix daemon, no KVM):
#
#   nix build .#checks.x86_64-linux.vm -L
#
# What CI does check of it: the test script type-checks with mypy exactly as
# the NixOS test driver checks it before starting any VM
# (tests/integration/test_vm_script_types.py).
#
# Two machines on one VLAN:
# * `mcp`:  the DEV ONLY demo control plane (mutual TLS) on :443, a plain HTTP
#           server on :8080 (a destination the allowlist must block) and an
#           NTP server (chrony) that is the host's time source;
# * `host`: the agent from this flake's module, its secrets placed in
#           /run/secrets the way sops-nix does (owner compliance-agent, 0400).
#
# What it proves: no listening network socket of the agent or the actuator;
# the egress allowlist (tcp/443 only to resolved allowedHosts, everything
# else dropped); secrets' owner and mode; the state directory is 0700; the
# unit hardening is really applied (systemctl show, systemd-analyze security
# on the live unit); logs reach the journal; a stopped baseline unit is
# restarted through the root actuator; and with the clock skewed beyond
# ntpMaxSkewMs a disruptive order (rebuild) is skipped, not run. Also: the
# egress refresh ran at boot before the agent; the allowlist sets survive an
# nftables reload and a restart (NixOS recreates the module's table); the
# actuator runs Nix through the daemon (NIX_REMOTE=daemon); the node
# exporter's textfile collector reads the agent's metrics.
#
# Test-only key material: the control plane's Ed25519 seed is the fixed
# 0x01 * 32 (public key below), and the TLS certificates are made at build
# time; both end up in the Nix store, which is fine for a throwaway VM and
# never done by the module itself.
{ pkgs, self }:

let
  agent = self.packages.${pkgs.stdenv.hostPlatform.system}.compliance-agent;
  src = self.outPath;

  mcpSeed = pkgs.writeText "mcp-test.seed" "0101010101010101010101010101010101010101010101010101010101010101\n";
  mcpPublicKey = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";

  demoPython = pkgs.python3.withPackages (ps: with ps; [
    fastapi uvicorn trustme pynacl cryptography pydantic httpx sqlalchemy
  ]);

  fixtures = pkgs.runCommand "compliance-agent-vm-fixtures" { nativeBuildInputs = [ demoPython ]; } ''
    export PYTHONPATH=${src}
    python -m demo.control_plane make-certs --dir $out --name mcp --name localhost
  '';

  baseline = pkgs.writeText "vm-baseline.json" (builtins.toJSON {
    version = 1;
    policy_version = "vm-1";
    services.units = [ { name = "dummy-workload.service"; } ];
    egress = { };
    time.max_skew_ms = 5000;
  });

  secretDir = "/run/secrets/compliance-agent";
in
pkgs.testers.runNixOSTest {
  name = "compliance-agent";

  nodes.mcp = { pkgs, ... }: {
    networking.firewall.allowedTCPPorts = [ 443 8080 ];
    networking.firewall.allowedUDPPorts = [ 123 ];
    services.chrony = {
      enable = true;
      extraConfig = ''
        allow all
        local stratum 8
      '';
    };
    systemd.services.mcp-stub = {
      description = "DEV ONLY demo control plane";
      # started by the test script, once the agent's public key is known
      environment.PYTHONPATH = src;
      serviceConfig = {
        StateDirectory = "mcp";
        ExecStart = "${demoPython}/bin/python -m demo.control_plane serve --db /var/lib/mcp/db "
          + "--host 0.0.0.0 --port 443 --cert ${fixtures}/server.pem --ca ${fixtures}/ca.pem "
          + "--agent-key-file /var/lib/mcp/agent.pub --signing-key ${mcpSeed}";
      };
    };
    systemd.services.plain-http = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig.ExecStart = "${pkgs.python3}/bin/python -m http.server 8080";
    };
    environment.systemPackages = [ demoPython ];
    environment.variables.PYTHONPATH = src;
  };

  nodes.host = { config, lib, pkgs, ... }: {
    imports = [ self.nixosModules.default ];

    services.compliance-agent = {
      enable = true;
      package = agent;
      deploymentMode = "direct";
      siteId = "vm-site";
      hostId = "host";
      baselinePath = baseline;
      mcpUrl = "https://mcp";
      allowedHosts = [ "mcp" ];
      mcpPublicKeys = [ mcpPublicKey ];
      clientCertFile = "${secretDir}/client.crt";
      clientKeyFile = "${secretDir}/client.key";
      signingKeyFile = "${secretDir}/signing.key";
      caCertFile = "${fixtures}/ca.pem";
      pollInterval = 5;
      ntpMaxSkewMs = 5000;
      # Disruptive actions would be allowed at any time, so only the clock
      # guard can be what stops the rebuild below.
      allowDisruptiveOutsideWindow = true;
    };

    # Time from `mcp`; timesyncd may not set the clock here, so a skew the
    # test introduces stays measurable instead of being corrected at once.
    networking.timeServers = [ "mcp" ];
    systemd.services.systemd-timesyncd.serviceConfig = {
      CapabilityBoundingSet = lib.mkForce [ "" ];
      AmbientCapabilities = lib.mkForce [ "" ];
    };

    # A workload the baseline requires to be running.
    systemd.services.dummy-workload = {
      wantedBy = [ "multi-user.target" ];
      serviceConfig.ExecStart = "${pkgs.coreutils}/bin/sleep infinity";
    };

    # Stand-in for sops-nix: secrets decrypted at boot into /run/secrets,
    # owner compliance-agent, mode 0400, never in the store (the signing key
    # is generated here; the TLS pair is test-only material from the store).
    systemd.services.vm-test-secrets = {
      requiredBy = [ "compliance-agent.service" ];
      before = [ "compliance-agent.service" ];
      serviceConfig = { Type = "oneshot"; RemainAfterExit = true; };
      path = [ pkgs.coreutils agent ];
      script = ''
        install -d -m 0750 -o root -g compliance-agent ${secretDir}
        install -m 0400 -o compliance-agent -g compliance-agent ${fixtures}/client.crt ${secretDir}/client.crt
        install -m 0400 -o compliance-agent -g compliance-agent ${fixtures}/client.key ${secretDir}/client.key
        if [ ! -e ${secretDir}/signing.key ]; then
          compliance-agent keygen --out ${secretDir}/signing.key > ${secretDir}/signing.pub
        fi
        chown compliance-agent:compliance-agent ${secretDir}/signing.key
        chmod 0400 ${secretDir}/signing.key
      '';
    };

    # Hermetic: no binary cache to allow (the module would add cache.nixos.org).
    nix.settings.substituters = lib.mkForce [ ];
    # textfile collector on by default: the module wires its directory
    services.prometheus.exporters.node.enable = true;

    environment.systemPackages = [ pkgs.curl pkgs.jq pkgs.iproute2 ];
  };

  testScript = ''
    import base64
    import json
    import re

    start_all()
    mcp.wait_for_unit("multi-user.target")
    mcp.wait_for_unit("chronyd.service")
    host.wait_for_unit("vm-test-secrets.service")

    # The control plane trusts the agent's evidence key, generated on the host.
    agent_pub = host.succeed("cat ${secretDir}/signing.pub").strip()
    mcp.succeed(f"mkdir -p /var/lib/mcp && echo {agent_pub} > /var/lib/mcp/agent.pub")
    mcp.succeed("systemctl start mcp-stub.service")
    mcp.wait_for_open_port(443)

    host.wait_for_unit("compliance-agent.service")
    host.wait_for_unit("compliance-agent-actuator.socket")

    with subtest("secrets: owner compliance-agent, mode 0400"):
        for name in ("client.crt", "client.key", "signing.key"):
            out = host.succeed(f"stat -c '%U %a' ${secretDir}/{name}").strip()
            assert out == "compliance-agent 400", f"{name}: {out}"

    with subtest("state directory 0700, runtime directory 0750, actuator socket 0660"):
        assert host.succeed("stat -c '%U %a' /var/lib/compliance-agent").strip() == "compliance-agent 700"
        assert host.succeed("stat -c '%U %a' /run/compliance-agent").strip() == "compliance-agent 750"
        assert host.succeed("stat -c '%U %G %a' /run/compliance-agent-actuator/actuator.sock").strip() == "root compliance-agent 660"
        assert host.succeed("stat -c '%U %G %a' /run/compliance-agent-actuator").strip() == "root compliance-agent 750"

    with subtest("hardening is applied to the running agent"):
        props = dict(
            line.split("=", 1)
            for line in host.succeed(
                "systemctl show compliance-agent.service -p User -p ProtectSystem -p ProtectHome "
                "-p NoNewPrivileges -p CapabilityBoundingSet -p AmbientCapabilities "
                "-p PrivateTmp -p PrivateDevices -p RestrictAddressFamilies -p MemoryDenyWriteExecute "
                "-p SystemCallArchitectures -p UMask -p Type -p NotifyAccess -p WatchdogUSec"
            ).strip().splitlines()
        )
        assert props["User"] == "compliance-agent", props
        assert props["ProtectSystem"] == "strict", props
        assert props["ProtectHome"] == "yes", props
        assert props["NoNewPrivileges"] == "yes", props
        assert props["CapabilityBoundingSet"] == "", props
        assert props["AmbientCapabilities"] == "", props
        assert props["PrivateTmp"] == "yes" and props["PrivateDevices"] == "yes", props
        assert props["MemoryDenyWriteExecute"] == "yes", props
        assert set(props["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}, props
        assert props["UMask"] == "0077" and props["Type"] == "notify", props
        assert props["WatchdogUSec"] != "0", props
        out = host.succeed("systemd-analyze security compliance-agent.service --no-pager")
        found = re.search(r"Overall exposure level for compliance-agent.service: ([0-9.]+)", out)
        assert found is not None, out
        score = float(found.group(1))
        print(f"live exposure score of compliance-agent.service: {score}")
        assert score <= 2.0, out

    with subtest("no listening network socket"):
        pids = {
            host.succeed(f"systemctl show -P MainPID {unit}").strip()
            for unit in ("compliance-agent.service", "compliance-agent-actuator.service")
        } - {"0"}
        listening = host.succeed("ss -tulpnH")
        for pid in pids:
            assert f"pid={pid}," not in listening, listening
        # nothing at all from the agent's user either
        assert "compliance" not in listening, listening

    with subtest("logs are in the journal"):
        host.wait_until_succeeds("journalctl -t compliance-agent --no-pager -o cat | grep -q .", timeout=60)

    with subtest("egress allowlist: only tcp/443 to allowedHosts leaves the host"):
        host.succeed("nft list table inet compliance_egress")
        # (its exit code says whether drift remains; the set's content is what counts)
        host.execute("systemctl start compliance-agent-egress-refresh.service")
        mcp_ip = host.succeed("getent ahostsv4 mcp | head -n1 | cut -d' ' -f1").strip()
        host.wait_until_succeeds(
            f"nft -j list set inet compliance_egress allowed_v4 | grep -q '{mcp_ip}'", timeout=60
        )
        # 443 to mcp: the TCP handshake completes (TLS then wants a client cert: curl
        # fails with an SSL error, not with a timeout).
        rc, _ = host.execute("curl -sS --max-time 10 --cacert ${fixtures}/ca.pem https://mcp/ -o /dev/null")
        assert rc != 28, "tcp/443 to an allowlisted host timed out"
        # Any other destination port: dropped (curl exit 28: timeout).
        rc, _ = host.execute("curl -sS --max-time 5 http://mcp:8080/ -o /dev/null")
        assert rc == 28, f"plain HTTP to mcp:8080 was not dropped (curl exit {rc})"
        # mcp itself is reachable on 8080 (so the drop above is the host's allowlist).
        mcp.succeed("curl -sS --max-time 5 http://127.0.0.1:8080/ -o /dev/null")

    with subtest("egress: refreshed at boot before the agent, kept across nftables reload/restart"):
        # ordering, not a timer: the refresh finished before the agent started
        refreshed = int(host.succeed(
            "systemctl show -P ExecMainExitTimestampMonotonic compliance-agent-egress-refresh.service").strip())
        agent_started = int(host.succeed(
            "systemctl show -P ExecMainStartTimestampMonotonic compliance-agent.service").strip())
        assert 0 < refreshed <= agent_started, (refreshed, agent_started)
        before_reload = host.succeed("nft -j list set inet compliance_egress allowed_v4 | jq -c '.nftables[1].set.elem'")
        assert mcp_ip in before_reload, before_reload
        host.succeed("systemctl reload nftables.service")
        # right after the reload, no refresh needed: the elements are back
        after_reload = host.succeed("nft -j list set inet compliance_egress allowed_v4 | jq -c '.nftables[1].set.elem'")
        assert after_reload == before_reload, (before_reload, after_reload)
        host.succeed("systemctl restart nftables.service")
        host.wait_until_succeeds(
            f"nft -j list set inet compliance_egress allowed_v4 | grep -q '{mcp_ip}'", timeout=60
        )
        # only our table was recreated: no global flush
        host.succeed("nft list ruleset | grep -q 'table inet compliance_egress'")

    with subtest("the actuator runs Nix through the daemon"):
        env = host.succeed("systemctl show -P Environment compliance-agent-actuator.service")
        assert "NIX_REMOTE=daemon" in env.split(), env

    with subtest("node exporter reads the agent's textfile metrics"):
        host.wait_for_unit("prometheus-node-exporter.service")
        host.wait_until_succeeds(
            "curl -sf http://127.0.0.1:9100/metrics | grep -q '^compliance_agent_'", timeout=180
        )

    with subtest("a stopped baseline unit is restarted through the actuator"):
        host.succeed("systemctl stop dummy-workload.service")
        host.wait_until_succeeds("systemctl is-active dummy-workload.service", timeout=90)
        host.succeed(
            "journalctl -t compliance-agent-actuator --no-pager -o cat "
            "| grep -E 'action=unit:dummy-workload.service verdict=ok'"
        )

    with subtest("clock skew above ntpMaxSkewMs: a disruptive order is skipped"):
        host.wait_until_succeeds("timedatectl timesync-status | grep -q 'Server: '", timeout=120)
        before = host.succeed("readlink -f /run/current-system").strip()
        # 10 minutes ahead; timesyncd cannot correct it (no CAP_SYS_TIME), so it reports it.
        host.succeed("date -s \"$(date -d '+10 min' '+%Y-%m-%d %H:%M:%S')\"")
        host.wait_until_succeeds("timedatectl timesync-status | grep -E 'Offset: -[0-9]'", timeout=180)
        params = json.dumps({"target": before})
        queued = json.loads(mcp.succeed(
            "python -m demo.control_plane order --db /var/lib/mcp/db "
            f"--signing-key ${mcpSeed} --site vm-site --host host --action rebuild "
            f"--params '{params}' --ttl 3600"
        ))
        payload = json.loads(base64.b64decode(queued["envelope"]["payload"]))
        order_id = payload["order_id"]
        exec_start = host.succeed("systemctl show -P ExecStart compliance-agent.service")
        config_match = re.search(r"/nix/store/[^ ;]*compliance-agent\.json", exec_start)
        assert config_match is not None, exec_start
        config_file = config_match.group(0)
        # The order is admitted, its rebuild held by the clock guard: evidence
        # for this order with outcome `alert` (guard ClockSkewed), nothing run.
        host.wait_until_succeeds(
            f"compliance-agent evidence list -o json --config {config_file} "
            f"| jq -e 'map(select(.order_id == \"{order_id}\" and .outcome == \"alert\")) | length > 0'",
            timeout=180,
        )
        assert host.succeed("readlink -f /run/current-system").strip() == before
        host.fail(
            "journalctl -t compliance-agent-actuator --no-pager -o cat | grep -q 'action=rebuild:.* verdict=ok'"
        )
  '';
}
