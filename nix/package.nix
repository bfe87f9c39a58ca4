# compliance-agent, built from pyproject.toml (setuptools backend).
# The unit tests run in the build (fast, no root); integration tests need
# root, nspawn, nft, ... and run in CI (.ci/run) and the NixOS VM test.
{ lib, python3Packages }:

python3Packages.buildPythonApplication {
  pname = "compliance-agent";
  version = (lib.importTOML ../pyproject.toml).project.version;  # the one place it is written
  format = "pyproject";

  src = lib.cleanSourceWith {
    src = ../.;
    # Only what the Python build and its tests read; editing docs or Nix
    # files does not rebuild the package.
    filter = path: type:
      let rel = lib.removePrefix (toString ../. + "/") (toString path); in
      lib.any (p: rel == p || lib.hasPrefix "${p}/" rel) [
        "pyproject.toml" "README.md" "specs" "controllers" "reconciler" "tests" "schemas"
      ];
  };

  nativeBuildInputs = with python3Packages; [ setuptools ];

  propagatedBuildInputs = with python3Packages; [
    pydantic
    httpx
    pynacl
    sqlalchemy
    prometheus-client
    cryptography
  ];

  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-timeout
    freezegun
    hypothesis
    trustme
    securesystemslib
  ];
  pytestFlagsArray = [ "tests/unit" ];

  pythonImportsCheck = [ "specs.config" "reconciler.cli.main" "reconciler.actuator.server" ];

  meta = {
    description = "Declarative compliance reconciler for NixOS hosts at regulated sites";
    license = lib.licenses.asl20;
    mainProgram = "compliance-agent";
    platforms = lib.platforms.linux;
  };
}
