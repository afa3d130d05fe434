#!/usr/bin/env python3
"""The CLI on --device cuda against --device cpu (CTest `cuda_cli`, label gpu): eval, diagnose,
train and pretrain --collapse through the engine binary on a fixture model, and the one-line errors of a bad or unsupported
device. Runs on a GPU or under the CUDA emulator. Usage: cuda_cli_test.py ENGINE SOURCE_DIR"""
import json
import os
import struct
import subprocess
import sys
import tempfile

engine, source = sys.argv[1], sys.argv[2]
model = os.path.join(source, "tests/fixtures/models/bloom-h6-l3")
failures = []


def run(*args):
    return subprocess.run([engine, *args], capture_output=True, text=True)


def check(condition, message):
    if not condition:
        failures.append(message)


def safetensors_floats(path):
    """Every f32 tensor of a safetensors file, by name, as a tuple of floats."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = struct.unpack(f"<{(end - begin) // 4}f", blob[8 + n + begin:8 + n + end])
    return out


with tempfile.TemporaryDirectory() as tmp:
    data = os.path.join(tmp, "ids.jsonl")
    with open(data, "w") as f:
        for n in range(6):
            f.write(json.dumps({"input_ids": [(7 * n + 3 * t) % 260 for t in range(20 + 3 * n)]}) + "\n")

    # eval: same windows and tokens, NLL within the end-to-end bound (docs/TOLERANCES.md).
    results = {}
    for device in ("cpu", "cuda"):
        r = run("eval", "--model", model, "--data", data, "--seq_len", "16", "--batch", "2",
                "--json", "--device", device)
        check(r.returncode == 0, f"eval --device {device}: exit {r.returncode}: {r.stderr}")
        if r.returncode == 0:
            results[device] = json.loads(r.stdout.strip().splitlines()[-1])
    if len(results) == 2:
        cpu, cuda = results["cpu"], results["cuda"]
        check(cuda["device"] == "cuda" and cpu["device"] == "cpu", f"devices recorded: {results}")
        check(cuda["tokens_scored"] == cpu["tokens_scored"], f"tokens scored: {results}")
        check(abs(cuda["nll"] - cpu["nll"]) <= 1e-5, f"nll: {results}")

    # diagnose: every head's statistics and class.
    reports = {}
    for device in ("cpu", "cuda"):
        out = os.path.join(tmp, f"report-{device}.json")
        r = run("diagnose", "--model", model, "--data", data, "--seq_len", "24", "--batch", "2",
                "--out", out, "--device", device)
        check(r.returncode == 0, f"diagnose --device {device}: exit {r.returncode}: {r.stderr}")
        if r.returncode == 0:
            with open(out) as f:
                reports[device] = json.load(f)
    if len(reports) == 2:
        cpu_heads, cuda_heads = reports["cpu"]["heads"], reports["cuda"]["heads"]
        check(len(cpu_heads) == len(cuda_heads) == 18, "diagnose: head count")
        check(reports["cuda"]["model"].get("device") == "cuda" and
              reports["cpu"]["model"].get("device") == "cpu", "diagnose: device recorded")
        for a, b in zip(cpu_heads, cuda_heads):
            where = f"diagnose layer {a['layer']} head {a['head']}"
            check(a["class"] == b["class"], f"{where}: class {a['class']} vs {b['class']}")
            for stat in ("bos_mass", "entropy", "local_mass"):
                va, vb = a[stat], b[stat]
                check(abs(va - vb) <= 1e-5, f"{where}: {stat} {va} vs {vb}")

    # train: the same steps on both devices, step losses and held-out perplexity within the
    # bound of the device trainer (docs/TOLERANCES.md, "Training on the CUDA backend").
    metrics = {}
    for device in ("cpu", "cuda"):
        out = os.path.join(tmp, f"train-{device}")
        r = run("train", "--model", model, "--data", data, "--out", out, "--seq_len", "16",
                "--batch", "2", "--steps", "4", "--lr", "1e-3", "--device", device)
        check(r.returncode == 0, f"train --device {device}: exit {r.returncode}: {r.stderr}")
        if r.returncode == 0:
            with open(os.path.join(out, "metrics.jsonl")) as f:
                metrics[device] = [json.loads(line) for line in f]
            check(os.path.isdir(os.path.join(out, "final")), f"train --device {device}: no final")
    for device, lines in metrics.items():
        starts = [m for m in lines if m.get("event") == "start"]
        check(len(starts) == 1 and starts[0].get("device") == device,
              f"train --device {device}: metrics start event {starts}")
    # --device auto trains where `engine info` says auto computes: a real GPU when one is
    # visible, never the emulated device (so under the emulator: the cpu).
    r = run("info", "--json")
    auto = json.loads(r.stdout)["device"]["auto"] if r.returncode == 0 else None
    check(auto in ("cpu", "cuda"), f"info --json: device auto {auto!r}")
    out = os.path.join(tmp, "train-auto")
    r = run("train", "--model", model, "--data", data, "--out", out, "--seq_len", "16",
            "--batch", "2", "--steps", "1", "--lr", "1e-3", "--device", "auto")
    check(r.returncode == 0, f"train --device auto: exit {r.returncode}: {r.stderr}")
    if r.returncode == 0:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            starts = [m for m in map(json.loads, f) if m.get("event") == "start"]
        check(len(starts) == 1 and starts[0].get("device") == auto,
              f"train --device auto: trained on {starts}, info says auto = {auto}")
    if len(metrics) == 2:
        # Weights: AdamW moves a near-zero-gradient element by about lr either way, so the bound
        # is a tenth of the worst case 2 x steps x lr (docs/TOLERANCES.md).
        a = safetensors_floats(os.path.join(tmp, "train-cpu", "final", "model.safetensors"))
        b = safetensors_floats(os.path.join(tmp, "train-cuda", "final", "model.safetensors"))
        check(a.keys() == b.keys(), "train: tensors differ")
        worst = max((abs(x - y) for k in a for x, y in zip(a[k], b[k])), default=0.0)
        check(worst <= 0.1 * 2 * 4 * 1e-3, f"train: weights differ by {worst}")
        for event, key in (("step", "loss"), ("eval", "eval_nll")):
            a = [m[key] for m in metrics["cpu"] if m.get("event") == event]
            b = [m[key] for m in metrics["cuda"] if m.get("event") == event]
            check(len(a) == len(b) and len(a) > 0, f"train: {event} lines {len(a)} vs {len(b)}")
            for x, y in zip(a, b):
                check(abs(x - y) <= 1e-4 * abs(x), f"train: {event} {key} {x} vs {y}")

    # train --surgery on both devices: every tensor without a trainable slice ends bit-identical
    # (surgery runs on the host, then the weights go to the device), the targets' slices within
    # the weight bound above.
    plan = os.path.join(tmp, "plan.json")
    with open(plan, "w") as f:
        json.dump({"version": 1, "targets": [{"layer": 1, "head": 2}, {"layer": 2, "head": 4}]}, f)
    finals = {}
    for device in ("cpu", "cuda"):
        out = os.path.join(tmp, f"surgery-{device}")
        r = run("train", "--model", model, "--data", data, "--surgery", plan, "--out", out,
                "--seq_len", "16", "--batch", "2", "--steps", "4", "--lr", "1e-3",
                "--device", device)
        check(r.returncode == 0, f"train --surgery --device {device}: exit {r.returncode}: {r.stderr}")
        if r.returncode == 0:
            finals[device] = safetensors_floats(os.path.join(out, "final", "model.safetensors"))
    if len(finals) == 2:
        surgical = {f"h.{layer}.self_attention.{name}" for layer in (1, 2)
                    for name in ("query_key_value.weight", "query_key_value.bias", "dense.weight")}
        for name, a in finals["cpu"].items():
            b = finals["cuda"][name]
            if name in surgical:
                worst = max(abs(x - y) for x, y in zip(a, b))
                check(worst <= 0.1 * 2 * 4 * 1e-3, f"train --surgery: {name} differs by {worst}")
            else:
                check(a == b, f"train --surgery: frozen tensor {name} differs")

    # train resumed on the device (moments uploaded back) ends bit-identical to the uninterrupted
    # device run: weights and optimizer state.
    out = os.path.join(tmp, "train-cuda-resumed")
    common = ("train", "--model", model, "--data", data, "--out", out, "--seq_len", "16",
              "--batch", "2", "--steps", "4", "--lr", "1e-3", "--device", "cuda",
              "--checkpoint_every", "2")
    r = run(*common, "--stop_after", "2")
    check(r.returncode == 0, f"train --stop_after on cuda: exit {r.returncode}: {r.stderr}")
    r = run(*common, "--resume")
    check(r.returncode == 0, f"train --resume on cuda: exit {r.returncode}: {r.stderr}")
    for name in ("model.safetensors", "optimizer.bin"):
        paths = [os.path.join(d, "final", name) for d in (out, os.path.join(tmp, "train-cuda"))]
        if all(os.path.exists(p) for p in paths):
            with open(paths[0], "rb") as f0, open(paths[1], "rb") as f1:
                check(f0.read() == f1.read(), f"train resumed on cuda: final/{name} differs")
        else:
            check(False, f"train resumed on cuda: final/{name} missing")

    # pretrain --collapse on both devices (the sink loss's kernel term in the device's attention
    # backward): the same heads collapse, and nothing else. A recipe short enough for the
    # emulator (40 steps of a 2 x 4 x 8 model; a strong auxiliary loss so the two layer-1 heads
    # collapse that fast); both models diagnosed on the CPU.
    corpus = os.path.join(tmp, "corpus.txt")
    words = ["the", "fox", "jumps", "over", "a", "lazy", "dog", "and", "runs", "far", "away",
             "from", "home", "while", "birds", "sing"]
    state = 7
    with open(corpus, "w") as f:
        for d in range(400):
            sentence = []
            for _ in range(8 + d % 7):
                state = (state * 1103515245 + 12345) & 0xFFFFFFFF
                sentence.append(words[(state >> 16) % 16])
            f.write(" ".join(sentence) + f", number {d}.\n\n")
    collapsed, first_steps = {}, {}
    for device in ("cpu", "cuda"):
        out = os.path.join(tmp, f"pretrain-{device}")
        r = run("pretrain", "--data", corpus, "--out", out, "--n_layer", "2", "--n_head", "4",
                "--hidden_size", "32", "--steps", "40", "--warmup", "2", "--lr", "3e-2",
                "--eval_every", "0", "--collapse", "1:1,1:3", "--collapse_weight", "20",
                "--seq_len", "16", "--batch", "4", "--holdout", "0.02", "--device", device)
        check(r.returncode == 0, f"pretrain --device {device}: exit {r.returncode}: {r.stderr}")
        if r.returncode != 0:
            continue
        with open(os.path.join(out, "train", "metrics.jsonl")) as f:
            steps = [m for m in map(json.loads, f) if m.get("event") == "step"]
        first_steps[device] = steps[0] if steps else {}
        report = os.path.join(tmp, f"pretrain-{device}.json")
        r = run("diagnose", "--model", out, "--data", corpus, "--seq_len", "16", "--max_seqs", "16",
                "--out", report, "--device", "cpu")
        check(r.returncode == 0, f"diagnose pretrain-{device}: exit {r.returncode}: {r.stderr}")
        if r.returncode == 0:
            with open(report) as f:
                heads = json.load(f)["heads"]
            collapsed[device] = sorted((h["layer"], h["head"]) for h in heads
                                       if h["class"] in ("SINK", "DEAD"))
    if len(collapsed) == 2:
        check(collapsed["cpu"] == collapsed["cuda"] == [(1, 1), (1, 3)],
              f"pretrain --collapse: collapsed heads {collapsed}")
    if len(first_steps) == 2:
        # Step 1 runs on the same weights: the losses within the loss bound (relative 1e-5), the
        # gradient norm (the sink term's gradient is part of it) within the gradient's relative
        # bound 1e-3 (docs/TOLERANCES.md, "Training on the CUDA backend").
        a, b = first_steps["cpu"], first_steps["cuda"]
        for key, bound in (("loss", 1e-5), ("sink_loss", 1e-5), ("grad_norm", 1e-3)):
            ok = key in a and key in b and abs(a[key] - b[key]) <= bound * abs(a[key])
            check(ok, f"pretrain --collapse step 1: {key} {a.get(key)} vs {b.get(key)}")

    # --dtype auto (the default) for train: bf16 weights on the device when the tensor-core
    # attention takes the head dim (64: a 2 x 4 x 64 model pretrained for one step on the cpu),
    # f32 for head_dim 16 (bloom-h4-l2) and on the cpu; the metrics start event, the start line
    # and --dry_run say which and why.
    model64 = os.path.join(tmp, "model64")
    r = run("pretrain", "--data", corpus, "--out", model64, "--n_layer", "2", "--n_head", "4",
            "--hidden_size", "256", "--steps", "1", "--warmup", "0", "--eval_every", "0",
            "--seq_len", "16", "--batch", "2", "--holdout", "0.02", "--device", "cpu")
    check(r.returncode == 0, f"pretrain 2 x 4 x 64: exit {r.returncode}: {r.stderr}")
    model16 = os.path.join(source, "tests/fixtures/models/bloom-h4-l2")
    for name, m, device, dtype, reason in [
            ("auto-64-cuda", model64, "cuda", "bf16", "auto: cuda, head_dim 64"),
            ("auto-16-cuda", model16, "cuda", "f32", "auto: head_dim 16 has no tensor-core kernel"),
            ("auto-64-cpu", model64, "cpu", "f32", "auto: cpu")]:
        out = os.path.join(tmp, f"train-{name}")
        r = run("train", "--model", m, "--data", data, "--out", out, "--seq_len", "16",
                "--batch", "2", "--grad_accum", "1", "--steps", "1", "--lr", "1e-3",
                "--device", device)
        check(r.returncode == 0, f"train {name}: exit {r.returncode}: {r.stderr}")
        if r.returncode != 0:
            continue
        with open(os.path.join(out, "metrics.jsonl")) as f:
            starts = [m for m in map(json.loads, f) if m.get("event") == "start"]
        check(len(starts) == 1 and starts[0].get("dtype") == dtype and
              starts[0].get("dtype_reason") == reason, f"train {name}: start event {starts}")
        check(f"{dtype} weights ({reason})" in r.stdout, f"train {name}: stdout {r.stdout!r}")
        r = run("train", "--dry_run", "--model", m, "--device", device, "--seq_len", "16")
        check(r.returncode == 0 and f"{dtype} ({reason})" in r.stdout,
              f"train --dry_run {name}: exit {r.returncode}: {r.stdout!r} {r.stderr!r}")

    # repair with the default --dtype auto on the device: bf16 for head_dim 64, recorded in
    # repair.json and the pass's training start event; train --dtype f16 logs its loss scale.
    out = os.path.join(tmp, "repair64")
    r = run("repair", "--model", model64, "--data", corpus, "--out", out, "--passes", "1",
            "--heads", "1:0", "--steps", "1", "--warmup", "0", "--seq_len", "16", "--batch", "2",
            "--grad_accum", "1", "--holdout", "0.01", "--max_seqs", "2", "--device", "cuda")
    check(r.returncode == 0, f"repair auto on cuda: exit {r.returncode}: {r.stderr}")
    if r.returncode == 0:
        with open(os.path.join(out, "repair.json")) as f:
            summary = json.load(f)
        check(summary.get("dtype") == "bf16" and
              summary.get("dtype_reason") == "auto: cuda, head_dim 64",
              f"repair auto on cuda: repair.json dtype {summary.get('dtype')!r} "
              f"{summary.get('dtype_reason')!r}")
        with open(os.path.join(out, "pass_1", "train", "metrics.jsonl")) as f:
            starts = [m for m in map(json.loads, f) if m.get("event") == "start"]
        check(len(starts) == 1 and starts[0].get("dtype") == "bf16",
              f"repair auto on cuda: training start event {starts}")
    out = os.path.join(tmp, "train-f16")
    r = run("train", "--model", model64, "--data", data, "--out", out, "--seq_len", "16",
            "--batch", "2", "--grad_accum", "1", "--steps", "1", "--lr", "1e-3",
            "--device", "cuda", "--dtype", "f16")
    check(r.returncode == 0, f"train --dtype f16 on cuda: exit {r.returncode}: {r.stderr}")
    if r.returncode == 0:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            steps = [m for m in map(json.loads, f) if m.get("event") == "step"]
        check(len(steps) == 1 and steps[0].get("loss_scale") == 65536.0,
              f"train --dtype f16 on cuda: step lines {steps}")

    # Errors: one line on stderr, exit 1, for a device that is not there, a malformed name, and
    # a storage type training does not take.
    for args, needle in [
        (("eval", "--model", model, "--data", data, "--device", "cuda:9"), "cuda:9"),
        (("eval", "--model", model, "--data", data, "--device", "gpu"), "'gpu'"),
        (("eval", "--model", model, "--data", data, "--dtype", "f8"), "'f8'"),
        # The fixture's head_dim 8 is not one the tensor-core attention takes: auto chose f32
        # above; asking for bf16 on the device is refused naming the head dim.
        (("eval", "--model", model, "--data", data, "--device", "cuda", "--dtype", "bf16"),
         "head_dim"),
        # repair and pretrain take --dtype as train does: bf16 on the device for a head dim the
        # tensor-core attention does not take (8 here; pretrain's default shape has 16) is
        # refused before any work, naming it, and so is a storage type that is not one.
        (("repair", "--model", model, "--data", data, "--out", os.path.join(tmp, "t"),
          "--device", "cuda", "--dtype", "bf16"), "this model has 8"),
        (("repair", "--model", model, "--data", data, "--out", os.path.join(tmp, "t"),
          "--device", "cuda", "--dtype", "f8"), "'f8'"),
        (("pretrain", "--data", data, "--out", os.path.join(tmp, "t"), "--device", "cuda",
          "--dtype", "bf16"), "this model has 16"),
        # train: a storage type that is not one, and bf16 training on the device for a head dim
        # the tensor-core attention does not take, both before any work.
        (("train", "--model", model, "--data", data, "--out", os.path.join(tmp, "t"),
          "--device", "cuda", "--dtype", "f8"), "'f8'"),
        (("train", "--model", model, "--data", data, "--out", os.path.join(tmp, "t"),
          "--device", "cuda", "--dtype", "bf16"), "head_dim"),
    ]:
        r = run(*args)
        lines = r.stderr.strip().splitlines()
        check(r.returncode == 1 and len(lines) == 1 and needle in lines[0],
              f"{' '.join(args[:1])} --device {args[-1]}: exit {r.returncode}, stderr {r.stderr!r}")

for f in failures:
    print("FAIL:", f)
print(f"cuda_cli: {len(failures)} failure(s)")
sys.exit(1 if failures else 0)
