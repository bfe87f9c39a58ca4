#!/usr/bin/env bash
# Install the Debian packages the integration tests and the demo need, if any
# are missing. As root: installs them (apt-get). Otherwise: says what is missing
# and exits 0, so unit tests still run (integration tests then skip, or fail in CI).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t pkgs < <(grep -v '^\s*#' "$here/debian-packages.txt" | grep -v '^\s*$')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "note: missing Debian packages (integration tests need them; run as root to install):" >&2
  echo "  apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "note: no apt-get here; install these by other means: ${missing[*]}" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
