#!/usr/bin/env bash
# Builds the embedded default's English corpus from two Debian packages (installed by
# third_party/install_deps.sh) as one .txt file in the engine's text format: documents separated
# by a blank line (docs/DATA.md).
#   usage: scripts/prepare_corpus.sh OUT.txt [FORTUNES_DIR]
# 1. `fortunes`: one document per fortune. Data files are the ones without a .dat (index) or .u8
#    (link) suffix; the offensive set in off/ is skipped. In each file, entries are separated by
#    lines holding only "%". Overstrike sequences (a character, backspace, a character: old
#    terminals' bold/underline) keep the last character; carriage returns are dropped; empty
#    lines inside an entry are dropped so an entry stays one document. Files are read in byte
#    order of their names.
# 2. `bible-kjv` (the King James Version through the package's `bible` reader): one document per
#    chapter, the chapter's title ("Genesis 1") on the first line and its verses, without their
#    numbers, joined into one paragraph.
# The output is reproducible: same packages, same bytes.
set -euo pipefail
out="${1:?usage: prepare_corpus.sh OUT.txt [FORTUNES_DIR]}"
dir="${2:-/usr/share/games/fortunes}"
if [ ! -d "$dir" ]; then
  echo "prepare_corpus: $dir not found; install the Debian package 'fortunes'" >&2
  exit 1
fi
if ! command -v bible > /dev/null; then
  echo "prepare_corpus: the 'bible' reader was not found; install the Debian package 'bible-kjv'" >&2
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
fortune_bytes=$(wc -c < "$tmp")
# -l0: one verse per line, unwrapped. Chapter titles are the lines ending in a chapter number.
bible -l0 "Gen1:1-Rev22:21" < /dev/null |
  awk '
    /^[^ ].* [0-9]+$/ { if (body != "") printf "%s\n%s\n\n", title, body; title = $0; body = ""; next }
    /^ +[0-9]+ / { sub(/^ +[0-9]+ /, ""); body = (body == "" ? $0 : body " " $0); next }
    END { if (body != "") printf "%s\n%s\n\n", title, body }' >> "$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "prepare_corpus: $(grep -c '^$' "$out") documents, $(wc -c < "$out") bytes" \
  "($fortune_bytes from fortunes, the rest from the King James Bible) -> $out"
