#!/usr/bin/env bash
# The README's first command: the whole repair pipeline on the engine's own test subject.
#   1. installs the Debian dependencies (third_party/install_deps.sh, including `fortunes` and
#      `bible-kjv`, the English text) and builds the CLI;
#   2. turns that text into build/default/corpus.txt (scripts/prepare_corpus.sh);
#   3. pretrains two small byte-level BLOOM models from scratch (`engine pretrain`): the subject,
#      whose collapsed heads are INDUCED by controlled collapse (`--collapse`, docs/REPAIR.md), and
#      its twin, the same recipe and seed without it; each is cached under
#      build/default/pretrained-{collapsed,twin}-<key>/ (the key hashes the pretraining flags, the
#      corpus and the engine sources that shape training);
#   4. runs `engine repair` on the subject: diagnose -> plan (the collapsed heads) -> surgery +
#      training -> re-diagnose, up to two passes (it stops once nothing is collapsed), and prints
#      the collapsed heads found and left, the held-out perplexity before and after, the twin's,
#      the perplexity lost to collapse and the share repair won back, and where the report is.
# Usage: scripts/run_default.sh [extra engine repair flags, e.g. --fallback_healthy]
# Environment: ENGINE_BUILD_DIR (default ./build), ENGINE_THREADS (default: all cores).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${ENGINE_BUILD_DIR:-$root/build}"
work="$build/default"
threads="${ENGINE_THREADS:-0}"

# The recipe. docs/REPAIR.md records what it gives and how long it takes on two cores.
# Both commands cut the corpus identically (same --seq_len, --holdout and --seed), so the chunks
# repair holds out for perplexity and diagnosis are the ones pretraining never trained on.
pretrain_flags=(--n_layer 4 --n_head 8 --hidden_size 128 --seq_len 128 --batch 8 --steps 400
                --lr 1e-3 --warmup 30 --eval_every 100 --holdout 0.005 --seed 1234)
# Controlled collapse (docs/REPAIR.md): the subject's collapsed heads are INDUCED, not natural.
# Six heads in the high head indices (the smallest ALiBi slopes) of the upper two layers train
# with an auxiliary loss pulling their attention onto the first token; the rest of the model
# trains normally. The twin is the same recipe and seed without it: the perplexity the collapse
# cost, and the share of it repair wins back, are measured against the twin.
collapse_flags=(--collapse 2:5,2:6,2:7,3:5,3:6,3:7 --collapse_weight 0.05)
# Extra arguments go to `engine repair`, e.g. --fallback_healthy (re-initialise a healthy head
# column when nothing is collapsed).
repair_flags=(--passes 2 --seq_len 128 --batch 8 --grad_accum 1 --steps 400
              --lr 3e-3 --warmup 10 --eval_every 50 --holdout 0.005 --max_seqs 64 --seed 1234 "$@")

bash "$root/scripts/build.sh" engine_cli
engine="$build/engine"
bash "$root/scripts/prepare_corpus.sh" "$work/corpus.txt"

# model_dir NAME FLAGS...: $work/NAME-<key>, where the key hashes the flags, the corpus and the
# sources that shape training.
model_dir() {
  local name="$1"
  shift
  local key
  key="$( { printf '%s\n' "$@"; cat "$work/corpus.txt";
            cat "$root"/model/pretrain.cpp "$root"/model/trainer.cpp "$root"/model/bloom_init.cpp \
                "$root"/model/bloom_backward.cpp "$root"/kernels/cpu/attention.cpp; } |
          sha256sum | cut -c1-16)"
  echo "$work/$name-$key"
}

# pretrain DIR THREADS FLAGS...: pretrains into DIR (resuming an interrupted run), its output in
# DIR.log.
pretrain() {
  local dir="$1" n="$2"
  shift 2
  local resume=()
  [ -d "$dir/train" ] && resume=(--resume)
  "$engine" pretrain --data "$work/corpus.txt" --out "$dir" --threads "$n" "$@" "${resume[@]}" \
    > "$dir.log" 2>&1
}

subject="$(model_dir pretrained-collapsed "${pretrain_flags[@]}" "${collapse_flags[@]}")"
twin="$(model_dir pretrained-twin "${pretrain_flags[@]}")"
# The two models train side by side, each on half the threads: this small model's GEMMs are too
# narrow to keep two threads busy, so two one-thread runs finish sooner than one after the other.
cores="$threads"
[ "$cores" -gt 0 ] || cores="$(nproc)"
half=$(( cores / 2 > 0 ? cores / 2 : 1 ))
pids=()
for dir in "$subject" "$twin"; do
  flags=("${pretrain_flags[@]}")
  [ "$dir" = "$subject" ] && flags+=("${collapse_flags[@]}")
  if [ -f "$dir/pretrain.json" ]; then
    echo "run_default: using the cached model $dir"
  else
    echo "run_default: pretraining $dir (a few minutes; progress in $dir.log)"
    pretrain "$dir" "$half" "${flags[@]}" &
    pids+=($!)
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "run_default: pretraining failed; see the .log files above" >&2; exit 1; }
done
for dir in "$subject" "$twin"; do
  [ -f "$dir.log" ] && grep -E '^(eval|pretrain: done)' "$dir.log" | sed "s|^|$(basename "$dir"): |"
done

out="$work/repair"
rm -rf "$out"
"$engine" repair --model "$subject" --data "$work/corpus.txt" --out "$out" \
  --threads "$threads" "${repair_flags[@]}"

# The outcome: counts from repair.json, the twin's held-out perplexity from its pretrain.json
# (the same held-out chunks: same --seq_len, --holdout and --seed).
echo
python3 - "$out/repair.json" "$twin/pretrain.json" <<'PY'
import json, sys
repair = json.load(open(sys.argv[1]))
twin = json.load(open(sys.argv[2]))
passes = repair["passes"]
def collapsed(c): return c["SINK"] + c["DEAD"]
note = repair.get("subject", {}).get("note")
if note: print("run_default:", note)
if not passes:
    print("run_default: no pass trained:", repair["stop_reason"]); sys.exit(0)
found, left = collapsed(passes[0]["counts_before"]), collapsed(passes[-1]["counts_after"])
before, after = passes[0]["ppl_before"], passes[-1]["ppl_after"]
print(f"run_default: collapsed heads found: {found}")
print(f"run_default: collapsed heads left after pass {passes[-1]['pass']}: {left}")
print(f"run_default: held-out perplexity before repair: {before:.3f}, after: {after:.3f}")
base = twin.get("best_ppl")
if base is not None:
    lost = before - base
    print(f"run_default: twin trained without collapse (same recipe and seed): {base:.3f}")
    print(f"run_default: perplexity lost to collapse: {lost:.3f}")
    if lost > 0:
        print(f"run_default: share of it repair won back: {100 * (before - after) / lost:.0f}%")
PY
echo "run_default: report: $out/report.html"
echo "run_default: repaired model: $out/final"
