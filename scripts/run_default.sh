#!/usr/bin/env bash
# The README's first command: the whole repair pipeline on the engine's own test subject.
#   1. installs the Debian dependencies (third_party/install_deps.sh, including `fortunes` and
#      `bible-kjv`, the English text) and builds the CLI;
#   2. turns that text into build/default/corpus.txt (scripts/prepare_corpus.sh);
#   3. pretrains a small byte-level BLOOM model from scratch (`engine pretrain`), unless a finished
#      model for the same recipe is cached under build/default/pretrained-<key>/ (the key hashes
#      the pretraining flags, the corpus and the engine sources that shape training);
#   4. runs `engine repair` on it: diagnose -> plan (collapsed heads, or the healthy-column
#      fallback when nothing is collapsed) -> surgery + training -> re-diagnose, up to two passes
#      (it stops once nothing is collapsed), and
#      prints where the report is.
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
repair_flags=(--passes 2 --fallback_healthy --seq_len 128 --batch 8 --grad_accum 1 --steps 100
              --lr 1e-3 --warmup 10 --eval_every 25 --holdout 0.005 --max_seqs 64 --seed 1234)

bash "$root/scripts/build.sh" engine_cli
engine="$build/engine"
bash "$root/scripts/prepare_corpus.sh" "$work/corpus.txt"

key="$( { printf '%s\n' "${pretrain_flags[@]}"; cat "$work/corpus.txt";
          cat "$root"/model/pretrain.cpp "$root"/model/trainer.cpp "$root"/model/bloom_init.cpp; } |
        sha256sum | cut -c1-16)"
pretrained="$work/pretrained-$key"
if [ -f "$pretrained/pretrain.json" ]; then
  echo "run_default: using the cached pretrained model $pretrained"
else
  echo "run_default: pretraining a small BLOOM model into $pretrained (a few minutes)"
  resume=()
  [ -d "$pretrained/train" ] && resume=(--resume)
  "$engine" pretrain --data "$work/corpus.txt" --out "$pretrained" --threads "$threads" \
    "${pretrain_flags[@]}" "${resume[@]}"
fi

out="$work/repair"
rm -rf "$out"
"$engine" repair --model "$pretrained" --data "$work/corpus.txt" --out "$out" \
  --threads "$threads" "${repair_flags[@]}"
echo
echo "run_default: report: $out/report.html"
echo "run_default: repaired model: $out/final"
