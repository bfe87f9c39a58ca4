# Stub declarations of the NixOS options nix/module.nix reads, with NixOS's
# defaults; the ones it writes are in ./nixos-options.nix with NixOS's types.
# Anything else (e.g. sops.* without sops-nix) is merged freeform by stub-lib.nix.
{ lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  flag = default: mkOption { type = types.bool; inherit default; };
in
{
  imports = [ ./nixos-options.nix ];
  options = {
    assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    networking.nameservers = mkOption { type = types.listOf types.str; default = [ ]; };
    networking.firewall.extraCommands = mkOption { type = types.lines; default = ""; };
    networking.firewall.extraStopCommands = mkOption { type = types.lines; default = ""; };
    nix.settings.substituters = mkOption { type = types.listOf types.str; default = [ "https://cache.nixos.org/" ]; };
    services.chrony.enable = flag false;
    services.ntp.enable = flag false;
    services.openntpd.enable = flag false;
    services.timesyncd.enable = flag true;
    services.prometheus.exporters.node = {
      enable = flag false;
      enabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
      disabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
      extraFlags = mkOption { type = types.listOf types.str; default = [ ]; };
    };
    systemd.package = mkOption { type = types.package; default = pkgs.systemd; };
    nix.package = mkOption { type = types.package; default = pkgs.nix; };
    system.build = mkOption {
      type = types.attrsOf types.anything;
      default = { nixos-rebuild = pkgs.mkDrv "nixos-rebuild"; };
    };
  };
}
