# What nix/package.nix asks nixpkgs for, as JSON, without nixpkgs: the
# package is called with a `python3Packages` whose attributes are exactly the
# names of one release in nix/nixpkgs-versions.toml (a name package.nix uses
# that the table lacks fails the evaluation: "attribute ... missing"), and
# buildPythonApplication returns its arguments. scripts/nixpkgs-build-emulation.py
# replays the build from this.
#
#   nix-instantiate --eval --strict --json nix/eval/package-inputs.nix --argstr release nixos-26-05
{ release ? "nixos-26-05" }:
let
  b = builtins;
  stubLib = import ./stub-lib.nix;
  table = (b.fromTOML (b.readFile ../nixpkgs-versions.toml)).releases.${release};
  names = b.attrNames (table.build-system // table.packages);
  python3Packages = b.listToAttrs (map (n: { name = n; value = { pname = n; }; }) names) // {
    buildPythonApplication = args: args;
    python = { interpreter = "python3"; sitePackages = "lib/python3/site-packages"; };
  };
  lib = stubLib // {
    cleanSourceWith = { src, filter, ... }: { inherit src filter; };
    licenses.asl20 = { spdxId = "Apache-2.0"; };
    platforms.linux = [ "x86_64-linux" "aarch64-linux" ];
  };
  args = import ../package.nix { inherit lib python3Packages; installShellFiles = { }; };
  repo = ../..;
  # The top-level entries of the repository the source filter keeps (it keeps
  # or drops whole trees by prefix).
  srcEntries = b.filter
    (n: args.src.filter (toString repo + "/${n}") (b.readDir repo).${n})
    (b.attrNames (b.readDir repo));
  pnames = map (p: p.pname);
in
{
  inherit (args) pname version;
  pyproject = args.pyproject or false;
  format = args.format or null;
  # (the older spellings too, so the emulation can replay an older package.nix)
  buildSystem = pnames (args.build-system or args.nativeBuildInputs or [ ]);
  dependencies = pnames (args.dependencies or args.propagatedBuildInputs or [ ]);
  nativeCheckInputs = pnames (args.nativeCheckInputs or [ ]);
  enabledTestPaths = args.enabledTestPaths or args.pytestFlagsArray or [ ];
  disabledTestPaths = args.disabledTestPaths or [ ];
  pytestFlags = args.pytestFlags or [ ];
  pythonImportsCheck = args.pythonImportsCheck or [ ];
  doCheck = args.doCheck or true;
  license = args.meta.license.spdxId;
  inherit srcEntries;
}
