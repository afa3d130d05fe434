#!/usr/bin/env python3
# What bf16 costs, side by side on one machine: the engine's CPU bf16-storage mode
# (`--dtype bf16`) against its fp32 path, and transformers in bfloat16 against transformers in
# float32, on the same model and the same token windows. Prints Markdown tables for
# docs/PERFORMANCE.md and docs/TOLERANCES.md. Builds nothing: pass the built `engine`.
#
# Pinned versions (as tests/fixtures/make_fixtures.py; others warn):
#   torch==2.15.0  transformers==5.24.0  safetensors==0.8.0
#
# Measured, per implementation and storage type:
# - mean NLL over the scored tokens of N windows of T tokens (`engine eval` with one window per
#   line, so each window's first token is unscored; transformers `model(ids, labels=ids)`, whose
#   loss also scores tokens 1..T-1), and its difference from the same implementation in fp32;
# - per-head attention statistics (bos_mass, entropy, local_mass; METHOD.md section 2): the engine's
#   from `engine diagnose` over the same windows, transformers' from `output_attentions` (eager)
#   averaged over query rows 1..T-1 and the windows; the largest per-head difference from the same
#   implementation in fp32, and the heads whose class changes (engine only: diagnose classifies);
# - forward time: the engine's own timer where it reports one, else the child's wall time around
#   the command, transformers' around the forward calls; one untimed warm-up pass each.
# Each implementation's bf16 is compared with its own fp32: the two implementations define the
# statistics' averaging slightly differently (docs/DIAGNOSE.md), so cross-implementation numbers
# are printed only as a sanity line (mean NLL in fp32).
#
# Usage (from the repository root):
#   python3 scripts/compare_bf16.py --engine build/engine --model DIR --text FILE \
#       [--seq_len 128] [--windows 16] [--threads 2]
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

PINNED = {"torch": "2.15.0", "transformers": "5.24.0", "safetensors": "0.8.0"}
STATS = ("bos_mass", "entropy", "local_mass")


def run(cmd, env):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"compare_bf16: {' '.join(cmd)} failed:\n{p.stderr}")
    return p.stdout, seconds


def make_windows(args, env, workdir):
    """Tokenizes the text with the engine and writes the first `windows` full windows of
    `seq_len` ids, one JSON line each."""
    ids_path = os.path.join(workdir, "ids.jsonl")
    run([args.engine, "tokenize", f"--model={args.model}", f"--in={args.text}",
         f"--out={ids_path}"], env)
    flat = []
    with open(ids_path) as f:
        for line in f:
            if line.strip():
                flat.extend(json.loads(line)["input_ids"])
    count = min(args.windows, len(flat) // args.seq_len)
    if count == 0:
        sys.exit(f"compare_bf16: {args.text}: fewer than {args.seq_len} tokens")
    windows = [flat[i * args.seq_len:(i + 1) * args.seq_len] for i in range(count)]
    path = os.path.join(workdir, "windows.jsonl")
    with open(path, "w") as f:
        for w in windows:
            f.write(json.dumps({"input_ids": w}) + "\n")
    return windows, path


def engine_side(args, env, windows_path, count, dtype, workdir):
    common = [f"--model={args.model}", f"--data={windows_path}", f"--seq_len={args.seq_len}",
              "--device=cpu", f"--dtype={dtype}", f"--threads={args.threads}"]
    run([args.engine, "eval", *common, f"--stride={args.seq_len}", "--json"], env)  # warm-up
    out, seconds = run([args.engine, "eval", *common, f"--stride={args.seq_len}", "--json"], env)
    ev = json.loads(out.strip().splitlines()[-1])
    report = os.path.join(workdir, f"report-{dtype}.json")
    run([args.engine, "diagnose", *common, f"--max_seqs={count}", f"--out={report}"], env)
    with open(report) as f:
        heads = json.load(f)["heads"]
    return {"nll": ev["nll"], "tokens": ev["tokens_scored"], "seconds": seconds,
            "stats": {(h["layer"], h["head"]): {s: h[s] for s in STATS} for h in heads},
            "classes": {(h["layer"], h["head"]): h["class"] for h in heads}}


def torch_side(args, windows, dtype_name):
    import torch
    from transformers import BloomForCausalLM
    torch.set_num_threads(args.threads if args.threads > 0 else os.cpu_count())
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    model = BloomForCausalLM.from_pretrained(args.model, dtype=dtype,
                                             attn_implementation="eager").eval()
    sums, nll_sum, scored, seconds = {}, 0.0, 0, 0.0
    with torch.inference_mode():
        model(torch.tensor([windows[0]]), labels=torch.tensor([windows[0]]))  # warm-up
        for ids in windows:
            x = torch.tensor([ids], dtype=torch.long)
            t0 = time.perf_counter()
            out = model(x, labels=x, output_attentions=True)
            seconds += time.perf_counter() - t0
            n = len(ids) - 1
            nll_sum += float(out.loss.float()) * n
            scored += n
            for layer, a in enumerate(out.attentions):  # (1, H, T, T)
                a = a[0].float()[:, 1:, :]              # query rows 1..T-1
                bos = a[:, :, 0].mean(-1)
                ent = (-torch.special.xlogy(a, a).sum(-1)).mean(-1)
                rows = torch.arange(1, a.shape[1] + 1)
                local = torch.zeros(a.shape[0])
                for k in range(3):  # keys t, t-1, t-2
                    cols = rows - k
                    ok = cols >= 0
                    local += a[:, ok.nonzero().squeeze(-1), cols[ok]].sum(-1)
                local /= a.shape[1]
                for h in range(a.shape[0]):
                    acc = sums.setdefault((layer, h), {s: 0.0 for s in STATS})
                    acc["bos_mass"] += float(bos[h])
                    acc["entropy"] += float(ent[h])
                    acc["local_mass"] += float(local[h])
    stats = {k: {s: v[s] / len(windows) for s in STATS} for k, v in sums.items()}
    return {"nll": nll_sum / scored, "tokens": scored, "seconds": seconds, "stats": stats}


def worst(a, b):
    return {s: max(abs(a[k][s] - b[k][s]) for k in a) for s in STATS}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--model", required=True, help="BLOOM model directory with tokenizer.json")
    ap.add_argument("--text", required=True, help="held-out text to cut into windows")
    ap.add_argument("--seq_len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.engine = os.path.abspath(args.engine)
    try:
        import torch
        import transformers
        import safetensors
        have = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                "safetensors": safetensors.__version__}
        for k, v in PINNED.items():
            if have[k] != v:
                print(f"compare_bf16: warning: {k} {have[k]}, pinned {v}", file=sys.stderr)
    except ImportError as e:
        sys.exit(f"compare_bf16: {e} (pip install torch==2.15.0 transformers==5.24.0 "
                 "safetensors==0.8.0)")
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    with tempfile.TemporaryDirectory() as workdir:
        windows, path = make_windows(args, env, workdir)
        eng = {d: engine_side(args, env, path, len(windows), d, workdir) for d in ("f32", "bf16")}
    ref = {d: torch_side(args, windows, d) for d in ("f32", "bf16")}

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"CPU: {cpu}; threads {args.threads}; {len(windows)} windows of {args.seq_len} tokens "
          f"from {os.path.basename(args.text)}; model {os.path.basename(os.path.normpath(args.model))}")
    print()
    print("| implementation | storage | mean NLL | NLL - own fp32 | max per-head |d bos_mass| | "
          "max |d entropy| | max |d local_mass| | forward s | bf16 / fp32 time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, side in (("engine (CPU)", eng), ("transformers (CPU)", ref)):
        for d in ("f32", "bf16"):
            r = side[d]
            w = worst(r["stats"], side["f32"]["stats"])
            ratio = r["seconds"] / side["f32"]["seconds"]
            print(f"| {name} | {d} | {r['nll']:.6f} | {r['nll'] - side['f32']['nll']:+.2e} | "
                  f"{w['bos_mass']:.2e} | {w['entropy']:.2e} | {w['local_mass']:.2e} | "
                  f"{r['seconds']:.2f} | {ratio:.2f} |")
    changed = [k for k in eng["f32"]["classes"] if eng["f32"]["classes"][k] != eng["bf16"]["classes"][k]]
    print()
    print(f"engine: heads whose class changes under bf16: {len(changed)} {changed if changed else ''}")
    print(f"sanity: fp32 mean NLL engine {eng['f32']['nll']:.6f}, transformers "
          f"{ref['f32']['nll']:.6f} (scored tokens {eng['f32']['tokens']} / {ref['f32']['tokens']})")
    print("engine times are the whole `engine eval` command (loading included); transformers' "
          "the forward calls with attentions returned")


if __name__ == "__main__":
    main()
