#!/usr/bin/env bash
# Downloads every package tarball named in a corpus spec with npm pack.
# Usage: scripts/fetch-corpus.sh SPEC DOWNLOAD_DIR
set -euo pipefail
spec=$1 dl=$2
mkdir -p "$dl"
grep -v '^#' "$spec" | grep -v '^bumps' | while read -r pkg versions; do
  [ -n "$pkg" ] || continue
  for v in $(echo "$versions" | tr ' ' '\n' | sort -u); do
    name=$(echo "$pkg" | sed 's|^@||; s|/|-|')-$v.tgz
    [ -f "$dl/$name" ] && continue
    (cd "$dl" && npm pack --silent "$pkg@$v" >/dev/null 2>&1) || { echo "npm pack $pkg@$v failed" >&2; exit 1; }
    [ -f "$dl/$name" ] || { echo "expected $dl/$name after npm pack $pkg@$v" >&2; exit 1; }
  done
done
echo "downloaded into $dl"
