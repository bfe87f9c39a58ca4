# compliance-agent, built from pyproject.toml (setuptools backend) the way
# current nixpkgs writes a Python application (`pyproject = true`,
# `build-system`, `dependencies`). The unit tests run in the build (fast, no
# root); integration tests need root, nspawn, nft, ... and run in CI (.ci/run)
# and the NixOS VM test.
#
# scripts/nixpkgs-build-emulation.py reads this file (through
# nix/eval/package-inputs.nix) and replays the build off Nix with the versions
# of nix/nixpkgs-versions.toml: pypa build without isolation, the runtime-deps
# check of every Requires-Dist, then this check phase with only
# nativeCheckInputs (tests/integration/test_nixpkgs_build.py).
#
# Release-specific: `enabledTestPaths` is read by pytestCheckHook since nixpkgs
# 25.05 (older releases ignore it and would collect tests/integration too).
{ lib, python3Packages, installShellFiles }:

let
  # The version lives in pyproject.toml only.
  project = (builtins.fromTOML (builtins.readFile ../pyproject.toml)).project;
in
python3Packages.buildPythonApplication {
  pname = project.name;
  inherit (project) version;
  pyproject = true;

  src = lib.cleanSourceWith {
    src = ../.;
    # Only what the Python build and its tests read; editing docs or Nix
    # files does not rebuild the package.
    filter = path: type:
      let rel = lib.removePrefix (toString ../. + "/") (toString path); in
      lib.any (p: rel == p || lib.hasPrefix "${p}/" rel) [
        "pyproject.toml" "README.md" "LICENSE" "specs" "controllers" "reconciler" "tests" "schemas"
        # the example baselines: unit tests parse them
        "examples"
      ];
  };

  build-system = with python3Packages; [ setuptools ];

  dependencies = with python3Packages; [
    pydantic
    httpx
    pynacl
    sqlalchemy
    prometheus-client
    cryptography
    jeepney
  ];

  # Everything tests/unit imports beyond the dependencies (dnslib: the DNS
  # test server of tests/support).
  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-timeout
    freezegun
    hypothesis
    trustme
    securesystemslib
    dnslib
  ];
  enabledTestPaths = [ "tests/unit" ];
  # Tests of the DEV ONLY demo (control plane, NATS stack): the demo is not
  # part of the package, so neither its source nor its dependencies are here.
  disabledTestPaths = [
    "tests/unit/test_control_plane_checkpoints.py"
    "tests/unit/test_control_plane_storage_open.py"
    "tests/unit/test_demo_compose.py"
    "tests/unit/test_demo_nats.py"
    # checks the repository's docs/, which the package source leaves out
    "tests/unit/test_threat_model_doc.py"
  ];

  # Shell completion and the man page, generated from the CLI's own parser.
  nativeBuildInputs = [ installShellFiles ];
  postInstall = ''
    gen() {
      PYTHONPATH="$out/${python3Packages.python.sitePackages}:$PYTHONPATH" \
        ${python3Packages.python.interpreter} -m reconciler.cli.docgen "$@"
    }
    gen completion bash > compliance-agent.bash
    gen completion zsh > compliance-agent.zsh
    gen completion fish > compliance-agent.fish
    gen man > compliance-agent.1
    installShellCompletion --cmd compliance-agent \
      --bash compliance-agent.bash --zsh compliance-agent.zsh --fish compliance-agent.fish
    installManPage compliance-agent.1
  '';

  pythonImportsCheck = [ "specs.config" "reconciler.cli.main" "reconciler.actuator.server" ];

  meta = {
    description = "Declarative compliance reconciler for NixOS hosts at regulated sites";
    license = lib.licenses.asl20;
    mainProgram = "compliance-agent";
    platforms = lib.platforms.linux;
  };
}
