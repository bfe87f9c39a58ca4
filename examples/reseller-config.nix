# A clinic managed by an MSP ("reseller"): the agent also reports to the
# reseller's RMM webhook (HMAC-signed) and to its syslog collector.
# Import next to sops-nix's module; secrets come from
# ./secrets/compliance-agent.yaml (sops-encrypted), decrypted at activation
# into /run/secrets, owner compliance-agent, mode 0400; never in the store.
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
    "compliance-agent/webhook.hmac" = secret "webhook.hmac";
    # The MSP's CA for its syslog collector (public, kept beside the others).
    "compliance-agent/syslog-ca.pem" = secret "syslog-ca.pem";
  };

  services.compliance-agent = {
    enable = true;
    deploymentMode = "reseller";
    resellerId = "msp-northwind";
    siteId = "clinic-0042";
    baselinePath = ./minimal-baseline.json;
    mcpUrl = "https://mcp.northwind-msp.com";
    # every destination: control plane, RMM webhook, syslog collector
    allowedHosts = [ "mcp.northwind-msp.com" "rmm.northwind-msp.com" "siem.northwind-msp.com" ];
    # RFC 8032 test vector 1: replace with the control plane's key.
    mcpPublicKeys = [ "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" ];
    clientCertFile = secretPath "client.crt";
    clientKeyFile = secretPath "client.key";
    signingKeyFile = secretPath "signing.key";
    caCertFile = secretPath "mcp-ca.pem";
    rmmWebhookUrl = "https://rmm.northwind-msp.com/hooks/compliance";
    webhookSecretFile = secretPath "webhook.hmac";
    # Syslog over TLS (RFC 5425): the collector's certificate must chain to
    # the MSP's CA and name siem.northwind-msp.com.
    syslogTarget = "tls://siem.northwind-msp.com:6514";
    syslogCaFile = secretPath "syslog-ca.pem";
    maintenanceWindow = "22:00-02:00";
  };

  # Let Prometheus scrape the agent's textfile metrics via the node exporter.
  services.prometheus.exporters.node = {
    enable = true;
    enabledCollectors = [ "textfile" ];
  };
}
