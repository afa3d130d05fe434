#!/usr/bin/env python3
"""The CLI on --device cuda against --device cpu (CTest `cuda_cli`, label gpu): eval and diagnose
through the engine binary on a fixture model, and the one-line errors of a bad or unsupported
device. Runs on a GPU or under the CUDA emulator. Usage: cuda_cli_test.py ENGINE SOURCE_DIR"""
import json
import os
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

    # Errors: one line on stderr, exit 1, for a device that is not there, a malformed name, and
    # a command that does not run on CUDA yet.
    for args, needle in [
        (("eval", "--model", model, "--data", data, "--device", "cuda:9"), "cuda:9"),
        (("eval", "--model", model, "--data", data, "--device", "gpu"), "'gpu'"),
        (("eval", "--model", model, "--data", data, "--dtype", "f8"), "'f8'"),
        # The fixture's head_dim 8 is not one the tensor-core attention takes: auto chose f32
        # above; asking for bf16 on the device is refused naming the head dim.
        (("eval", "--model", model, "--data", data, "--device", "cuda", "--dtype", "bf16"),
         "head_dim"),
        (("train", "--model", model, "--data", data, "--out", os.path.join(tmp, "t"),
          "--steps", "1", "--device", "cuda"), "does not run on a CUDA device yet"),
    ]:
        r = run(*args)
        lines = r.stderr.strip().splitlines()
        check(r.returncode == 1 and len(lines) == 1 and needle in lines[0],
              f"{' '.join(args[:1])} --device {args[-1]}: exit {r.returncode}, stderr {r.stderr!r}")

for f in failures:
    print("FAIL:", f)
print(f"cuda_cli: {len(failures)} failure(s)")
sys.exit(1 if failures else 0)
