#!/usr/bin/env bash
# Converts the Debian `fortunes` package's English text (installed by third_party/install_deps.sh)
# into one .txt corpus in the engine's text format: one document per fortune, documents separated
# by a blank line (docs/DATA.md).
#   usage: scripts/prepare_fortunes.sh OUT.txt [FORTUNES_DIR]
# Data files are the ones without a .dat (index) or .u8 (link) suffix; the offensive set in off/
# is skipped. In each file, entries are separated by lines holding only "%". Overstrike sequences
# (a character, backspace, a character: old terminals' bold/underline) keep the last character;
# carriage returns are dropped; empty lines inside an entry are dropped so an entry stays one
# document. Files are read in byte order of their names, so the output is reproducible.
set -euo pipefail
out="${1:?usage: prepare_fortunes.sh OUT.txt [FORTUNES_DIR]}"
dir="${2:-/usr/share/games/fortunes}"
if [ ! -d "$dir" ]; then
  echo "prepare_fortunes: $dir not found; install the Debian package 'fortunes'" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
export LC_ALL=C
find "$dir" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -printf '%f\n' | sort |
  while IFS= read -r name; do
    sed -e 's/.\x08//g' -e 's/\x08//g' -e 's/\r$//' "$dir/$name" |
      awk '
        /^%$/ { if (n > 0) printf "%s\n\n", doc; doc = ""; n = 0; next }
        /^[ \t]*$/ { next }
        { doc = (n > 0 ? doc "\n" : "") $0; n++ }
        END { if (n > 0) printf "%s\n\n", doc }'
  done > "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "prepare_fortunes: $(grep -c '^$' "$out") documents, $(wc -c < "$out") bytes -> $out"
