# A stand-in for sops-nix's NixOS module (Mic92/sops-nix, modules/sops/default.nix
# and manifest-for.nix, as of 2026), so that the examples evaluate with its
# option semantics in the flake checks and in the stub evaluation
# (nix/eval/eval.nix) without the sops-nix input. Declared as sops-nix
# declares them (the options the examples use):
#
# * sops.defaultSopsFile: a `path`, no default; with validateSopsFiles (on by
#   default) every secret's sopsFile must be a Nix path or a store path and
#   must exist: sops-nix hashes it at evaluation (builtins.hashFile) and its
#   manifest throws "... is not in the Nix store. Either add it to the Nix
#   store or set sops.validateSopsFiles to false" otherwise; a plain string
#   like "/etc/nixos/secrets.yaml" fails exactly there;
# * a key source is required once there are secrets: "No key source configured
#   for sops. Either set services.openssh.enable or set sops.age.keyFile or
#   sops.gnupg.home" (openssh host keys count through sops.age.sshKeyPaths,
#   whose default this stand-in leaves empty);
# * sops.age.keyFile: null or a path outside the Nix store;
# * sops.secrets.<name>: owner/group/mode/path/restartUnits/... with sops-nix's
#   types and defaults (path defaults to /run/secrets/<name>).
#
# Not emulated: decryption and sops-install-secrets' build-time check of the
# file's content (the examples' secrets file is a placeholder to replace).
{ config, lib, ... }:
let
  cfg = config.sops;
  inherit (lib) mkOption types;
  b = builtins;
  pathNotInStore = types.addCheck types.str (x: !(lib.hasPrefix b.storeDir x));
  storeOrPath = f: b.isPath f || (b.isString f && lib.hasPrefix b.storeDir f);
  secretType = types.submodule ({ name, config, ... }: {
    options = {
      name = mkOption { type = types.str; default = name; };
      key = mkOption { type = types.str; default = name; };
      path = mkOption { type = types.str; default = "/run/secrets/${config.name}"; };
      format = mkOption { type = types.enum [ "yaml" "json" "binary" "dotenv" "ini" ]; default = "yaml"; };
      mode = mkOption { type = types.str; default = "0400"; };
      owner = mkOption { type = types.nullOr types.str; default = null; };
      uid = mkOption { type = types.nullOr types.int; default = 0; };
      group = mkOption { type = types.nullOr types.str; default = null; };
      gid = mkOption { type = types.nullOr types.int; default = 0; };
      sopsFile = mkOption { type = types.path; default = cfg.defaultSopsFile; };
      restartUnits = mkOption { type = types.listOf types.str; default = [ ]; };
      reloadUnits = mkOption { type = types.listOf types.str; default = [ ]; };
      neededForUsers = mkOption { type = types.bool; default = false; };
    };
  });
  secretFiles = lib.unique (map (s: s.sopsFile) (b.attrValues cfg.secrets));
in
{
  options.sops = {
    secrets = mkOption { type = types.attrsOf secretType; default = { }; };
    defaultSopsFile = mkOption { type = types.path; description = "Default sops file used for all secrets."; };
    validateSopsFiles = mkOption { type = types.bool; default = true; };
    age.keyFile = mkOption { type = types.nullOr pathNotInStore; default = null; };
    age.sshKeyPaths = mkOption { type = types.listOf types.path; default = [ ]; };
    gnupg.home = mkOption { type = types.nullOr types.str; default = null; };
    gnupg.sshKeyPaths = mkOption { type = types.listOf types.path; default = [ ]; };
  };

  config.assertions = lib.optionals (cfg.secrets != { }) ([
    {
      assertion = cfg.gnupg.home != null || cfg.gnupg.sshKeyPaths != [ ]
        || cfg.age.keyFile != null || cfg.age.sshKeyPaths != [ ];
      message = "No key source configured for sops. Either set services.openssh.enable or set sops.age.keyFile or sops.gnupg.home";
    }
  ] ++ lib.optionals cfg.validateSopsFiles (map (f: {
    # sops-nix: builtins.hashFile at evaluation, then manifest-for.nix's checks
    assertion = storeOrPath f && b.pathExists f;
    message = if !(storeOrPath f)
      then "'${toString f}' is not in the Nix store. Either add it to the Nix store or set sops.validateSopsFiles to false"
      else "Cannot find path '${toString f}' set in sops.secrets.*.sopsFile";
  }) secretFiles));
}
