#!/usr/bin/env python3
# Side-by-side CPU train-step speed and memory: `engine train --surgery plan.json` against
# transformers + PyTorch doing the same masked training the way the published scripts do it
# (requires_grad on the whole fused QKV / dense tensors of the surgical layers, gradient hooks
# that zero every element outside the target heads' rows / columns, torch.optim.AdamW over the
# whole tensors). Same random BLOOM model (made by transformers with a fixed seed, saved as f32
# safetensors), same token ids, same plan, same hyper-parameters (AdamW lr 5e-5, betas
# 0.9/0.999, eps 1e-8, no weight decay, constant schedule, clip 1.0, batch 1, no gradient
# accumulation), same thread count. Prints Markdown tables for docs/PERFORMANCE.md.
#
# Pinned versions: as scripts/compare_forward_speed.py (whose helpers this script reuses).
#
# What it measures, per model (a bloom-560m-shaped one with the pass-1-like plan layers 5-22 x
# heads 9-15, and a small one with layers 1-4 x heads 4-7):
# - tokens/s of the optimizer steps after the first (the first one pays one-time allocations on
#   both sides): the engine's per-step tokens_per_s from OUT/metrics.jsonl, PyTorch's timed
#   around forward + backward + clip + step;
# - the process's peak resident memory (getrusage of the child), weights included, and the
#   optimizer-state size each side reports.
# Sanity check printed with the table: the loss of the first step on both sides (same weights
# after surgery up to the re-initialised heads, which differ by RNG, so only the magnitude is
# comparable: both are near ln(vocab) for a random model).
#
# Usage (from the repository root, after building `engine`):
#   python scripts/compare_train_speed.py --engine build/engine [--threads 2] [--steps 4] [--quick]
import argparse
import glob
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_forward_speed import (PINNED, VOCAB, SEED, child_make_model, fmt_gib,  # noqa: E402
                                   load_average, run_measured, thread_env, write_ids)

MODELS = {
    # name: (hidden, layers, heads, target layers, target heads)
    "bloom-560m shape": (1024, 24, 16, range(5, 23), range(9, 16)),
    "small": (512, 6, 8, range(1, 5), range(4, 8)),
}
SEQ = 512
LR, BETAS, EPS, CLIP = 5e-5, (0.9, 0.999), 1e-8, 1.0


def plan_targets(spec):
    return [(l, h) for l in spec["layers_range"] for h in spec["heads_range"]]


def child_torch_train(spec):
    import torch
    from transformers import BloomForCausalLM
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    model = BloomForCausalLM.from_pretrained(spec["dir"], dtype=torch.float32,
                                             attn_implementation="eager")
    model.train()
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.n_head
    for p in model.parameters():
        p.requires_grad_(False)

    by_layer = {}
    for layer, head in plan_targets(spec):
        by_layer.setdefault(layer, []).append(head)
    trainable = []
    for layer, heads in by_layer.items():
        attn = model.transformer.h[layer].self_attention
        qkv_rows = torch.zeros(3 * cfg.hidden_size, dtype=torch.bool)
        dense_cols = torch.zeros(cfg.hidden_size, dtype=torch.bool)
        for h in heads:
            qkv_rows[3 * head_dim * h: 3 * head_dim * (h + 1)] = True
            dense_cols[head_dim * h: head_dim * (h + 1)] = True
        # The published recipe: whole tensors trainable, a hook zeroes the frozen part.
        for param, mask in ((attn.query_key_value.weight, qkv_rows[:, None]),
                            (attn.query_key_value.bias, qkv_rows),
                            (attn.dense.weight, dense_cols[None, :])):
            param.requires_grad_(True)
            param.register_hook(lambda g, m=mask.to(torch.float32): g * m)
            trainable.append(param)
    optimizer = torch.optim.AdamW(trainable, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0)

    with open(spec["ids"]) as f:
        seqs = [json.loads(line)["input_ids"] for line in f if line.strip()]
    step_seconds, losses = [], []
    for ids in seqs[: spec["steps"]]:
        x = torch.tensor([ids], dtype=torch.long)
        t0 = time.perf_counter()
        loss = model(x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - t0)
        losses.append(float(loss))
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                      for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return {"step_seconds": step_seconds, "losses": losses, "state_bytes": state_bytes,
            "trainable_elements": sum(p.numel() for p in trainable)}


CHILDREN = {"make_model": child_make_model, "torch_train": child_torch_train}


def engine_train(args, model_dir, ids_path, plan_path, out_dir, steps):
    # Held-out evaluation and the final checkpoint are outside the timed steps (metrics.jsonl's
    # tokens_per_s covers one optimizer step); --holdout keeps one chunk aside, the minimum.
    cmd = [args.engine, "train", f"--model={model_dir}", f"--data={ids_path}",
           f"--surgery={plan_path}", f"--out={out_dir}", f"--steps={steps}",
           f"--seq_len={SEQ}", "--grad_accum=1", f"--lr={LR}", "--warmup=0",
           "--schedule=constant", f"--clip={CLIP}", f"--threads={args.threads}",
           f"--eval_data={ids_path}.eval.jsonl"]
    _, peak = run_measured(cmd, env=thread_env(args.threads))
    steps_logged = []
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "tokens_per_s" in row:
                steps_logged.append(row)
    state_files = sorted(glob.glob(os.path.join(out_dir, "step_*", "trainer_state.json")))
    with open(state_files[-1]) as f:
        trainable = json.load(f)["mask"]["trainable_elements"]
    # AdamW keeps two fp32 moments per trainable element (weights are fp32: no master copy).
    return {"rows": steps_logged, "peak_mib": peak, "state_bytes": 8 * trainable,
            "trainable_elements": trainable}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--engine", help="path to the built `engine` CLI")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per side (>= 2)")
    ap.add_argument("--quick", action="store_true", help="small model only")
    ap.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return
    if not args.engine:
        ap.error("--engine is required")
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first step is not timed)")
    args.engine = os.path.abspath(args.engine)

    import importlib.metadata as md
    versions = {name: md.version(name) for name in PINNED}

    def run_child(kind, spec):
        stdout, peak = run_measured([sys.executable, os.path.abspath(__file__), "--child", kind,
                                     json.dumps(spec)])
        result = json.loads(stdout.strip().splitlines()[-1])
        result["peak_mib"] = peak
        return result

    loads = [load_average()]
    rows, checks = [], []
    names = ["small"] if args.quick else list(MODELS)
    if args.models:
        names = [n.strip() for n in args.models.split(",")]
        unknown = [n for n in names if n not in MODELS]
        if unknown:
            ap.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            hidden, layers, heads, target_layers, target_heads = MODELS[name]
            tag = name.replace(" ", "_")
            model_dir = os.path.join(tmp, tag)
            print(f"[{name}] creating the model with transformers", file=sys.stderr)
            run_child("make_model", {"dir": model_dir, "hidden": hidden, "layers": layers,
                                     "heads": heads, "seed": SEED})
            ids_path = os.path.join(tmp, f"train_{tag}.jsonl")
            write_ids(ids_path, args.steps, SEQ, VOCAB, SEED)
            write_ids(ids_path + ".eval.jsonl", 1, SEQ, VOCAB, SEED + 1)
            targets = [(l, h) for l in target_layers for h in target_heads]
            plan_path = os.path.join(tmp, f"plan_{tag}.json")
            with open(plan_path, "w") as f:
                json.dump({"version": 1, "seed": SEED,
                           "targets": [{"layer": l, "head": h} for l, h in targets]}, f)

            print(f"[{name}] engine train ({args.steps} steps)", file=sys.stderr)
            eng = engine_train(args, model_dir, ids_path, plan_path,
                               os.path.join(tmp, f"out_{tag}"), args.steps)
            loads.append(load_average())
            print(f"[{name}] transformers + PyTorch ({args.steps} steps)", file=sys.stderr)
            ref = run_child("torch_train", {
                "dir": model_dir, "ids": ids_path, "threads": args.threads, "seed": SEED,
                "steps": args.steps, "layers_range": list(target_layers),
                "heads_range": list(target_heads)})
            loads.append(load_average())

            timed = eng["rows"][1:]
            eng_tps = sum(r["tokens_per_s"] for r in timed) / len(timed)
            ref_tps = SEQ * len(ref["step_seconds"][1:]) / sum(ref["step_seconds"][1:])
            rows.append((name, len(targets), eng_tps, ref_tps, eng["peak_mib"], ref["peak_mib"],
                         eng["state_bytes"], ref["state_bytes"]))
            checks.append(f"{name}: first-step loss engine {eng['rows'][0]['loss']:.4f}, "
                          f"PyTorch {ref['losses'][0]:.4f}")

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"threads {args.threads}; load average during the run "
          f"{min(loads):.1f} .. {max(loads):.1f}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print()
    print("| model | target heads | engine tokens/s | PyTorch tokens/s | speed-up | "
          "engine peak GiB | PyTorch peak GiB | memory ratio | engine / PyTorch AdamW state MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, e, r, ep, rp, estate, rstate in rows:
        print(f"| {name} | {n} | {e:.1f} | {r:.1f} | {e / r:.2f}x | {fmt_gib(ep)} | "
              f"{fmt_gib(rp)} | {rp / ep:.2f}x | {estate / 2**20:.0f} / {rstate / 2**20:.0f} |")
    print()
    for line in checks:
        print(line)


if __name__ == "__main__":
    main()
