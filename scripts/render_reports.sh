#!/usr/bin/env bash
# Produces the pictures of `engine diagnose` on a fixture model and, when Chromium is installed,
# screenshots of both HTML pages, for a person to look at:
#   OUT/report.{json,csv,svg,html,png}   diagnosis over 8 random byte sequences of 64 tokens
#   OUT/after.json                        the same model over 8 other sequences
#   OUT/compare.{json,svg,html,png}       --compare report.json after.json with a 2-head plan
# Usage: scripts/render_reports.sh [OUT (default: build/render)] [MODEL DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
out="${1:-$build/render}"
model="${2:-$root/tests/fixtures/models/bloom-h6-l3}"
ninja -C "$build" engine_cli >/dev/null
engine="$build/engine"
mkdir -p "$out"

# Sequences of byte-like ids 4..259 (every fixture vocabulary holds them), each starting with <s>.
make_data() {  # make_data SEED FILE
  RANDOM="$1"
  : > "$2"
  for _ in $(seq 8); do
    ids="1"
    for _ in $(seq 63); do ids="$ids, $((4 + RANDOM % 256))"; done
    printf '{"input_ids": [%s]}\n' "$ids" >> "$2"
  done
}
make_data 11 "$out/before.jsonl"
make_data 23 "$out/after.jsonl"

"$engine" diagnose --model "$model" --data "$out/before.jsonl" --out "$out/report.json" \
  --csv "$out/report.csv" --svg "$out/report.svg" --html "$out/report.html" --batch 4
"$engine" diagnose --model "$model" --data "$out/after.jsonl" --out "$out/after.json" >/dev/null
printf '{"version": 1, "targets": [{"layer": 0, "head": 4}, {"layer": 0, "head": 5}]}\n' > "$out/plan.json"
"$engine" diagnose --compare "$out/report.json" "$out/after.json" --plan "$out/plan.json" \
  --out "$out/compare.json" --svg "$out/compare.svg" --html "$out/compare.html"

browser="${ENGINE_CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}"
if [ -z "$browser" ]; then
  echo "no Chromium found: pages written to $out, no screenshots"
  exit 0
fi
for page in report compare; do
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
    --user-data-dir="$out/profile" --window-size=1000,800 \
    --screenshot="$out/$page.png" "file://$out/$page.html" >/dev/null 2>&1
  echo "$out/$page.png: $(stat -c %s "$out/$page.png") bytes"
done
rm -rf "$out/profile"
