#!/usr/bin/env bash
# Make sure the Python minor versions the nixpkgs build emulation needs are
# installed (scripts/nixpkgs-build-emulation.py: one per release in
# nix/nixpkgs-versions.toml, e.g. 3.13 for NixOS 26.05).
#
# Found as python3.X on PATH or in pyenv's versions/ (the project's machine
# image ships pyenv with 3.10 to 3.13). Missing and pyenv present: `pyenv
# install` (builds from python.org's sources; needs that network). Otherwise:
# says how to get one and exits 0, and the emulation test then fails (CI) or
# skips (locally) with the same message.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t minors < <(sed -n 's/^python *= *"\([0-9.]*\)".*/\1/p' "$here/../nix/nixpkgs-versions.toml" | sort -u)
pyenv_root=${PYENV_ROOT:-$HOME/.pyenv}
found() {
  command -v "python$1" >/dev/null 2>&1 && "python$1" -c 'import venv' >/dev/null 2>&1 && return 0
  compgen -G "$pyenv_root/versions/$1.*/bin/python$1" >/dev/null
}
for v in "${minors[@]}"; do
  found "$v" && continue
  if command -v pyenv >/dev/null 2>&1 || [ -x "$pyenv_root/bin/pyenv" ]; then
    echo "installing Python $v with pyenv (needed by the nixpkgs build emulation)" >&2
    PATH="$pyenv_root/bin:$PATH" pyenv install -s "$v" || true
  fi
  found "$v" || echo "note: no Python $v (the nixpkgs build emulation needs it): install it, e.g. \`pyenv install $v\`" >&2
done
exit 0
