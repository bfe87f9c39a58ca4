{
  description = "compliance-agent: keep NixOS hosts at a signed compliance baseline, and prove it";

  # No flake.lock is committed yet: it could not be generated offline. The
  # first `nix flake lock` (or any nix command on the flake) pins nixpkgs.
  #
  # NixOS 26.05, the current stable release (supported to the end of 2026).
  # What depends on the release, and since when (nix/module.nix, nix/package.nix):
  # * networking.nftables.tables deleted and recreated by nftables.service,
  #   flushRuleset defaulting to true only with a non-empty ruleset, ExecReload
  #   a list and ExecStartPost a string (nftables.nix as of 23.11 and later);
  # * buildPythonApplication with pyproject/build-system/dependencies (24.05+)
  #   and pytestCheckHook's enabledTestPaths (25.05+);
  # * config.system.build.nixos-rebuild (nixos-rebuild-ng from 25.11 on);
  # * the Python versions of nix/nixpkgs-versions.toml (python3 = 3.13),
  #   which the build emulation (make nixpkgs-build) checks against.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (system: pkgs: rec {
        compliance-agent = pkgs.callPackage ./nix/package.nix { };
        default = compliance-agent;
      });

      nixosModules = rec {
        compliance-agent = { pkgs, lib, ... }: {
          imports = [ ./nix/module.nix ];
          services.compliance-agent.package =
            lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.compliance-agent;
        };
        default = compliance-agent;
      };

      checks = forAllSystems (system: pkgs:
        let
          python = pkgs.python3.withPackages (ps: self.packages.${system}.compliance-agent.propagatedBuildInputs
            ++ [ ps.pytest ps.pytest-timeout ]);
          # The real module under the real nixpkgs: evaluating toplevel's
          # units runs every assertion and type check against NixOS itself.
          exampleSystem = example: nixpkgs.lib.nixosSystem {
            inherit system;
            modules = [
              self.nixosModules.default
              ./nix/tests/sops-stub.nix
              example
              {
                boot.loader.grub.enable = false;
                fileSystems."/" = { device = "/dev/vda"; fsType = "ext4"; };
                system.stateVersion = "26.05";
              }
            ];
          };
          # Fails the check with the module's own messages if an assertion fires.
          unitsOf = example:
            let
              cfg = (exampleSystem example).config;
              failed = map (a: a.message) (builtins.filter (a: !a.assertion) cfg.assertions);
            in
            if failed != [ ] then throw (builtins.concatStringsSep "\n" failed) else cfg.systemd.units;
        in
        {
          # Python unit tests run inside the package build (doCheck).
          package = self.packages.${system}.compliance-agent;

          # Module tests against the stub lib (the same ones CI runs).
          module-eval-stub = pkgs.runCommand "compliance-agent-module-eval-stub"
            {
              nativeBuildInputs = [ python pkgs.nix pkgs.systemd ];
              src = ./.;
            } ''
            export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/nix-state NIX_CONF_DIR=$TMPDIR
            cd $src
            python -m pytest -p no:cacheprovider -q tests/integration/test_nix_module.py \
              tests/integration/test_nix_module_egress.py tests/integration/test_nix_option_types.py \
              tests/integration/test_unit_hardening.py
            touch $out
          '';

          # Module evaluated by real NixOS, for both examples.
          module-eval-direct = pkgs.writeText "direct-units"
            (unitsOf ./examples/direct-config.nix)."compliance-agent.service".text;
          module-eval-reseller = pkgs.writeText "reseller-units"
            (unitsOf ./examples/reseller-config.nix)."compliance-agent-actuator.service".text;

          vm = import ./nix/tests/vm.nix { inherit pkgs self; };
        });

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${system}.compliance-agent ];
          packages = with pkgs; [
            python3Packages.pytest
            python3Packages.mypy
            ruff
            nftables
            restic
            borgbackup
            cryptsetup
            prometheus
            nixpkgs-fmt
          ];
        };
      });

      formatter = forAllSystems (system: pkgs: pkgs.nixpkgs-fmt);

      # DEV ONLY: the demo (control-plane stub + agent) from demo/.
      apps = forAllSystems (system: pkgs:
        let
          python = pkgs.python3.withPackages (ps: [ ps.fastapi ps.uvicorn ps.trustme ]
            ++ self.packages.${system}.compliance-agent.propagatedBuildInputs);
          demoModule =
            if builtins.pathExists ./demo/run_demo.py then "demo.run_demo"
            else if builtins.pathExists ./demo/__main__.py then "demo"
            else "demo.control_plane";
          # DEV ONLY, needs root: it boots a systemd container as the clinic host.
          demo = pkgs.writeShellApplication {
            name = "compliance-agent-demo";
            runtimeInputs = [
              python self.packages.${system}.compliance-agent
              pkgs.systemd pkgs.debootstrap pkgs.nftables pkgs.iproute2 pkgs.util-linux pkgs.zstd
            ];
            text = ''
              export PYTHONPATH=${./.}
              exec python -m ${demoModule} "$@"
            '';
          };
        in
        {
          demo = { type = "app"; program = "${demo}/bin/compliance-agent-demo"; };
          default = { type = "app"; program = "${self.packages.${system}.compliance-agent}/bin/compliance-agent"; };
        });
    };
}
