#include "cli/flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, model, "", "model directory (HF layout: config.json + *.safetensors)");
ABSL_FLAG(std::string, data, "", "input data: .txt, .jsonl or an engine token file");
ABSL_FLAG(std::string, out, "", "output path");
ABSL_FLAG(bool, json, false, "print machine-readable JSON instead of a readable summary");
ABSL_FLAG(int, seq_len, 512, "sequence length in tokens");
ABSL_FLAG(int, threads, 0, "CPU threads (0 = all cores)");
ABSL_FLAG(int, seed, 1234, "random seed");
ABSL_FLAG(std::string, device, "auto",
          "compute device: auto (cuda when a GPU is visible, else cpu), cpu, cuda or cuda:N");
ABSL_FLAG(std::string, dtype, "auto",
          "storage of the weights: eval/diagnose/generate compute in it and train/repair/pretrain "
          "train in it (auto = bf16 on cuda when its tensor-core attention takes the head dim "
          "64/80/96/128, else f32; f32 on cpu; bf16 on cpu is the bf16-storage twin; training "
          "keeps fp32 masters, f16 with dynamic loss scaling); export writes it (auto = f32)");
ABSL_FLAG(std::string, checkpoint_dtype, "f32",
          "train: the checkpoints' weights: f32 (exact masters and frozen bits), or the --dtype "
          "of 16-bit training (rounded weights plus masters.bin)");
ABSL_FLAG(std::string, plan, "", "surgery plan (plan.json, docs/FORMATS.md)");
ABSL_FLAG(std::string, scan_data, "",
          "train/repair: data for the head scans (default: a slice of the held-out data)");
