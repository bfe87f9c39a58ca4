# services.compliance-agent's egress allowlist (imported by nix/module.nix):
# the nftables table (networking.nftables.tables, no global flush), the hosts
# and ports this configuration itself needs (nix/egress-hosts.nix), keeping
# the sets across nftables reloads and restarts (nix/egress-sets.sh), and the
# warnings and assertions about what it would block. The policy is host-wide.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.compliance-agent;
  inherit (lib) mkOption mkIf types;

  isV6 = a: lib.hasInfix ":" a;
  dnsRuleFor = family: addrs:
    lib.optionals (addrs != [ ]) (map (proto:
      "\t${family} daddr { ${lib.concatStringsSep ", " addrs} } ${proto} dport 53 accept"
    ) [ "udp" "tcp" ]);
  dnsRules =
    if cfg.dnsResolvers == [ ] then [ "\tudp dport 53 accept" "\ttcp dport 53 accept" ]
    else dnsRuleFor "ip" (lib.filter (a: !isV6 a) cfg.dnsResolvers)
      ++ dnsRuleFor "ip6" (lib.filter isV6 cfg.dnsResolvers);
  localRules = lib.concatMap (net:
    [ "\t${if isV6 net then "ip6" else "ip"} daddr ${net} accept" ]) cfg.egressLocalNetworks;

  # What this configuration itself needs to reach.
  needs = import ./egress-hosts.nix { inherit lib config cfg; };
  neededHosts = lib.unique (map (n: n.host) needs.destinations);
  missingHosts = lib.filter (h: !(lib.elem h cfg.allowedHosts)) neededHosts;
  # allowedHosts as the agent sees them (the JSON config): the configured ones,
  # plus what the configuration needs when egressAllowConfiguredHosts is on.
  effectiveAllowedHosts = cfg.allowedHosts
    ++ lib.optionals cfg.egressAllowConfiguredHosts missingHosts;
  tcpPorts = lib.unique ([ 443 ] ++ cfg.egressExtraTcpPorts
    ++ lib.optionals cfg.egressAllowConfiguredHosts
      (map (n: n.port) (lib.filter (n: n.proto == "tcp") needs.destinations)));
  udpPorts = lib.unique (lib.optionals cfg.egressAllowConfiguredHosts
    (map (n: n.port) (lib.filter (n: n.proto == "udp") needs.destinations)));
  udpRules = lib.optionals (udpPorts != [ ]) (let ports = lib.concatMapStringsSep ", " toString udpPorts; in [
    "\tudp dport { ${ports} } ip daddr @allowed_v4 accept"
    "\tudp dport { ${ports} } ip6 daddr @allowed_v6 accept"
  ]);
  # The content of `table inet <egressTable>` (networking.nftables.tables).
  egressTableContent = builtins.replaceStrings
    [ "@dnsRules@" "@tcpPorts@" "@extraRules@" ]
    [ (lib.concatStringsSep "\n" (dnsRules ++ [ "\tudp dport 123 accept" ] ++ localRules))
      (lib.concatMapStringsSep ", " toString tcpPorts)
      (lib.concatMapStrings (r: r + "\n") udpRules) ]
    (builtins.readFile ./egress.nft.in);
  # Egress sets kept across nftables (re)loads (nix/egress-sets.sh).
  egressSets = action: "${pkgs.coreutils}/bin/env NFT=${pkgs.nftables}/bin/nft ${pkgs.bash}/bin/bash ${./egress-sets.sh} ${action} ${cfg.egressTable} /run/nftables-${cfg.egressTable}-sets.nft";
  startRefresh = "${config.systemd.package}/bin/systemctl start --no-block compliance-agent-egress-refresh.service";

in
{
  options.services.compliance-agent = {
    enforceEgress = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Install the nftables egress allowlist table (networking.nftables.tables,
        no global flush): outbound traffic of the WHOLE HOST, every program, is
        dropped except loopback, replies, DHCP/ND, DNS, NTP, egressLocalNetworks
        and TCP 443 (plus egressExtraTcpPorts and the ports the configuration
        needs) to the addresses of allowedHosts. Hosts this configuration itself
        needs (binary caches, webhook, syslog, backup repositories and a flake
        target of the local baseline) are added when egressAllowConfiguredHosts
        is on, warned about otherwise. Fail closed: until the first refresh after
        boot only DNS/NTP pass; the refresh runs before the agent starts.
      '';
    };

    dnsResolvers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "192.0.2.53" ];
      description = ''
        Resolver addresses DNS may go to; empty (the default) allows DNS to any
        address, so resolvers learned by DHCP keep working. List every resolver
        the host uses (static and DHCP-learned) to confine DNS.
      '';
    };

    egressAllowConfiguredHosts = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Add to the allowlist the hosts this configuration itself needs, with their
        ports: binary caches (nix.settings.substituters), rmmWebhookUrl,
        syslogTarget, and from a local baseline given as a Nix path the backup
        repositories and a flake patching target's origin, plus flakeInputHosts.
        Off: each such host missing from allowedHosts is a warning instead.
      '';
    };

    egressExtraTcpPorts = mkOption {
      type = types.listOf types.port;
      default = [ ];
      example = [ 22 587 ];
      description = "TCP ports, besides 443, allowed to the addresses of allowedHosts (e.g. SSH to a backup host, SMTP submission).";
    };

    egressLocalNetworks = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "192.168.10.0/24" "fd00:10::/64" ];
      description = "Destination networks (CIDR) reached without restriction: the site's LAN (printers, NAS, PACS).";
    };

    flakeInputHosts = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "github.com" "api.github.com" "codeload.github.com" ];
      description = "Hosts the inputs of a flake patching target are fetched from (HTTPS); the target's own origin is derived from the baseline.";
    };

    egressAllowedHosts = mkOption {
      type = types.listOf types.str;
      internal = true;
      readOnly = true;
      description = "allowedHosts as the agent gets them (JSON config): the option's hosts plus, with egressAllowConfiguredHosts, those the configuration needs.";
    };
  };

  config = lib.mkMerge [
    { services.compliance-agent.egressAllowedHosts = effectiveAllowedHosts; }
    (mkIf cfg.enable {
      assertions = [
        {
          # NixOS's nftables firewall asserts these are empty too, without naming
          # this module; say why nftables is on and what to do.
          assertion = !cfg.enforceEgress
            || (config.networking.firewall.extraCommands == "" && config.networking.firewall.extraStopCommands == "");
          message = "services.compliance-agent.enforceEgress turns on nftables (networking.nftables.enable) for the egress allowlist, and NixOS's nftables firewall cannot run the iptables commands of networking.firewall.extraCommands / extraStopCommands: move those rules to networking.firewall.extraInputRules / extraForwardRules or networking.nftables.tables, or set services.compliance-agent.enforceEgress = false (then outbound traffic is not confined).";
        }
      ];

      warnings = lib.optionals cfg.enforceEgress (
        map (what: "services.compliance-agent: the egress allowlist may block ${what}: add its hosts to allowedHosts (and ports to egressExtraTcpPorts) or its network to egressLocalNetworks.") needs.unknown
        ++ lib.optionals (!cfg.egressAllowConfiguredHosts) (map (n:
          "services.compliance-agent: ${n.why} needs ${n.host} (${n.proto}/${toString n.port}), which is not in allowedHosts: the egress allowlist drops it (add it, or turn egressAllowConfiguredHosts on).")
          (lib.filter (n: lib.elem n.host missingHosts) needs.destinations))
        ++ lib.optional (needs.flakeTarget && cfg.flakeInputHosts == [ ])
          "services.compliance-agent: the baseline's patching target is a flake: the hosts its inputs come from must be reachable; list them in flakeInputHosts (e.g. github.com, api.github.com, codeload.github.com).");

      # Our own table only: NixOS deletes and recreates it on every nftables
      # start/reload and leaves other tables alone (no `flush ruleset`, which a
      # non-empty networking.nftables.ruleset would turn on).
      networking.nftables = mkIf cfg.enforceEgress {
        enable = true;
        tables.${cfg.egressTable} = {
          family = "inet";
          content = egressTableContent;
        };
      };

      # That recreation empties the allowlist sets: keep their elements across
      # a reload, then refresh from DNS ("-": the firewall itself must load even
      # if this fails). ExecReload is a list in NixOS's nftables module, so ours
      # go around it; ExecStartPost there is a single string (systemd unit
      # options may not mix lists and strings), so stop/start is handled by the
      # unit below instead.
      systemd.services.nftables.serviceConfig.ExecReload = mkIf cfg.enforceEgress (lib.mkMerge [
        (lib.mkBefore [ "-${egressSets "save"}" ])
        (lib.mkAfter [ "-${egressSets "restore"}" "-${startRefresh}" ])
      ]);

      # Bound to nftables.service: stopped (saving the sets) before it stops,
      # started (restoring them, then refreshing) after it starts, restarted with it.
      systemd.services.compliance-agent-egress-keep = mkIf cfg.enforceEgress {
        description = "Compliance agent: keep the egress allowlist sets across nftables restarts";
        wantedBy = [ "nftables.service" ];
        partOf = [ "nftables.service" ];
        after = [ "nftables.service" ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          ExecStart = [ "-${egressSets "restore"}" "-${startRefresh}" ];
          ExecStop = "-${egressSets "save"}";
        };
      };
    })
  ];
}
