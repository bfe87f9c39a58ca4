# The NixOS options nix/module.nix sets, declared with the types NixOS gives
# them, so that the stub evaluation rejects what NixOS would reject: a string
# where NixOS wants a list of unit names, a list merged into a unit option
# another module defines as a string, an unknown attribute of a systemd unit,
# a table family nftables does not have, ...
#
# Read from NixOS's own declarations (nixpkgs, 25.x/26.x series):
# * nixos/lib/systemd-unit-options.nix: unitOption (lists and non-lists may
#   not be mixed), unit dependencies (listOf unitNameType), serviceConfig
#   (attrsOf unitOption, Type/Restart checked), environment, path,
#   restartTriggers, socketConfig, listenStreams, timerConfig;
# * nixos/lib/systemd-lib.nix: unitNameType;
# * nixos/modules/config/users-groups.nix: users.users.<name>, users.groups.<name>;
# * nixos/modules/services/networking/nftables.nix: networking.nftables.*;
# * nixos/modules/system/boot/systemd/tmpfiles.nix: systemd.tmpfiles.rules.
# Only the options of those submodules that the module (or its tests) use are
# declared; an attribute outside them fails here as "does not exist".
{ lib, ... }:
let
  inherit (lib) mkOption types;
  b = builtins;

  unitNameType = types.strMatching
    "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
  units = mkOption { type = types.listOf unitNameType; default = [ ]; };

  atom = v: v == null || b.isBool v || b.isString v || b.isInt v || b.isFloat v || b.isPath v
    || (b.isAttrs v && (v.type or null) == "derivation");
  unitOption = {
    _type = "option-type";
    name = "systemd option";
    description = "systemd option";
    check = v: atom v || (b.isList v && b.all atom v);
    merge = path: values:
      if b.isList (b.head values) then b.concatMap (v:
        if b.isList v then v
        else throw "The definitions for systemd unit options should be either all lists, representing repeatable options, or all non-lists, but for the option ${b.concatStringsSep "." path}, the definitions are a mix of list and non-list: ${b.toJSON values}") values
      else if b.all (v: v == b.head values) values then b.head values
      else throw "The option `${b.concatStringsSep "." path}' has conflicting definition values: ${b.toJSON values}";
  };
  unitSection = mkOption { type = types.attrsOf unitOption; default = { }; };
  oneOfValue = key: allowed: cfg:
    !(cfg ? ${key}) || b.isList cfg.${key} || b.elem cfg.${key} allowed;
  checkService = cfg:
    oneOfValue "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ] cfg
    && oneOfValue "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-watchdog" "on-abort" "always" ] cfg;

  commonUnit = {
    enable = mkOption { type = types.bool; default = true; };
    description = mkOption { type = types.singleLineStr; default = ""; };
    documentation = mkOption { type = types.listOf types.str; default = [ ]; };
    wantedBy = units; requiredBy = units; upheldBy = units; aliases = units;
    requires = units; wants = units; upholds = units; after = units; before = units;
    bindsTo = units; partOf = units; conflicts = units; requisite = units; onFailure = units;
    unitConfig = unitSection;
    restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    reloadTriggers = mkOption { type = types.listOf unitOption; default = [ ]; };
    startLimitBurst = mkOption { type = types.int; };
    startLimitIntervalSec = mkOption { type = types.int; };
  };
  service = types.submodule {
    options = commonUnit // {
      environment = mkOption {
        type = types.attrsOf (types.nullOr (types.oneOf [ types.str types.path types.package ]));
        default = { };
      };
      path = mkOption { type = types.listOf (types.oneOf [ types.package types.str ]); default = [ ]; };
      serviceConfig = mkOption { type = types.addCheck (types.attrsOf unitOption) checkService; default = { }; };
      script = mkOption { type = types.lines; default = ""; };
      preStart = mkOption { type = types.lines; default = ""; };
      postStart = mkOption { type = types.lines; default = ""; };
      restartIfChanged = mkOption { type = types.bool; default = true; };
      reloadIfChanged = mkOption { type = types.bool; default = false; };
      stopIfChanged = mkOption { type = types.bool; default = true; };
      startAt = mkOption { type = types.either types.str (types.listOf types.str); default = [ ]; };
    };
  };
  socket = types.submodule {
    options = commonUnit // {
      listenStreams = mkOption { type = types.listOf types.str; default = [ ]; };
      listenDatagrams = mkOption { type = types.listOf types.str; default = [ ]; };
      socketConfig = unitSection;
    };
  };
  timer = types.submodule { options = commonUnit // { timerConfig = unitSection; }; };

  user = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.passwdEntry types.str; default = name; };
      isSystemUser = mkOption { type = types.bool; default = false; };
      isNormalUser = mkOption { type = types.bool; default = false; };
      group = mkOption { type = types.str; default = ""; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; };
      home = mkOption { type = types.passwdEntry types.path; default = "/var/empty"; };
      createHome = mkOption { type = types.bool; default = false; };
      description = mkOption { type = types.passwdEntry types.str; default = ""; };
      uid = mkOption { type = types.nullOr types.int; default = null; };
    };
  });
  group = types.submodule ({ name, ... }: {
    options = {
      name = mkOption { type = types.passwdEntry types.str; default = name; };
      gid = mkOption { type = types.nullOr types.int; default = null; };
      members = mkOption { type = types.listOf (types.passwdEntry types.str); default = [ ]; };
    };
  });

  nftTable = types.submodule ({ name, ... }: {
    options = {
      enable = mkOption { type = types.bool; default = true; };
      name = mkOption { type = types.str; default = name; };
      content = mkOption { type = types.lines; };
      family = mkOption { type = types.enum [ "ip" "ip6" "inet" "arp" "bridge" "netdev" ]; };
    };
  });
in
{
  options = {
    systemd.services = mkOption { type = types.attrsOf service; default = { }; };
    systemd.sockets = mkOption { type = types.attrsOf socket; default = { }; };
    systemd.timers = mkOption { type = types.attrsOf timer; default = { }; };
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };

    users.users = mkOption { type = types.attrsOf user; default = { }; };
    users.groups = mkOption { type = types.attrsOf group; default = { }; };

    networking.nftables = {
      enable = mkOption { type = types.bool; default = false; };
      ruleset = mkOption { type = types.lines; default = ""; };
      flushRuleset = mkOption { type = types.bool; default = false; };
      tables = mkOption { type = types.attrsOf nftTable; default = { }; };
    };

    environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
  };
}
