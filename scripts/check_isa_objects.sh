#!/usr/bin/env bash
# Checks that no weak (linker-merged) symbol of the AVX-512 kernel objects holds AVX-512 code.
# Such a symbol (an out-of-line copy of a header template, e.g. std::vector growth) is shared
# with the baseline code, and the linker keeps one copy: an AVX-512 one would stop an AVX2-only
# CPU on an illegal instruction (Note [one source, one build per instruction set],
# kernels/cpu/isa_region.h). AVX-512 code is recognised by its registers (zmm, xmm/ymm 16-31,
# mask registers k0-k7) and a few AVX-512-only mnemonics.
# Usage: scripts/check_isa_objects.sh [object files...]  (default: the build's AVX-512 objects)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
if [ "$#" -eq 0 ]; then
  shopt -s nullglob
  set -- "$build"/CMakeFiles/engine_kernels_avx512.dir/kernels/cpu/*.o
  if [ "$#" -eq 0 ]; then
    echo "check_isa_objects: no AVX-512 kernel objects (not a GCC build), nothing to check"
    exit 0
  fi
fi
avx512='zmm|%[xy]mm(1[6-9]|2[0-9]|3[01])|%k[0-7]|vpternlog|vmovdq[au](8|16|32|64)|kmov'
bad=0
for object in "$@"; do
  for symbol in $(nm "$object" | awk '$2 == "W" || $2 == "V" { print $3 }'); do
    if objdump -d --no-show-raw-insn --disassemble="$symbol" "$object" | grep -Eq "$avx512"; then
      echo "check_isa_objects: weak symbol $(echo "$symbol" | c++filt) in $object holds AVX-512 code"
      bad=1
    fi
  done
done
[ "$bad" -eq 0 ] && echo "check_isa_objects: $# AVX-512 kernel objects, no AVX-512 code in weak symbols"
exit "$bad"
