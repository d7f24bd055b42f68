#!/usr/bin/env bash
# What whole-NAR delta compression could store for a corpus built by
# cmd/mkcorpus: every package's first release at its upstream .nar.xz size,
# and every later release as `zstd -19 --long=27 --patch-from=<previous NAR>`
# (the strongest general-purpose delta at hand, with the whole previous NAR as
# its window). A NAR that a later bump repeats byte for byte (same NarHash)
# counts once, as in `narstore bench`. Prints one line per package and the
# corpus total next to the upstream xz bytes.
#
# Usage: scripts/delta-bound.sh CORPUS_DIR [WORK_DIR]
# Needs xz and zstd. Takes about 10 minutes on the large corpus.
set -euo pipefail
corpus=$1 work=${2:-$(mktemp -d)}
mkdir -p "$work"
declare -A prev seen up bound
for sp in $(ls "$corpus"/bumps/*.store-paths | sort -V); do
  while read -r p; do
    [ -n "$p" ] || continue
    base=${p##*/}; h=${base%%-*}; name=${base#*-}
    pkg=$(echo "$name" | sed -E 's/-[0-9][0-9.]*$//')
    ni="$corpus/cache/$h.narinfo"
    nh=$(grep '^NarHash:' "$ni" | cut -d' ' -f2)
    [ -z "${seen[$nh]:-}" ] || continue
    seen[$nh]=1
    fs=$(grep '^FileSize:' "$ni" | cut -d' ' -f2)
    url=$(grep '^URL:' "$ni" | cut -d' ' -f2)
    [ -f "$work/$h.nar" ] || xz -dc "$corpus/cache/$url" > "$work/$h.nar"
    if [ -n "${prev[$pkg]:-}" ]; then
      b=$(zstd -q -19 --long=27 --patch-from="$work/${prev[$pkg]}.nar" -c "$work/$h.nar" 2>/dev/null | wc -c)
    else
      b=$fs
    fi
    up[$pkg]=$(( ${up[$pkg]:-0} + fs ))
    bound[$pkg]=$(( ${bound[$pkg]:-0} + b ))
    prev[$pkg]=$h
  done < "$sp"
done
tu=0 tb=0
printf '%-32s %12s %12s %7s\n' package upstream_xz bound ratio
for pkg in $(printf '%s\n' "${!up[@]}" | sort); do
  printf '%-32s %12d %12d %7.3f\n' "$pkg" "${up[$pkg]}" "${bound[$pkg]}" "$(echo "${bound[$pkg]} / ${up[$pkg]}" | bc -l)"
  tu=$(( tu + up[$pkg] )); tb=$(( tb + bound[$pkg] ))
done
printf '%-32s %12d %12d %7.3f\n' all "$tu" "$tb" "$(echo "$tb / $tu" | bc -l)"
