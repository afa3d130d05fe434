#!/usr/bin/env python3
"""Convert a Hugging Face BLOOM directory from pytorch_model.bin to model.safetensors.

The engine never unpickles: PyTorch's .bin files are pickles that can run code when loaded. This
script does the one-time conversion with torch's restricted loader (weights_only=True), so only
tensors and plain containers are accepted.

Usage:
    python scripts/convert_pytorch_bin.py MODEL_DIR [--out OUT_DIR]

Reads MODEL_DIR/pytorch_model.bin (or the shards listed in pytorch_model.bin.index.json) and
writes OUT_DIR/model.safetensors (OUT_DIR defaults to MODEL_DIR). Tensor names are kept exactly
as stored (released checkpoints use "word_embeddings.weight"; transformers' save_pretrained uses
"transformer.word_embeddings.weight"; the engine reads both). A lm_head.weight equal to the
embedding is dropped, as transformers does, because BLOOM ties the two (a differing one is kept,
and the engine will refuse it with a clear error). When OUT_DIR differs from MODEL_DIR, config.json
and the tokenizer files are copied next to the weights.

Verified with torch 2.15.0 and safetensors 0.8.0 (transformers 5.24.0 wrote the test input);
needs only torch (>= 1.13, for weights_only) and safetensors, not transformers.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

COPIED_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json")
TIED_HEAD = "lm_head.weight"
EMBEDDING_SUFFIX = "word_embeddings.weight"


def load_state_dict(model_dir: Path) -> dict:
    single = model_dir / "pytorch_model.bin"
    index = model_dir / "pytorch_model.bin.index.json"
    if single.exists():
        shards = [single]
    elif index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = [model_dir / name for name in sorted(set(weight_map.values()))]
    else:
        sys.exit(f"{model_dir}: no pytorch_model.bin or pytorch_model.bin.index.json")
    state = {}
    for shard in shards:
        part = torch.load(shard, map_location="cpu", weights_only=True)
        duplicated = state.keys() & part.keys()
        if duplicated:
            sys.exit(f"{shard}: tensor {sorted(duplicated)[0]} also appears in an earlier shard")
        state.update(part)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out_dir = args.out or args.model_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    state = load_state_dict(args.model_dir)
    embedding = next((v for k, v in state.items() if k.endswith(EMBEDDING_SUFFIX)), None)
    head = state.get(TIED_HEAD)
    if head is not None and embedding is not None and torch.equal(head, embedding):
        del state[TIED_HEAD]
    # safetensors refuses tensors that share storage (tied weights do); give each its own copy.
    tensors = {name: t.detach().contiguous().clone() for name, t in state.items()}
    target = out_dir / "model.safetensors"
    temp = out_dir / ".model.safetensors.converting"
    save_file(tensors, str(temp), metadata={"format": "pt"})
    temp.replace(target)  # atomic: a crash never leaves a half-written model.safetensors

    if out_dir.resolve() != args.model_dir.resolve():
        for name in COPIED_FILES:
            if (args.model_dir / name).exists():
                shutil.copyfile(args.model_dir / name, out_dir / name)
    print(f"wrote {target} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
