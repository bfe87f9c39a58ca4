#!/usr/bin/env bash
# Keep the egress allowlist sets across an nftables (re)load.
#
# NixOS's nftables.service deletes and recreates every table of
# networking.nftables.tables on each start and reload, so the sets the agent
# filled from DNS come back empty and HTTPS stops until the next refresh. The
# module runs `save` before the reload and `restore` right after it (both in
# nftables.service), then starts a DNS refresh.
#
#   egress-sets.sh save|restore TABLE FILE
#
# FILE is one nft transaction: flush both sets, then re-add the saved
# elements (nft's own listing of each set, which `nft -f` accepts as input).
set -euo pipefail
action=$1 table=$2 file=$3
nft=${NFT:-nft}
case "$action" in
save)
  tmp="$file.tmp"
  if "$nft" list set inet "$table" allowed_v4 > "$tmp.v4" 2>/dev/null \
    && "$nft" list set inet "$table" allowed_v6 > "$tmp.v6" 2>/dev/null; then
    {
      echo "flush set inet $table allowed_v4"
      echo "flush set inet $table allowed_v6"
      cat "$tmp.v4" "$tmp.v6"
    } > "$tmp"
    chmod 0600 "$tmp"
    mv "$tmp" "$file"
  fi
  rm -f "$tmp.v4" "$tmp.v6"
  ;;
restore)
  # nothing saved (first start at boot): the DNS refresh fills the sets
  [ -s "$file" ] || exit 0
  "$nft" -f "$file"
  ;;
*)
  echo "usage: $0 save|restore TABLE FILE" >&2
  exit 2
  ;;
esac
