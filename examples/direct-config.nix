# A clinic that runs compliance-agent directly (no MSP). Import this module
# next to sops-nix's (e.g. `modules = [ sops-nix.nixosModules.sops
# compliance-agent.nixosModules.default ./direct-config.nix ]`) and put the
# four secrets, and the backup password restic-ehr-password, in
# ./secrets/compliance-agent.yaml (sops-encrypted).
#
# Secrets are only paths: sops-nix decrypts them at activation into
# /run/secrets (a tmpfs), the agent's owned by compliance-agent, mode 0400,
# the backup password by root (the agent never reads it). Nothing secret
# enters the Nix store.
{ config, lib, ... }:
let
  secret = name: {
    owner = "compliance-agent";
    group = "compliance-agent";
    mode = "0400";
    restartUnits = [ "compliance-agent.service" ];
  };
  secretPath = name: config.sops.secrets."compliance-agent/${name}".path;
in
{
  # A Nix path (copied to the store, encrypted): sops-nix validates it at
  # evaluation. The key that decrypts it stays on the host, outside the store.
  sops.defaultSopsFile = ./secrets/compliance-agent.yaml;
  sops.age.keyFile = "/var/lib/sops-nix/key.txt";
  sops.secrets = {
    "compliance-agent/client.crt" = secret "client.crt";
    "compliance-agent/client.key" = secret "client.key";
    "compliance-agent/signing.key" = secret "signing.key";
    "compliance-agent/mcp-ca.pem" = secret "mcp-ca.pem";
    # The EHR backup's repository password (clinic-baseline.json names this
    # path). Root's alone: the restic job runs as root, and so do the backup
    # controller's reads, through the actuator; the agent never reads it.
    "restic-ehr-password" = {
      owner = "root";
      group = "root";
      mode = "0400";
    };
  };

  # The job clinic-baseline.json checks (unit restic-backups-ehr.service);
  # the repository host is allowed through the egress allowlist by itself.
  services.restic.backups.ehr = {
    repository = "sftp:backup@nas.clinic.lan:/srv/restic/ehr";
    passwordFile = config.sops.secrets."restic-ehr-password".path;
    paths = [ "/var/lib/ehr" ];
    timerConfig = { OnCalendar = "01:00"; Persistent = true; };
  };

  services.compliance-agent = {
    enable = true;
    deploymentMode = "direct";
    siteId = "clinic-0042";
    # services, a restic backup to the NAS over SFTP, egress and time
    baselinePath = ./clinic-baseline.json;
    mcpUrl = "https://mcp.example-health.net";
    allowedHosts = [ "mcp.example-health.net" ];
    mcpPublicKeys = [
      # RFC 8032 test vector 1: replace with your control plane's key
      # (rotate by listing the new key next to the old one)
      "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    ];
    clientCertFile = secretPath "client.crt";
    clientKeyFile = secretPath "client.key";
    signingKeyFile = secretPath "signing.key";
    caCertFile = secretPath "mcp-ca.pem";
    maintenanceWindow = "02:00-04:00";
  };
}
