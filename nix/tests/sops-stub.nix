# Declares `sops.*` freeform so the examples (written for sops-nix) evaluate
# in checks without the sops-nix input. Real deployments import sops-nix's
# module instead, which gives the same `sops.secrets.<name>.path` the
# examples set explicitly.
{ lib, ... }:
{
  options.sops = lib.mkOption {
    type = lib.types.attrsOf lib.types.anything;
    default = { };
    description = "Stand-in for sops-nix's options (eval checks only).";
  };
}
