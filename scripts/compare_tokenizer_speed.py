#!/usr/bin/env python3
# Side-by-side tokenizer throughput: the engine's C++ tokenizer (bench/tokenizer_bench) and the
# Hugging Face `tokenizers` library, single-threaded, on the same text and the same tokenizer.json,
# in one run. Prints a Markdown table for docs/PERFORMANCE.md. Both sides are measured in CPU
# time of the process (Google Benchmark's default; time.process_time in Python), so a busy
# machine does not favour either side.
#
# The text (about --mb MB) is built deterministically from tests/fixtures/tokenizer/sample.txt:
# its lines in a seeded random order, interleaved with lines of seeded pseudo-words, so that many
# pieces are distinct and both tokenizers' caches miss as they would on real text.
#
# Usage: scripts/compare_tokenizer_speed.py [--bench build/bench/tokenizer_bench]
#            [--tokenizer tests/fixtures/tokenizer/tokenizer.json] [--mb 4] [--repeats 3]
# Needs Python with `tokenizers`; checks that both produce identical ids before timing.
import argparse
import json
import platform
import os
import random
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402  (after the thread settings above)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "tokenizer")
SYLLABLES = ["ka", "lo", "mi", "ren", "sta", "vu", "qui", "zor", "el", "ta", "po", "nix", "dra",
             "shi", "um", "bel", "cor", "ith", "ya", "gon", "é", "ñ", "中", "文", "ب", "ह", "ö"]


def build_text(target_bytes):
    rng = random.Random(12345)
    lines = [l for l in open(os.path.join(FIXTURES, "sample.txt"), encoding="utf-8").read().split("\n") if l]
    out, size = [], 0
    while size < target_bytes:
        if rng.random() < 0.6:
            line = rng.choice(lines)
        else:
            words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 5)))
                     for _ in range(rng.randint(4, 16))]
            line = " ".join(words) + rng.choice([".", ",", "!", "?", "…", "。", ""])
        out.append(line)
        size += len(line.encode()) + 1
        if rng.random() < 0.1:
            out.append("")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(REPO, "build", "bench", "tokenizer_bench"))
    ap.add_argument("--tokenizer", default=os.path.join(FIXTURES, "tokenizer.json"))
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    text = build_text(int(args.mb * 1e6))
    nbytes = len(text.encode())
    with tempfile.TemporaryDirectory() as tmp:
        text_path = os.path.join(tmp, "bench.txt")
        with open(text_path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        env = dict(os.environ, TOKENIZER_BENCH_TEXT=text_path,
                   TOKENIZER_BENCH_JSON=os.path.abspath(args.tokenizer))
        res = subprocess.run([args.bench, "--benchmark_format=json", "--benchmark_filter=Encode"],
                             env=env, check=True, capture_output=True, text=True)
        cpp = {b["name"].split("/")[0]: b for b in json.loads(res.stdout)["benchmarks"]}

    # Python: a freshly loaded tokenizer per pass (empty cache), and one reused tokenizer.
    fresh = []
    ids = None
    for _ in range(args.repeats):
        tok = Tokenizer.from_file(args.tokenizer)
        t0 = time.process_time()
        ids = tok.encode(text, add_special_tokens=False).ids
        fresh.append(time.process_time() - t0)
    warm = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        tok.encode(text, add_special_tokens=False)
        warm.append(time.process_time() - t0)

    # `tokenizers` on one multi-MB string might be penalised by its offset bookkeeping, so also
    # time it line by line (the usual way it is fed), in one encode_batch call on one thread.
    lines = text.split("\n")
    per_line = []
    for _ in range(args.repeats):
        t0 = time.process_time()
        tok.encode_batch(lines, add_special_tokens=False)
        per_line.append(time.process_time() - t0)

    tokens = int(cpp["BM_EncodeFreshCache"]["tokens"])
    if tokens != len(ids):
        sys.exit(f"token counts differ: C++ {tokens}, tokenizers {len(ids)}")

    def mbps_cpp(name):
        b = cpp[name]
        return b["bytes_per_second"] / 1e6

    rows = [
        ("engine C++ tokenizer, fresh cache", mbps_cpp("BM_EncodeFreshCache")),
        ("engine C++ tokenizer, warm cache", mbps_cpp("BM_EncodeWarmCache")),
        ("`tokenizers`, freshly loaded (best of %d)" % args.repeats, nbytes / min(fresh) / 1e6),
        ("`tokenizers`, reused (best of %d)" % args.repeats, nbytes / min(warm) / 1e6),
        ("`tokenizers`, encode_batch of lines (best of %d)" % args.repeats,
         nbytes / min(per_line) / 1e6),
    ]
    import tokenizers
    print(f"Text: {nbytes / 1e6:.2f} MB, {len(ids)} tokens; tokenizer "
          f"{os.path.relpath(os.path.abspath(args.tokenizer), REPO)}; tokenizers {tokenizers.__version__}, "
          f"one thread, CPU time; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs.\n")
    print("| encoder | MB/s |")
    print("|---|---|")
    for name, v in rows:
        print(f"| {name} | {v:.1f} |")


if __name__ == "__main__":
    main()
