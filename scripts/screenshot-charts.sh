#!/usr/bin/env bash
# Renders every SVG chart narstore bench wrote into OUTDIR with headless
# Chromium (Debian's chromium package) and saves a PNG next to each, so the
# charts can be checked as a browser shows them.
# Usage: scripts/screenshot-charts.sh OUTDIR
set -euo pipefail
out=${1:?usage: scripts/screenshot-charts.sh OUTDIR}
chromium=$(command -v chromium || command -v chromium-browser || true)
[ -n "$chromium" ] || { echo "chromium is not installed: apt-get install chromium" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
for svg in "$out"/*.svg; do
  png="${svg%.svg}.png"
  "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=900,520 \
    --screenshot="$png" "file://$(realpath "$svg")" >/dev/null 2>&1
  [ -s "$png" ] || { echo "no screenshot for $svg" >&2; exit 1; }
  echo "$png"
done
