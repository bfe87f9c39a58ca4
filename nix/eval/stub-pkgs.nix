# Stand-ins for the few `pkgs` attributes nix/module.nix uses. Store paths are
# fake but stable (derived from the name/content), which is all the eval tests
# need: they check what the module writes, not what the packages contain.
{ lib }:
let
  b = builtins;
  # Nix base32 has no e, o, u or t; keep the fake paths shaped like real ones.
  hash32 = s: b.replaceStrings [ "e" ] [ "g" ] (b.substring 0 32 (b.hashString "sha256" s));
  mkDrv = name: {
    type = "derivation";
    inherit name;
    pname = name;
    outPath = "/nix/store/${hash32 name}-${name}";
    meta.mainProgram = name;
  };
in
{
  inherit lib;
  system = "x86_64-linux";
  writeText = name: text: {
    type = "derivation";
    inherit name text;
    outPath = "/nix/store/${hash32 text}-${name}";
  };
  callPackage = fn: overrides:
    mkDrv "compliance-agent-0.1.0" // { pname = "compliance-agent"; meta.mainProgram = "compliance-agent"; };
  nftables = mkDrv "nftables-1.0.9";
  getent = mkDrv "getent-glibc-2.40";
  util-linux = mkDrv "util-linux-2.39";
  cryptsetup = mkDrv "cryptsetup-2.7";
  coreutils = mkDrv "coreutils-9.5";
  systemd = mkDrv "systemd-256";
  nix = mkDrv "nix-2.24";
  openssl = mkDrv "openssl-3.0";
  curl = mkDrv "curl-8.9";
  bash = mkDrv "bash-5.2";
  restic = mkDrv "restic-0.18.0";
  borgbackup = mkDrv "borgbackup-1.4.0";
  inherit mkDrv;
}
