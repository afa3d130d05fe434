#!/usr/bin/env bash
# Compiles the attention translation units (kernels/cuda/attention*.cu) for every default CUDA
# architecture with ptxas' per-kernel report (-Xptxas -v), prints one line per kernel (registers,
# spill stores, spill loads) and FAILS when any attention kernel spills registers to local memory:
# a spill in these inner loops costs more than any tuning gains. Needs nvcc, no GPU.
# The CMake build enforces the same rule on its own compile (ptxas -warn-spills -Werror); this
# script is the readable report CI prints. ENGINE_CUDA_ARCHS overrides the list ("80 89 90a").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${CUDACXX:-}"
if [ -z "$nvcc" ]; then
  nvcc="$(command -v nvcc || true)"
fi
if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then nvcc=/usr/local/cuda/bin/nvcc; fi
if [ -z "$nvcc" ]; then
  echo "check_attention_spills: no nvcc found, nothing to check"
  exit 0
fi
archs="${ENGINE_CUDA_ARCHS:-80 89 90a}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for src in "$root"/kernels/cuda/attention*.cu; do
  for arch in $archs; do
    # The build's flags that matter to code generation: C++17, -O3, the include root.
    if ! "$nvcc" -std=c++17 -O3 --expt-relaxed-constexpr -I"$root" \
        -gencode "arch=compute_${arch},code=sm_${arch}" -Xptxas -v \
        -c "$src" -o /dev/null 2>>"$log"; then
      cat "$log" >&2
      echo "check_attention_spills: nvcc failed on $(basename "$src") for sm_${arch}" >&2
      exit 1
    fi
  done
done
demangle=cat
if command -v c++filt >/dev/null; then demangle=c++filt; fi
# ptxas prints, per kernel: "Compiling entry function 'NAME' for 'sm_XX'", then a properties line
# "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers".
awk '
  /Compiling entry function/ {
    name = $0; sub(/.*function \047/, "", name); sub(/\047.*/, "", name)
    arch = $0; sub(/.*for \047/, "", arch); sub(/\047.*/, "", arch)
    entry = 1; next
  }
  entry && /bytes spill stores/ {
    for (i = 1; i <= NF; ++i) {
      if ($(i + 1) == "bytes" && $(i + 2) == "spill" && $(i + 3) == "stores,") stores = $i
      if ($(i + 1) == "bytes" && $(i + 2) == "spill" && $(i + 3) == "loads") loads = $i
    }
    next
  }
  entry && /Used [0-9]+ registers/ {
    regs = $0; sub(/.*Used /, "", regs); sub(/ registers.*/, "", regs)
    printf "%s\t%s\tregisters %s\tspill stores %s\tspill loads %s\n", arch, name, regs, stores, loads
    entry = 0
  }
' "$log" | $demangle | sed -e 's/engine::cuda::\(attention_detail::\)\?(anonymous namespace):://' \
  -e 's/(engine::cuda::attention_detail::KernelArgs)//' > "$log.summary"
cat "$log.summary"
kernels=$(wc -l < "$log.summary")
awk -F'\t' '$4 != "spill stores 0" || $5 != "spill loads 0"' "$log.summary" > "$log.spills"
spilling=$(wc -l < "$log.spills")
if [ "$spilling" -ne 0 ]; then cat "$log.spills" >&2; fi
rm -f "$log.spills"
rm -f "$log.summary"
if [ "$kernels" -eq 0 ]; then
  echo "check_attention_spills: no kernel report found in ptxas output" >&2
  exit 1
fi
if [ "$spilling" -ne 0 ]; then
  echo "check_attention_spills: FAIL: $spilling of $kernels attention kernel builds spill registers" >&2
  exit 1
fi
echo "check_attention_spills: OK: $kernels attention kernel builds (all archs), no register spills"
