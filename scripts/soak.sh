#!/usr/bin/env bash
# Soak test of crash-safe training (not part of the default test suite; takes a few minutes).
# Trains the bloom-h4-l2 fixture model on random token ids for many steps twice: once without
# interruption, and once killed with SIGKILL at random moments and resumed with --resume until it
# finishes. Passes when every checkpoint both runs wrote, and the final weights and optimizer
# state, are byte-identical (the trainer promises bit-identical resume on the CPU with the same
# thread count; docs/TRAINING.md).
# Usage: scripts/soak.sh [steps]   (default 20000)
# Environment: ENGINE_BUILD_DIR (default ./build), SOAK_SEED (default 1), SOAK_KILL_MAX_MS
# (longest time a run segment lives before its kill, default 3000).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
steps="${1:-20000}"
seed="${SOAK_SEED:-1}"
kill_max_ms="${SOAK_KILL_MAX_MS:-3000}"
engine="$build/engine"
if [ ! -x "$engine" ]; then
  bash "$root/scripts/build.sh" engine_cli
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/engine-soak.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# 400 documents of 10-40 random ids inside the fixture vocabulary (260).
awk -v seed="$seed" 'BEGIN { srand(seed);
  for (d = 0; d < 400; d++) {
    n = 10 + int(rand() * 31); line = "{\"input_ids\": [";
    for (t = 0; t < n; t++) line = line (t ? ", " : "") (4 + int(rand() * 256));
    print line "]}" } }' > "$work/data.jsonl"

# One thread for OpenMP and BLAS: bit-identity across runs needs the same thread count.
export OPENBLAS_NUM_THREADS=1
train=("$engine" train --model "$root/tests/fixtures/models/bloom-h4-l2" --data "$work/data.jsonl"
       --seq_len 16 --batch 2 --grad_accum 1 --steps "$steps" --lr 1e-3 --warmup 100
       --eval_every 1000 --checkpoint_every 100 --holdout 0.05 --seed 7 --threads 1)

start=$(date +%s)
"${train[@]}" --out "$work/whole" > "$work/whole.log" 2>&1 ||
  { cat "$work/whole.log"; echo "soak: the uninterrupted run failed"; exit 1; }
whole_s=$(( $(date +%s) - start ))
echo "soak: uninterrupted run of $steps steps took ${whole_s}s"

RANDOM=$seed
kills=0
segments=0
start=$(date +%s)
while :; do
  resume=()
  [ -d "$work/killed" ] && resume=(--resume)
  "${train[@]}" --out "$work/killed" "${resume[@]}" >> "$work/killed.log" 2>&1 &
  pid=$!
  segments=$((segments + 1))
  delay_ms=$(( 100 + (RANDOM * 32768 + RANDOM) % kill_max_ms ))
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  if kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    kills=$((kills + 1))
    continue
  fi
  if wait "$pid"; then break; fi
  tail -n 5 "$work/killed.log"
  echo "soak: a resumed segment failed on its own (after $kills kills)"
  exit 1
done
killed_s=$(( $(date +%s) - start ))

compared=0
for dir in "$work"/whole/step_* "$work/whole/final" "$work/whole/best"; do
  name="$(basename "$dir")"
  [ -d "$work/killed/$name" ] || continue
  for file in model.safetensors optimizer.bin; do
    if ! cmp -s "$dir/$file" "$work/killed/$name/$file"; then
      echo "soak: FAIL: $name/$file differs between the uninterrupted and the killed run"
      exit 1
    fi
  done
  compared=$((compared + 1))
done
[ -f "$work/killed/final/model.safetensors" ] || { echo "soak: FAIL: no final checkpoint"; exit 1; }
echo "soak: PASS: $kills SIGKILLs over $segments segments (${killed_s}s); $compared checkpoints" \
     "including final/ byte-identical to the uninterrupted run"
