#!/usr/bin/env python3
# Side-by-side CPU speed and memory of the engine and transformers on the same random BLOOM
# models, the same token ids and the same thread count. Prints Markdown tables for
# docs/PERFORMANCE.md. Builds nothing: pass the built binaries.
#
# Pinned versions (the numbers in docs/PERFORMANCE.md were measured with these; others warn):
#   torch==2.15.0  transformers==5.24.0  safetensors==0.8.0
#
# What it measures, per model (a bloom-560m-shaped one and a small one; random init, fixed
# seed, saved with transformers as f32 safetensors into a temporary directory):
# (a) perplexity forward: `engine eval` (its own timer: forward passes only, not loading) against
#     transformers `model(input_ids, labels=input_ids)` under torch.inference_mode (timed around
#     the forward calls only). Tokens/s counts every input token. Peak memory is the child
#     process's peak resident set (getrusage via wait4), weights included.
# (b) attention-statistics extraction at T = 2048 and 4096: the engine's forward with the fused
#     attention's per-head statistics (bench/stats_extract_bench, no LM head) against
#     transformers' base model with output_attentions=True (eager) followed by the same three
#     statistics (bos_mass, entropy, local_mass; METHOD.md section 2) computed from the returned
#     attention matrices. Both also report the resident memory right after loading the model and
#     the resident peak from then on (peak reset through /proc/self/clear_refs, Linux), so
#     "extra" = that peak - after-load is the extraction's own memory. A transformers run whose
#     attention matrices alone (L * H * T^2 floats) would not fit in the available memory is
#     skipped and reported as such. The engine's forward with statistics off gives the
#     statistics' share of forward time. Both sides run one untimed pass first and time the
#     next one (warm thread pools and allocator on both).
# Sanity checks printed with the tables: the engine's mean NLL equals transformers' loss, and the
# statistics' means over (layer, head) agree.
#
# Usage (from the repository root, after building `engine` and `stats_extract_bench`):
#   python scripts/compare_forward_speed.py --engine build/engine \
#       --stats-bench build/bench/stats_extract_bench [--threads 2] [--quick]
# --quick runs only the small model (a smoke test of the script).
import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time

PINNED = {"torch": "2.15.0", "transformers": "5.24.0", "safetensors": "0.8.0"}
VOCAB = 250880
MODELS = {
    # name: (hidden, layers, heads, eval sequences of EVAL_SEQ tokens)
    "bloom-560m shape": (1024, 24, 16, 2),
    "small": (512, 6, 8, 2),
}
EVAL_SEQ = 512
STATS_SEQS = (2048, 4096)
SEED = 1234
MIB = 1024.0 * 1024.0
# Eager attention holds, besides the returned (B, H, T, T) matrices of every layer, the current
# layer's scores and probabilities; this factor on the returned size is the skip threshold.
EAGER_OVERHEAD = 1.3


# ---- child processes ---------------------------------------------------------------------------

def child_make_model(spec):
    import torch
    from transformers import BloomConfig, BloomForCausalLM
    torch.manual_seed(spec["seed"])
    config = BloomConfig(vocab_size=VOCAB, hidden_size=spec["hidden"], n_layer=spec["layers"],
                         n_head=spec["heads"], layer_norm_epsilon=1e-5, hidden_dropout=0.0,
                         attention_dropout=0.0, tie_word_embeddings=True)
    model = BloomForCausalLM(config).float().eval()
    model.save_pretrained(spec["dir"], safe_serialization=True)
    return {}


def proc_status_mib(key):
    """A "VmRSS:" / "VmHWM:" line of /proc/self/status in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return 0.0


def after_load():
    """Current RSS, then resets the peak RSS (Linux clear_refs) so VmHWM read after the work is
    the peak of the work, not of loading."""
    rss = proc_status_mib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss


def load_torch_model(spec):
    import torch
    from transformers import BloomForCausalLM
    torch.set_num_threads(spec["threads"])
    model = BloomForCausalLM.from_pretrained(spec["dir"], dtype=torch.float32,
                                             attn_implementation="eager").eval()
    return torch, model


def read_ids(path):
    with open(path) as f:
        return [json.loads(line)["input_ids"] for line in f if line.strip()]


def child_torch_eval(spec):
    torch, model = load_torch_model(spec)
    rss_after_load = after_load()
    seqs = read_ids(spec["ids"])
    losses, seconds = [], 0.0
    with torch.inference_mode():
        for ids in seqs:
            x = torch.tensor([ids], dtype=torch.long)
            t0 = time.perf_counter()
            out = model(x, labels=x)
            seconds += time.perf_counter() - t0
            losses.append(float(out.loss))
    return {"seconds": seconds, "tokens": sum(len(s) for s in seqs),
            "nll": sum(losses) / len(losses), "rss_after_load_mib": rss_after_load,
            "peak_after_load_mib": proc_status_mib("VmHWM:")}


def child_torch_stats(spec):
    torch, model = load_torch_model(spec)
    rss_after_load = after_load()
    ids = read_ids(spec["ids"])[0]
    x = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        # One untimed pass first, as the engine's benchmark does (STATS_BENCH_WARMUP): both
        # sides are then timed warm (thread pools started, the allocator's heap grown).
        warm = model.transformer(x, output_attentions=True)
        del warm
        t0 = time.perf_counter()
        out = model.transformer(x, output_attentions=True)
        bos, ent, loc = [], [], []
        for a in out.attentions:  # (1, H, T, T), every row real
            a = a[0]
            bos.append(a[:, :, 0].mean(-1))
            ent.append(-torch.special.xlogy(a, a).sum(-1).mean(-1))
            local = sum(torch.diagonal(a, offset=-k, dim1=-2, dim2=-1).sum(-1) for k in range(3))
            loc.append(local / a.shape[-1])
        seconds = time.perf_counter() - t0
    mean = lambda v: float(torch.stack(v).mean())
    return {"seconds": seconds, "tokens": len(ids), "rss_after_load_mib": rss_after_load,
            "peak_after_load_mib": proc_status_mib("VmHWM:"),
            "bos_mass_mean": mean(bos), "entropy_mean": mean(ent), "local_mass_mean": mean(loc)}


CHILDREN = {"make_model": child_make_model, "torch_eval": child_torch_eval,
            "torch_stats": child_torch_stats}


# ---- parent ------------------------------------------------------------------------------------

def run_measured(cmd, env=None):
    """Runs cmd to completion; returns (stdout, peak RSS in MiB) of that child alone."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return stdout, usage.ru_maxrss / 1024.0


def run_child(kind, spec):
    stdout, peak = run_measured([sys.executable, os.path.abspath(__file__), "--child", kind,
                                 json.dumps(spec)])
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_mib"] = peak
    return result


def thread_env(threads):
    return dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                MKL_NUM_THREADS=str(threads))


def write_ids(path, count, length, vocab, seed):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(count):
            f.write(json.dumps({"input_ids": [rng.randrange(vocab) for _ in range(length)]}) + "\n")


def engine_eval(args, model_dir, ids_path):
    cmd = [args.engine, "eval", f"--model={model_dir}", f"--data={ids_path}",
           f"--seq_len={EVAL_SEQ}", f"--stride={EVAL_SEQ}", f"--threads={args.threads}"]
    stdout, peak = run_measured(cmd, env=thread_env(args.threads))
    seconds = float(re.search(r"^time\s+([0-9.]+) s", stdout, re.M).group(1))
    nll = float(re.search(r"^mean nll\s+([-0-9.eE+]+)", stdout, re.M).group(1))
    return {"seconds": seconds, "nll": nll, "peak_mib": peak}


def engine_stats(args, model_dir, ids_path, stats):
    env = dict(thread_env(args.threads), STATS_BENCH_MODEL=model_dir, STATS_BENCH_IDS=ids_path)
    cmd = [args.stats_bench, f"--benchmark_filter=BM_ForwardStats/stats:{int(stats)}/",
           "--benchmark_min_time=0.000001", "--benchmark_format=json"]
    stdout, peak = run_measured(cmd, env=env)
    bench = json.loads(stdout)["benchmarks"][0]
    unit = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[bench["time_unit"]]
    result = {"seconds": bench["real_time"] * unit, "peak_mib": peak,
              "rss_after_load_mib": bench["rss_after_load_MiB"],
              "peak_after_load_mib": bench["peak_rss_MiB"]}
    for key in ("bos_mass_mean", "entropy_mean", "local_mass_mean"):
        if key in bench:
            result[key] = bench[key]
    return result


def mem_available_mib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def fmt_gib(mib):
    return f"{mib / 1024.0:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", help="path to the built `engine` CLI")
    ap.add_argument("--stats-bench", help="path to the built bench/stats_extract_bench")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="small model only")
    ap.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--stats-seqs", default=",".join(map(str, STATS_SEQS)),
                    help="sequence lengths of the statistics runs (default %(default)s)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return
    if not args.engine or not args.stats_bench:
        ap.error("--engine and --stats-bench are required")
    args.engine = os.path.abspath(args.engine)
    args.stats_bench = os.path.abspath(args.stats_bench)

    import importlib.metadata as md
    versions = {name: md.version(name) for name in PINNED}
    for name, want in PINNED.items():
        if versions[name] != want:
            print(f"warning: {name} {versions[name]} (numbers were recorded with {want})",
                  file=sys.stderr)

    loads = [load_average()]
    forward_rows, stats_rows, checks = [], [], []
    names = ["small"] if args.quick else list(MODELS)
    if args.models:
        names = [n.strip() for n in args.models.split(",")]
        unknown = [n for n in names if n not in MODELS]
        if unknown:
            ap.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    stats_seqs = [int(t) for t in args.stats_seqs.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            hidden, layers, heads, eval_count = MODELS[name]
            model_dir = os.path.join(tmp, name.replace(" ", "_"))
            print(f"[{name}] creating the model with transformers", file=sys.stderr)
            run_child("make_model", {"dir": model_dir, "hidden": hidden, "layers": layers,
                                     "heads": heads, "seed": SEED})
            spec = {"dir": model_dir, "threads": args.threads}

            ids_path = os.path.join(tmp, f"eval_{layers}.jsonl")
            write_ids(ids_path, eval_count, EVAL_SEQ, VOCAB, SEED)
            print(f"[{name}] eval: engine", file=sys.stderr)
            eng = engine_eval(args, model_dir, ids_path)
            print(f"[{name}] eval: transformers", file=sys.stderr)
            ref = run_child("torch_eval", dict(spec, ids=ids_path))
            tokens = ref["tokens"]
            forward_rows.append((name, eval_count, tokens / eng["seconds"],
                                 tokens / ref["seconds"], eng["peak_mib"], ref["peak_mib"]))
            checks.append(f"{name}: mean NLL engine {eng['nll']:.6f}, transformers {ref['nll']:.6f}")
            loads.append(load_average())

            for seq in stats_seqs:
                ids_path = os.path.join(tmp, f"stats_{layers}_{seq}.jsonl")
                write_ids(ids_path, 1, seq, VOCAB, SEED + seq)
                print(f"[{name}] T={seq}: engine, statistics off / on", file=sys.stderr)
                off = engine_stats(args, model_dir, ids_path, False)
                on = engine_stats(args, model_dir, ids_path, True)
                need = layers * heads * seq * seq * 4 / MIB * EAGER_OVERHEAD
                if need > 0.8 * mem_available_mib():
                    ref = None
                    skipped = (f"not run: the returned attention matrices need about "
                               f"{fmt_gib(need)} GiB, {fmt_gib(mem_available_mib())} GiB available")
                else:
                    print(f"[{name}] T={seq}: transformers output_attentions", file=sys.stderr)
                    ref = run_child("torch_stats", dict(spec, ids=ids_path))
                    skipped = ""
                    checks.append(
                        f"{name} T={seq}: means over (layer, head) engine / transformers: "
                        f"bos_mass {on['bos_mass_mean']:.6f} / {ref['bos_mass_mean']:.6f}, "
                        f"entropy {on['entropy_mean']:.6f} / {ref['entropy_mean']:.6f}, "
                        f"local_mass {on['local_mass_mean']:.6f} / {ref['local_mass_mean']:.6f}")
                stats_rows.append((name, seq, off, on, ref, skipped))
                loads.append(load_average())

    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} logical CPUs, {args.threads} "
          f"threads on both sides; load average during the run "
          f"{min(loads):.1f} .. {max(loads):.1f}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    print(f"(a) Perplexity forward, {EVAL_SEQ}-token sequences, tokens/s of forward time, "
          "peak RSS of the process (weights included)\n")
    print("| model | sequences | engine tokens/s | transformers tokens/s | speed-up | "
          "engine peak GiB | transformers peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, count, e_tps, r_tps, e_mem, r_mem in forward_rows:
        print(f"| {name} | {count} | {e_tps:.1f} | {r_tps:.1f} | {e_tps / r_tps:.2f}x | "
              f"{fmt_gib(e_mem)} | {fmt_gib(r_mem)} |")
    print("\n(b) Attention-statistics extraction, one sequence, no LM head; peak = peak RSS of the "
          "process; extra = peak RSS after loading the model - RSS after loading it\n")
    print("| model | T | engine s (stats off) | engine s (stats on) | stats overhead | "
          "transformers s | speed-up | engine peak / extra GiB | transformers peak / extra GiB | "
          "extra-memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, seq, off, on, ref, skipped in stats_rows:
        overhead = on["seconds"] / off["seconds"] - 1.0
        e_extra = on["peak_after_load_mib"] - on["rss_after_load_mib"]
        eng_cells = (f"{off['seconds']:.2f} | {on['seconds']:.2f} | {overhead * 100:+.1f}% | ")
        if ref is None:
            print(f"| {name} | {seq} | {eng_cells}{skipped} | - | "
                  f"{fmt_gib(on['peak_mib'])} / {fmt_gib(e_extra)} | - | - |")
            continue
        r_extra = ref["peak_after_load_mib"] - ref["rss_after_load_mib"]
        print(f"| {name} | {seq} | {eng_cells}{ref['seconds']:.2f} | "
              f"{ref['seconds'] / on['seconds']:.1f}x | "
              f"{fmt_gib(on['peak_mib'])} / {fmt_gib(e_extra)} | "
              f"{fmt_gib(ref['peak_mib'])} / {fmt_gib(r_extra)} | "
              f"{r_extra / max(e_extra, 1.0):.0f}x |")
    print("\nChecks:")
    for line in checks:
        print(f"- {line}")


if __name__ == "__main__":
    main()
