# compliance-agent: everything starts from these targets on a fresh clone.
#   make test   set up (.venv, Debian packages when root) and run all checks and tests
#   make demo   set up and run the end-to-end demo (needs root for the systemd container)
#   make bench  print the performance numbers (not part of the tests)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PKGS   := specs controllers reconciler

.PHONY: test unit integration lint typecheck schemas schemas-check demo bench deps clean nixpkgs-build completions man

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

deps:
	@scripts/ensure-system-deps.sh
	@scripts/ensure-python.sh

test: $(STAMP) deps lint typecheck schemas-check
	$(PY) -m pytest -q tests

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP) deps
	$(PY) -m pytest -q -m integration tests/integration

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PKGS) tests demo bench
	$(VENV)/bin/lint-imports

typecheck: $(STAMP)
	$(VENV)/bin/mypy --strict $(PKGS)

# nix/package.nix built as nixpkgs builds it (Python 3.13, nixos-26.05's versions),
# without Nix; also part of `make test` (tests/integration/test_nixpkgs_build.py).
nixpkgs-build: $(STAMP)
	$(PY) scripts/nixpkgs-build-emulation.py

schemas: $(STAMP)
	$(PY) -m reconciler.cli.schemas write schemas

schemas-check: $(STAMP)
	$(PY) -m reconciler.cli.schemas check schemas

# Shell completion and the man page, generated from the CLI's parser
# (reconciler/cli/docgen.py; nix/package.nix runs the same at build time).
completions: $(STAMP)
	@mkdir -p build/completions
	$(PY) -m reconciler.cli.docgen completion bash > build/completions/compliance-agent.bash
	$(PY) -m reconciler.cli.docgen completion zsh > build/completions/_compliance-agent
	$(PY) -m reconciler.cli.docgen completion fish > build/completions/compliance-agent.fish

man: $(STAMP)
	@mkdir -p build/man
	$(PY) -m reconciler.cli.docgen man > build/man/compliance-agent.1

demo: $(STAMP) deps
	$(PY) -m demo.run_demo

bench: $(STAMP) deps
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .nixpkgs-emulation build
