# Evaluate nix/module.nix (plus an optional configuration module) with the
# stub lib and print, as JSON, what tests/integration/test_nix_module.py
# checks: option declarations, failed assertions, the generated agent config,
# the systemd units, the egress ruleset and the other NixOS settings.
#
#   nix-instantiate --eval --strict --json --readonly-mode nix/eval/eval.nix \
#     --arg configuration 'import ./examples/direct-config.nix'
{ configuration ? { }, hostName ? "testhost" }:
let
  b = builtins;
  lib = import ./stub-lib.nix;
  pkgs = import ./stub-pkgs.nix { inherit lib; };
  eval = lib.evalModules {
    modules = [
      ../module.nix
      ./nixos-base.nix
      # sops-nix's options, as the examples use them (a stand-in; see its header)
      ../tests/sops-stub.nix
      { networking.hostName = lib.mkDefault hostName; }
      configuration
    ];
    specialArgs = { inherit pkgs; };
  };
  config = eval.config;
  cfg = config.services.compliance-agent;
  decls = eval.options.services.compliance-agent;
  ours = attrs: lib.filterAttrs (n: _: lib.hasPrefix "compliance-agent" n) (if attrs == null then { } else attrs);
  services = ours (config.systemd.services or { });
  configText =
    if services ? compliance-agent then (b.head services.compliance-agent.restartTriggers).text else null;
in
{
  options = b.mapAttrs (name: opt: {
    type = opt.type.name;
    typeDescription = opt.type.description;
    hasDefault = opt ? default;
    default = opt.default or null;
    hasDescription = (opt.description or "") != "";
  }) decls;
  values = lib.filterAttrs (n: _: n != "package") cfg;
  failedAssertions = map (a: a.message) (b.filter (a: !a.assertion) config.assertions);
  inherit configText;
  systemd = {
    inherit services;
    sockets = ours (config.systemd.sockets or { });
    timers = ours (config.systemd.timers or { });
    tmpfiles = config.systemd.tmpfiles.rules or [ ];
  };
  users = config.users or null;
  nftables = config.networking.nftables or null;
  egressRuleset =
    let t = (config.networking.nftables.tables or { }).${cfg.egressTable} or null; in
    if t == null then null else import ../egress-table.nix { inherit lib; } (t.name or cfg.egressTable) t.content;
  nftablesService = (config.systemd.services or { }).nftables or null;
  warnings = config.warnings;
  timesyncd = config.services.timesyncd.enable;
  nodeExporterFlags = config.services.prometheus.exporters.node.extraFlags;
  systemPackages = config.environment.systemPackages or [ ];
  etcConfigText =
    let e = (config.environment.etc or { })."compliance-agent/config.json" or null; in
    if e == null then null else e.source.text;
  sopsSecrets = config.sops.secrets or null;
}
