# services.compliance-agent: keep this host at a signed compliance baseline, and prove it.
#
# Two processes, so that the network-facing part holds no privilege:
#
# * compliance-agent.service: the reconciler. Runs as the system user
#   `compliance-agent` in a tight sandbox, only ever dials out (mTLS to the
#   control plane), never listens on TCP/UDP; its status socket is a unix
#   socket under /run/compliance-agent.
# * compliance-agent-actuator.{socket,service}: root, socket-activated on
#   /run/compliance-agent-actuator/actuator.sock (0660 root:compliance-agent,
#   in a directory root owns, so the agent can neither replace the socket nor
#   stand in for it). It runs only typed actions that the baseline it verified
#   itself names, inside the maintenance window (reconciler/actuator/server.py).
#
# Options mirror specs.config.AgentConfig one to one: same camelCase names,
# types and defaults (tests/integration/test_nix_module.py checks it). They
# are written to a JSON file the agent parses with that model. Secrets are
# only ever paths (e.g. from sops-nix): they are never read at evaluation
# time and never copied into the Nix store.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.compliance-agent;
  inherit (lib) mkOption mkEnableOption mkIf mkDefault types literalExpression;

  user = "compliance-agent";
  runtimeDir = "/run/compliance-agent";
  # Root's own: never under the agent's runtimeDir, which the agent can write.
  actuatorRuntimeDir = "/run/compliance-agent-actuator";
  windowRegex = "([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])";
  syslogRegex = "(tcp|udp|tls)://[^/:]+:[0-9]+";

  # Every key of AgentConfig, in its declaration order: the JSON config has
  # exactly these keys (null for unset nullables), `enable` included.
  agentOptionNames = [
    "enable" "siteId" "hostId" "baselinePath" "clientCertFile" "clientKeyFile"
    "signingKeyFile" "caCertFile" "mcpPublicKeys" "mcpUrl" "allowedHosts"
    "natsUrl" "deploymentMode" "resellerId" "policyVersion" "pollInterval" "orderTtl"
    "maintenanceWindow" "allowDisruptiveOutsideWindow" "evidenceRetention"
    "pruneRetentionDays" "ntpMaxSkewMs" "rebuildHealthCheckTimeout" "rmmWebhookUrl"
    "syslogTarget" "syslogCaFile" "webhookSecretFile" "logLevel" "stateDirectory" "statusSocket"
    "actuatorSocket" "metricsTextfile" "egressTable" "workers" "watches"
    "evidenceSnapshotInterval"
  ];
  agentSettings = lib.genAttrs agentOptionNames (name: cfg.${name})
    // { allowedHosts = cfg.egressAllowedHosts; };
  configFile = pkgs.writeText "compliance-agent.json" (builtins.toJSON agentSettings);

  exe = "${cfg.package}/bin/compliance-agent";

  # Secrets: absolute paths outside the store, checked by assertions below.
  secretOptions = [ "clientCertFile" "clientKeyFile" "signingKeyFile" "webhookSecretFile" ];
  badSecretPath = p: p != null && (!(lib.hasPrefix "/" p) || lib.hasPrefix "/nix/store/" p);

  window = builtins.match windowRegex cfg.maintenanceWindow;
  windowEmpty = window != null
    && builtins.elemAt window 0 == builtins.elemAt window 2
    && builtins.elemAt window 1 == builtins.elemAt window 3;
  # scheme, host (bracketed IPv6 allowed), optional port and path
  # ("[[]" and "[]]" match brackets: Nix's regex engine rejects "\\[" here)
  mcpUrlParts = builtins.match "(https)://([[][0-9A-Fa-f:.]*[]]|[^/:?#]+)(:[0-9]+)?([/?#].*)?" cfg.mcpUrl;
  mcpHost = if mcpUrlParts == null then null else builtins.elemAt mcpUrlParts 1;

  nodeExporter = config.services.prometheus.exporters.node;

  syslogParts = if cfg.syslogTarget == null then null
    else builtins.match "(tcp|udp|tls)://([^/:]+):([0-9]+)" cfg.syslogTarget;
  syslogTls = syslogParts != null && builtins.elemAt syslogParts 0 == "tls";
  # natsUrl "tls://host[:port]": order wake-ups (its port joins the egress
  # allowlist through nix/egress-hosts.nix; its host must be in allowedHosts).
  natsParts = if cfg.natsUrl == null then null
    else builtins.match "tls://([^/:@]+)(:([0-9]+))?/?" cfg.natsUrl;

  # The backup tools the local baseline's jobs use (when it is a Nix path,
  # readable at evaluation; a baseline from the control plane may add jobs:
  # list their tools in extraPackages). The actuator runs them as root for the
  # backup controller (reconciler/actuator/backup_reads.py): the password files
  # and repositories stay root's.
  localBaseline = if cfg.baselinePath != null && builtins.isPath cfg.baselinePath
    then builtins.fromJSON (builtins.readFile cfg.baselinePath) else { };
  backupToolNames = map (job: job.tool or "restic") ((localBaseline.backup or { }).jobs or [ ]);
  backupTools = lib.optional (lib.elem "restic" backupToolNames) pkgs.restic
    ++ lib.optional (lib.elem "borg" backupToolNames) pkgs.borgbackup;

  # Tools the controllers run (observation is read-only; changes go through
  # the actuator). The running system's profile last, for what the host has.
  agentPath = [ pkgs.getent pkgs.util-linux pkgs.cryptsetup pkgs.nftables ]
    ++ cfg.extraPackages ++ [ "/run/current-system/sw" ];

  # The one sandbox of every unprivileged unit (agent, egress refresh, prune).
  # `systemd-analyze security` scores the agent unit at or below 2.0; the
  # module test prints the score. Not set, on purpose:
  # * PrivateNetwork / IPAddressDeny: the agent must reach the control plane,
  #   whose addresses come from DNS at run time; egress is confined by the
  #   nftables allowlist instead (by name, refreshed hourly).
  # * PrivateUsers: the agent stat()s files owned by other users (secrets'
  #   owners, audited paths); in a user namespace they would all read as nobody.
  unprivilegedHardening = {
    User = user;
    Group = user;
    UMask = "0077";
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateIPC = true;
    DevicePolicy = "closed";
    NoNewPrivileges = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    SystemCallArchitectures = "native";
    SystemCallErrorNumber = "EPERM";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    RemoveIPC = true;
    PrivateMounts = true;
    # The logging controller reads its canary back from the system journal.
    SupplementaryGroups = [ "systemd-journal" ];
    StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDirectory;
    StateDirectoryMode = "0700";
    # "-": a missing directory must not stop the agent (metrics are optional).
    ReadWritePaths = lib.optional (cfg.metricsTextfile != null) "-${dirOf cfg.metricsTextfile}";
  };
in
{
  # The egress allowlist: its options, table, reload handling and warnings.
  imports = [ ./egress.nix ];

  options.services.compliance-agent = {
    enable = mkEnableOption "the compliance agent (declarative compliance reconciler)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The compliance-agent package (the flake's module sets its own build).";
    };

    siteId = mkOption {
      type = types.nullOr types.nonEmptyStr;
      default = null;
      example = "clinic-0042";
      description = "Site (clinic) identifier assigned by the control plane. Required.";
    };

    hostId = mkOption {
      type = types.nonEmptyStr;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = "Host identifier; defaults to the machine's hostname.";
    };

    baselinePath = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./baseline.json";
      description = ''
        Local baseline JSON file (from the NixOS config); the fallback when the
        control plane has no newer signed baseline. Required. Not secret: a Nix
        path is copied to the store.
      '';
    };

    clientCertFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/compliance-agent/client.crt";
      description = "mTLS client certificate (PEM) path, e.g. from sops-nix. A string, so it is never copied to the store.";
    };

    clientKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/compliance-agent/client.key";
      description = "mTLS client private key (PEM) path; owner compliance-agent, mode 0600/0400. Never in the store.";
    };

    signingKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/compliance-agent/signing.key";
      description = "Ed25519 private key that signs evidence; owner compliance-agent, mode 0600/0400. Never in the store.";
    };

    caCertFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "CA certificate the control plane's server certificate must chain to (public; may be a Nix path). Required.";
    };

    mcpPublicKeys = mkOption {
      type = types.listOf (types.strMatching "[0-9a-fA-F]{64}");
      default = [ ];
      description = ''
        Hex-encoded 32-byte Ed25519 public keys trusted for orders and baselines
        (more than one allows key rotation). At least one is required.
      '';
    };

    mcpUrl = mkOption {
      type = types.str;
      default = "https://mcp.local";
      description = "Control plane base URL (https); its host must be in allowedHosts.";
    };

    allowedHosts = mkOption {
      type = types.listOf types.str;
      default = [ "mcp.local" ];
      description = "Host names the egress allowlist resolves; the only HTTPS destinations of this host.";
    };

    natsUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "tls://nats.example-msp.net:4222";
      description = ''
        Optional NATS server for order wake-ups, "tls://host:port" (port 4222 if
        omitted). The agent keeps one outbound TLS connection with its client
        certificate and caCertFile; a wake-up only makes it poll orders over HTTPS
        now (orders are still signed and fetched over mutual TLS). Its host must be
        in allowedHosts; the egress allowlist then also allows that port.
      '';
    };

    deploymentMode = mkOption {
      type = types.enum [ "reseller" "direct" ];
      default = "reseller";
      description = "'reseller' (MSP: webhook + syslog integrations) or 'direct'.";
    };

    resellerId = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "MSP identifier; required in reseller mode.";
    };

    policyVersion = mkOption {
      type = types.str;
      default = "1.0";
      description = "Compliance policy version stamped in evidence.";
    };

    pollInterval = mkOption {
      type = types.ints.positive;
      default = 60;
      description = "Seconds between reconcile passes (+-10% jitter).";
    };

    orderTtl = mkOption {
      type = types.ints.positive;
      default = 900;
      description = "Maximum order lifetime in seconds, whatever the order asks for.";
    };

    maintenanceWindow = mkOption {
      type = types.str;
      default = "02:00-04:00";
      example = "22:00-02:00";
      description = "UTC window 'HH:MM-HH:MM' for disruptive actions; may cross midnight.";
    };

    allowDisruptiveOutsideWindow = mkOption {
      type = types.bool;
      default = false;
      description = "Allow disruptive actions outside the maintenance window.";
    };

    evidenceRetention = mkOption {
      type = types.ints.positive;
      default = 200;
      description = "Minimum number of newest evidence bundles kept by pruning.";
    };

    pruneRetentionDays = mkOption {
      type = types.ints.unsigned;
      default = 90;
      description = "Evidence younger than this many days is never pruned.";
    };

    ntpMaxSkewMs = mkOption {
      type = types.ints.positive;
      default = 5000;
      description = "Clock offset (ms) above which disruptive actions are skipped.";
    };

    rebuildHealthCheckTimeout = mkOption {
      type = types.ints.positive;
      default = 60;
      description = "Seconds the system has to reach 'running' after a rebuild before it is rolled back.";
    };

    rmmWebhookUrl = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "Reseller RMM webhook URL (reseller mode only); needs webhookSecretFile.";
    };

    syslogTarget = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "tls://siem.example-msp.net:6514";
      description = ''
        RFC 5424 syslog target: "tls://host:6514" (RFC 5425: TLS 1.2+, the
        collector's certificate must chain to syslogCaFile and name the host),
        "tcp://host:port" (octet counting, RFC 6587) or "udp://host:port".
      '';
    };

    syslogCaFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = literalExpression "./msp-syslog-ca.pem";
      description = ''
        CA certificate (PEM, public; may be a Nix path) the syslog collector's
        certificate must chain to. Required for a tls:// syslogTarget and only
        used then; the system trust store is not consulted. Usually the MSP's
        own CA, which need not be caCertFile.
      '';
    };

    webhookSecretFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = "File holding the HMAC secret for the RMM webhook. Never in the store.";
    };

    logLevel = mkOption {
      type = types.enum [ "DEBUG" "INFO" "WARNING" "ERROR" ];
      default = "INFO";
      description = "Log verbosity.";
    };

    stateDirectory = mkOption {
      type = types.str;
      default = "/var/lib/compliance-agent";
      description = "State directory (SQLite store, evidence files); mode 0700. Must be under /var/lib/ (systemd StateDirectory).";
    };

    statusSocket = mkOption {
      type = types.nullOr types.str;
      default = "${runtimeDir}/status.sock";
      description = "Unix socket serving /metrics and /status (mode 0660); null disables it. The agent never listens on TCP or UDP.";
    };

    actuatorSocket = mkOption {
      type = types.nullOr types.str;
      default = "${actuatorRuntimeDir}/actuator.sock";
      description = ''
        Unix socket of the privileged actuator (compliance-agent-actuator.socket
        listens here). Keep it in a directory only root can write (the default
        is): from a directory the agent owns, it could swap the socket for a
        symlink or its own listener. Null runs actions in-process, which, the agent being
        unprivileged, leaves it observe-only; the agent's own default is null
        because outside this module it may run as root.
      '';
    };

    metricsTextfile = mkOption {
      type = types.nullOr types.str;
      default =
        if cfg.metricsNodeExporter then "${cfg.metricsTextfileDirectory}/compliance_agent.prom" else null;
      defaultText = literalExpression ''
        if metricsNodeExporter then "''${metricsTextfileDirectory}/compliance_agent.prom" else null'';
      description = "Prometheus textfile written atomically after every pass; null disables it.";
    };

    egressTable = mkOption {
      type = types.strMatching "[A-Za-z_][A-Za-z0-9_]*";
      default = "compliance_egress";
      description = "nftables 'inet' table holding the egress allowlist sets (allowed_v4, allowed_v6).";
    };

    workers = mkOption {
      type = types.ints.between 1 16;
      default = 2;
      description = "Concurrent reconcile workers.";
    };

    watches = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Reconcile a resource as soon as a systemd unit or a file it depends on
        changes (unit signals on the system bus, inotify on the baseline,
        ruleset, AV engine and signature files and /run/current-system),
        instead of waiting for the next pass. The periodic pass stays; a watch
        that fails degrades to polling and retries. false: polling only.
      '';
    };

    evidenceSnapshotInterval = mkOption {
      type = types.ints.positive;
      default = 3600;
      description = "Seconds between periodic evidence snapshots per resource.";
    };

    # --- module-only options (not in the agent's JSON) ---

    metricsNodeExporter = mkOption {
      type = types.bool;
      # node_exporter enables its textfile collector by default: wire it
      # whenever the exporter runs, unless the host disabled that collector.
      default = nodeExporter.enable && !(lib.elem "textfile" nodeExporter.disabledCollectors);
      defaultText = literalExpression
        ''config.services.prometheus.exporters.node.enable && !(elem "textfile" config.services.prometheus.exporters.node.disabledCollectors)'';
      description = ''
        Wire the node exporter's textfile collector to metricsTextfileDirectory
        (adds --collector.textfile.directory; turn off if you set that flag yourself).
      '';
    };

    metricsTextfileDirectory = mkOption {
      type = types.str;
      default = "/var/lib/prometheus-node-exporter-text";
      description = "Directory the node exporter's textfile collector reads (created 0755, owner compliance-agent).";
    };

    extraPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      example = literalExpression "[ pkgs.restic pkgs.borgbackup ]";
      description = ''
        Extra packages on the PATH of the agent and of the actuator, e.g. the
        backup tools of jobs a control-plane baseline adds (restic and borg
        are added by themselves for the jobs of a baseline given as a Nix path).
        The backup controller's reads run in the root actuator, which alone can
        read the jobs' password files and repositories.
      '';
    };

    egressRefreshInterval = mkOption {
      type = types.str;
      default = "hourly";
      description = "systemd OnCalendar= of the egress allowlist refresh.";
    };

    evidencePruneInterval = mkOption {
      type = types.str;
      default = "daily";
      description = "systemd OnCalendar= of evidence pruning.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.siteId != null;
        message = "services.compliance-agent.siteId is not set: set it to the site identifier the control plane assigned (e.g. \"clinic-0042\").";
      }
      {
        assertion = cfg.hostId != "";
        message = "services.compliance-agent.hostId is empty: set networking.hostName or hostId.";
      }
      {
        assertion = cfg.actuatorSocket == null
          || !(lib.hasPrefix "${runtimeDir}/" cfg.actuatorSocket || lib.hasPrefix "${cfg.stateDirectory}/" cfg.actuatorSocket);
        message = "services.compliance-agent.actuatorSocket = \"${toString cfg.actuatorSocket}\" is inside a directory the agent can write: put it in a root-owned directory such as ${actuatorRuntimeDir}/ (the default).";
      }
      {
        assertion = cfg.baselinePath != null;
        message = "services.compliance-agent.baselinePath is not set: point it at the local baseline JSON (e.g. ./baseline.json).";
      }
      {
        assertion = cfg.caCertFile != null;
        message = "services.compliance-agent.caCertFile is not set: give the CA certificate that signs the control plane's server certificate.";
      }
      {
        assertion = window != null && !windowEmpty;
        message = "services.compliance-agent.maintenanceWindow = \"${cfg.maintenanceWindow}\" is not a non-empty UTC window 'HH:MM-HH:MM' (e.g. \"02:00-04:00\"; may cross midnight, like \"22:00-02:00\").";
      }
      {
        assertion = cfg.deploymentMode != "reseller" || (cfg.resellerId != null && cfg.resellerId != "");
        message = "services.compliance-agent.resellerId is required when deploymentMode = \"reseller\": set resellerId, or deploymentMode = \"direct\".";
      }
      {
        assertion = mcpHost != null;
        message = "services.compliance-agent.mcpUrl = \"${cfg.mcpUrl}\" must be an https:// URL with a host name.";
      }
      {
        assertion = mcpHost == null || lib.elem mcpHost cfg.allowedHosts;
        message = "services.compliance-agent.mcpUrl host \"${toString mcpHost}\" is not in allowedHosts [${lib.concatStringsSep ", " cfg.allowedHosts}]: the egress allowlist would block the control plane; add it to allowedHosts.";
      }
      {
        assertion = cfg.mcpPublicKeys != [ ];
        message = "services.compliance-agent.mcpPublicKeys is empty: add at least one trusted control-plane Ed25519 public key (64 hex characters).";
      }
      {
        assertion = cfg.rmmWebhookUrl == null || cfg.webhookSecretFile != null;
        message = "services.compliance-agent.rmmWebhookUrl needs webhookSecretFile (the path of the HMAC secret, e.g. from sops-nix).";
      }
      {
        assertion = cfg.syslogTarget == null || builtins.match syslogRegex cfg.syslogTarget != null;
        message = "services.compliance-agent.syslogTarget = \"${toString cfg.syslogTarget}\" must look like \"tls://host:6514\", \"tcp://host:514\" or \"udp://host:514\".";
      }
      {
        assertion = !syslogTls || cfg.syslogCaFile != null;
        message = "services.compliance-agent.syslogTarget = \"${toString cfg.syslogTarget}\" uses TLS: set syslogCaFile to the CA certificate that signs the syslog collector's certificate.";
      }
      {
        assertion = cfg.syslogCaFile == null || syslogTls;
        message = "services.compliance-agent.syslogCaFile is only used with a tls:// syslogTarget (set syslogTarget = \"tls://host:6514\", or remove syslogCaFile).";
      }
      {
        assertion = syslogParts == null || cfg.egressAllowConfiguredHosts
          || lib.elem (builtins.elemAt syslogParts 1) cfg.allowedHosts;
        message = "services.compliance-agent.syslogTarget host \"${if syslogParts == null then "" else builtins.elemAt syslogParts 1}\" is not in allowedHosts: the egress allowlist would drop syslog; add it to allowedHosts (or leave egressAllowConfiguredHosts on).";
      }
      {
        assertion = cfg.natsUrl == null || natsParts != null;
        message = "services.compliance-agent.natsUrl = \"${toString cfg.natsUrl}\" must look like \"tls://nats.example.net:4222\" (TLS only, no credentials in the URL).";
      }
      {
        assertion = natsParts == null || cfg.egressAllowConfiguredHosts
          || lib.elem (builtins.elemAt natsParts 0) cfg.allowedHosts;
        message = "services.compliance-agent.natsUrl host \"${if natsParts == null then "" else builtins.elemAt natsParts 0}\" is not in allowedHosts: the egress allowlist would block order wake-ups; add it to allowedHosts (or leave egressAllowConfiguredHosts on).";
      }
      {
        assertion = lib.hasPrefix "/var/lib/" cfg.stateDirectory;
        message = "services.compliance-agent.stateDirectory = \"${cfg.stateDirectory}\" must be under /var/lib/ (it is the unit's StateDirectory).";
      }
    ] ++ map (name: {
      assertion = cfg.${name} != null || name == "webhookSecretFile";
      message = "services.compliance-agent.${name} is not set: give the path of the file (e.g. config.sops.secrets.\"compliance-agent/...\".path).";
    }) secretOptions
    ++ map (name: {
      assertion = !(badSecretPath cfg.${name});
      message = "services.compliance-agent.${name} = \"${toString cfg.${name}}\" must be an absolute path outside /nix/store (the store is world-readable): use a runtime secret path such as one from sops-nix, as a string, not a Nix path.";
    }) secretOptions;

    users.users.${user} = {
      isSystemUser = true;
      group = user;
      home = cfg.stateDirectory;
      description = "compliance-agent reconciler";
    };
    users.groups.${user} = { };

    # The agent's runtime directory, and root's own for the actuator socket
    # (root:agent 0750: the agent may reach the socket, never replace it).
    systemd.tmpfiles.rules = [ "d ${runtimeDir} 0750 ${user} ${user} -" ]
      ++ lib.optional (cfg.actuatorSocket != null) "d ${dirOf cfg.actuatorSocket} 0750 root ${user} -"
      ++ lib.optional cfg.metricsNodeExporter "d ${cfg.metricsTextfileDirectory} 0755 ${user} ${user} -";

    systemd.services.compliance-agent = {
      description = "Compliance agent: declarative compliance reconciler";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" "compliance-agent-actuator.socket" ];
      # The allowlist is filled before the agent's first HTTPS request.
      after = [ "network-online.target" "nftables.service" "compliance-agent-actuator.socket" ]
        ++ lib.optional cfg.enforceEgress "compliance-agent-egress-refresh.service";
      restartTriggers = [ configFile ];
      path = agentPath;
      serviceConfig = unprivilegedHardening // {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${exe} run --config ${configFile}";
        # Pinged while the loop is healthy; a worker may wait minutes on a
        # rebuild transaction through the actuator.
        WatchdogSec = "15min";
        Restart = "on-failure";
        RestartSec = "10s";
        RuntimeDirectory = "compliance-agent";
        RuntimeDirectoryMode = "0750";
        SyslogIdentifier = "compliance-agent";
      };
    };

    systemd.sockets.compliance-agent-actuator = mkIf (cfg.actuatorSocket != null) {
      description = "Compliance agent privileged actuator socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ cfg.actuatorSocket ];
      socketConfig = {
        SocketUser = "root";
        SocketGroup = user;
        SocketMode = "0660";
        DirectoryMode = "0750"; # only if tmpfiles has not made it root:${user} already
        Accept = false;
        RemoveOnStop = true;
      };
    };

    systemd.services.compliance-agent-actuator = mkIf (cfg.actuatorSocket != null) {
      description = "Compliance agent privileged actuator (typed actions only)";
      requires = [ "compliance-agent-actuator.socket" ];
      after = [ "compliance-agent-actuator.socket" ];
      restartTriggers = [ configFile ];
      # Fixed argv only, no shell; these are what the typed actions run.
      # Plus the backup tools: the backup controller's reads run here, as root.
      path = [ config.systemd.package pkgs.nftables config.nix.package config.system.build.nixos-rebuild ]
        ++ backupTools ++ cfg.extraPackages;
      # Builds go to nix-daemon, outside this unit's seccomp/personality limits
      # (as root, nix would otherwise use the store directly and build here).
      environment.NIX_REMOTE = "daemon";
      serviceConfig = {
        Type = "simple";
        ExecStart = "${exe} actuator --config ${configFile} --allow-user ${user} --idle-exit 600";
        # Killed or crashed mid-rebuild: come back at once and finish the journaled
        # transaction (health check, rollback) instead of waiting for the agent's
        # next connection. An idle exit is a clean exit and is not restarted.
        Restart = "on-failure";
        RestartSec = "1s";
        SyslogIdentifier = "compliance-agent-actuator";
        # The signed baseline it verified itself and its high-water mark (root, 0700).
        StateDirectory = "compliance-agent-actuator";
        StateDirectoryMode = "0700";
        # Root. The switch itself now runs in a transient unit (systemd-run,
        # outside this sandbox), but nix-env runs here and this sandbox was
        # sized for NixOS activation, which writes /etc, /home, /boot, creates setuid wrappers,
        # mounts, and nix builds in namespaces. So no mount namespace
        # (PrivateTmp, ProtectSystem, ProtectKernelLogs: activation's mounts
        # would not reach the host), no device ACL (ProtectClock implies one;
        # bootloader installs write disks), the usual umask, and only
        # seccomp/capability restrictions that activation never needs:
        UMask = "0022";
        NoNewPrivileges = true;
        LockPersonality = true;
        RestrictRealtime = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "~@clock" "~@cpu-emulation" "~@debug" "~@obsolete" "~@raw-io" "~@reboot" "~@swap"
        ];
        SystemCallErrorNumber = "EPERM";
        CapabilityBoundingSet = [
          "~CAP_SYS_PTRACE" "~CAP_SYS_TIME" "~CAP_WAKE_ALARM" "~CAP_SYSLOG"
          "~CAP_MAC_ADMIN" "~CAP_MAC_OVERRIDE" "~CAP_SYS_BOOT"
        ];
        RestrictAddressFamilies = [ "AF_UNIX" "AF_NETLINK" "AF_INET" "AF_INET6" ];
      };
    };

    systemd.services.compliance-agent-egress-refresh = {
      description = "Compliance agent: refresh the egress allowlist from DNS";
      # At boot: as soon as the network is online (ordering, no timer delay),
      # and before the agent; later hourly (timer) and after nftables reloads.
      wantedBy = lib.optional cfg.enforceEgress "multi-user.target";
      wants = [ "network-online.target" "compliance-agent-actuator.socket" ];
      after = [ "network-online.target" "nss-lookup.target" "nftables.service" "compliance-agent-actuator.socket" ];
      before = [ "compliance-agent.service" ];
      path = agentPath;
      serviceConfig = unprivilegedHardening // {
        Type = "oneshot";
        ExecStart = "${exe} egress refresh --config ${configFile}";
        SyslogIdentifier = "compliance-agent-egress";
      };
    };

    systemd.timers.compliance-agent-egress-refresh = {
      description = "Refresh the compliance-agent egress allowlist";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.egressRefreshInterval;
        RandomizedDelaySec = "5min";
        Persistent = true;
      };
    };

    systemd.services.compliance-agent-evidence-prune = {
      description = "Compliance agent: prune old evidence (keeps the newest and the last success per check)";
      serviceConfig = unprivilegedHardening // {
        Type = "oneshot";
        ExecStart = "${exe} evidence prune --config ${configFile}";
        SyslogIdentifier = "compliance-agent-prune";
      };
    };

    systemd.timers.compliance-agent-evidence-prune = {
      description = "Prune compliance-agent evidence";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.evidencePruneInterval;
        RandomizedDelaySec = "1h";
        Persistent = true;
      };
    };

    # The clock guard needs a synchronized clock; keep any NTP daemon the host chose.
    services.timesyncd.enable = mkIf
      (!(config.services.chrony.enable || config.services.ntp.enable || config.services.openntpd.enable))
      (mkDefault true);

    services.prometheus.exporters.node.extraFlags = mkIf cfg.metricsNodeExporter
      [ "--collector.textfile.directory=${cfg.metricsTextfileDirectory}" ];

    environment.systemPackages = [ cfg.package ];

    # Every CLI command reads this file when neither --config nor
    # $COMPLIANCE_AGENT_CONFIG is given, so operators type no store path. It is a
    # link to the very file the units run with (paths and public keys only, no
    # secrets). ExecStart keeps the store path: a config change then restarts the
    # units with exactly the file they were started for (restartTriggers), rather
    # than activation swapping /etc under a running daemon and actuator.
    environment.etc."compliance-agent/config.json".source = configFile;
  };
}
