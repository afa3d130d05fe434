// `engine train --model DIR --data FILE --out DIR [--surgery plan.json]
//   [--epochs E | --steps N] [--seq_len 512] [--batch 1] [--grad_accum 8] [--lr 5e-5]
//   [--warmup N] [--schedule cosine|constant] [--clip 1.0] [--optimizer adamw|sgd]
//   [--eval_data FILE | --holdout F] [--eval_every N] [--checkpoint_every N] [--scan_data FILE]
//   [--seed S] [--resume] [--recompute] [--skip_nonfinite] [--dry_run [--device cpu|cuda]]
//   [--device auto|cpu|cuda] [--dtype auto|f32|bf16|f16] [--checkpoint_dtype f32|bf16|f16]
//   [--dist_backend auto|mpi|nccl] [--dist_first_timeout S] [--dist_timeout S] [--dist_checksum]`:
// surgery-aware training (model/trainer.h, docs/TRAINING.md). Step lines go to stdout;
// OUT/metrics.jsonl gets one JSON object per step and evaluation; checkpoints are OUT/step_N/,
// OUT/best/, OUT/final/. Started by mpirun, srun or with torchrun-style variables, it is one rank
// of a data-parallel run (docs/DISTRIBUTED.md).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/distributed_launch.h"
#include "cli/flags.h"
#include "cli/progress.h"
#include "cli/model_loading.h"
#include "engine/device.h"
#include "engine/dtype.h"
#include "model/config.h"
#include "model/dataset.h"
#include "model/memory_estimate.h"
#include "model/model_directory.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "surgery/plan.h"
#include "surgery/surgery_training.h"

ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_DECLARE_FLAG(int, batch);
ABSL_FLAG(std::string, surgery, "", "train: plan.json; without it every parameter is trainable");
ABSL_FLAG(int, epochs, 1, "train: passes over the training chunks (when --steps is 0)");
ABSL_FLAG(int, steps, 0, "train: optimizer steps (0 = derived from --epochs)");
ABSL_FLAG(int, grad_accum, 8, "train: micro-batches per optimizer step");
ABSL_FLAG(double, lr, 5e-5, "train: peak learning rate");
ABSL_FLAG(int, warmup, -1, "train: warm-up steps (-1 = min(100, total / 4))");
ABSL_FLAG(std::string, schedule, "cosine", "train: cosine or constant after warm-up");
ABSL_FLAG(double, clip, 1.0, "train: global gradient-norm clip over trainable elements (0 = off)");
ABSL_FLAG(std::string, optimizer, "adamw", "train: adamw or sgd");
ABSL_FLAG(double, weight_decay, 0.0, "train: AdamW decoupled weight decay");
ABSL_FLAG(std::string, eval_data, "", "train: held-out data file (instead of --holdout)");
ABSL_FLAG(double, holdout, 0.05, "train: share of --data chunks held out for perplexity");
ABSL_FLAG(int, eval_every, 0, "train: steps between held-out evaluations (0 = at the end)");
ABSL_FLAG(int, checkpoint_every, 0,
          "train: steps between checkpoints (0 = --eval_every, or once per epoch)");
ABSL_FLAG(bool, resume, false, "train: continue from the last complete OUT/step_N");
ABSL_FLAG(bool, recompute, false,
          "train: recompute each block's activations in the backward (less memory, same result)");
ABSL_FLAG(bool, skip_nonfinite, false, "train: skip steps with a NaN/Inf loss or gradient");
ABSL_FLAG(bool, dry_run, false,
          "train: print the planned memory per component for --model's config.json, --surgery, "
          "--batch, --seq_len, --recompute and --device, and exit (no weights are read)");
ABSL_FLAG(int, stop_after, 0,
          "train: stop after this many steps without a final checkpoint "
          "(for interruption tests; 0 = off)");

namespace engine::cli {
namespace {

// Held-out chunks scanned when no --scan_data is given: enough sequences for stable per-head
// means on small runs without making each evaluation much slower.
constexpr size_t kDefaultScanChunks = 16;

// Chunks of one data file; documents joined by the tokens of "\n\n" (none without a tokenizer).
absl::StatusOr<ChunkedDataset> chunks_of(const std::string& path, Tokenizer* tokenizer,
                                         uint32_t vocab, double holdout) {
  DataReadOptions read;
  read.tokenizer = tokenizer;
  read.vocab_size = vocab;
  absl::StatusOr<Corpus> corpus = load_corpus({path}, read);
  if (!corpus.ok()) return corpus.status();
  std::vector<uint32_t> separator;
  if (tokenizer != nullptr) {
    absl::StatusOr<std::vector<uint32_t>> s = tokenizer->encode("\n\n");
    if (!s.ok()) return s.status();
    separator = std::move(*s);
  }
  ChunkOptions co;
  co.seq_len = absl::GetFlag(FLAGS_seq_len);
  co.holdout_fraction = holdout;
  co.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  return ChunkedDataset::build(*corpus, separator, co);
}

}  // namespace

// `--dry_run`: the memory plan (model/memory_estimate.h) from config.json and the plan alone.
int run_train_dry_run() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  if (dir.empty()) return fail("train --dry_run: --model DIR is required (its config.json)");
  absl::StatusOr<BloomConfig> config = load_bloom_config(std::filesystem::path(dir) / "config.json");
  if (!config.ok()) return fail(std::string(config.status().message()));
  std::optional<SurgeryPlan> plan;
  const std::string plan_path = absl::GetFlag(FLAGS_surgery);
  if (!plan_path.empty()) {
    absl::StatusOr<SurgeryPlan> p = load_plan(plan_path);
    if (!p.ok()) return fail(std::string(p.status().message()));
    plan = std::move(*p);
  }
  const std::string device = resolve_device(absl::GetFlag(FLAGS_device));
  const bool cuda = device.rfind("cuda", 0) == 0;
  if (!cuda && device != "cpu") {
    return fail(absl::StrCat("train --dry_run: --device ", device,
                             ": expected auto, cpu, cuda or cuda:N"));
  }
  // On the device the plan follows --dtype as a run does (weight_storage's rule); the CPU's
  // 16-bit twin is a reference path, planned as f32.
  absl::StatusOr<WeightStorage> storage =
      weight_storage("train --dry_run", cuda, config->head_dim());
  if (!storage.ok()) return fail(std::string(storage.status().message()));
  const bool sixteen = cuda && storage->dtype != DType::kF32;
  const std::string dtype = absl::AsciiStrToLower(dtype_name(storage->dtype));
  TrainingMemoryShape shape;
  shape.batch = absl::GetFlag(FLAGS_batch);
  shape.seq = absl::GetFlag(FLAGS_seq_len);
  shape.recompute = absl::GetFlag(FLAGS_recompute);
  shape.weight_bytes = sixteen ? 2 : 4;
  shape.activation_bytes = sixteen ? 2 : 4;
  shape.device = cuda;
  absl::StatusOr<TrainingMemoryPlan> m =
      plan_surgery_training_memory(*config, plan ? &*plan : nullptr, shape);
  if (!m.ok()) {
    return fail(absl::StrCat(plan_path.empty() ? dir : plan_path, ": ",
                             std::string(m.status().message())));
  }
  std::printf("train --dry_run: %s, %s\n", dir.c_str(),
              plan ? absl::StrCat(plan->targets.size(), " target heads from ", plan_path).c_str()
                   : "every parameter trainable");
  std::printf("device %s (%s; %s (%s)), batch %lld x seq %lld, recompute %s\n", device.c_str(),
              sixteen ? absl::StrCat(dtype, " weights and activations, fp32 masters, gradient and "
                                     "AdamW state").c_str()
                      : "fp32 throughout",
              dtype.c_str(), storage->reason.c_str(),
              static_cast<long long>(shape.batch), static_cast<long long>(shape.seq),
              shape.recompute ? "on" : "off");
  std::printf("%s", m->table().c_str());
  return 0;
}

int run_train(const std::vector<std::string>& args) {
  apply_thread_flag();
  if (absl::GetFlag(FLAGS_dry_run)) return run_train_dry_run();
  // First, so that every later failure can end all ranks (distributed_launch.h): from here on
  // this local `fail` shadows the one of commands.h.
  absl::StatusOr<std::unique_ptr<Communicator>> comm = communicator_from_environment();
  if (!comm.ok()) return fail(std::string(comm.status().message()));
  auto fail = [&](const std::string& message) { return fail_on_rank(**comm, message); };
  // The device first: asking for one this command cannot use is an error before any work.
  // Training runs on a CUDA device: asked explicitly, or by auto when a real GPU is visible and
  // there is one rank (docs/CUDA.md). Several ranks use one GPU per local rank.
  const bool explicit_cuda = absl::GetFlag(FLAGS_device).rfind("cuda", 0) == 0;
  if (explicit_cuda && (*comm)->world_size() > 1) {
    // One GPU per local rank (docs/DISTRIBUTED.md): `cuda` is the local rank's device.
    const std::string asked = absl::GetFlag(FLAGS_device);
    const std::string own = absl::StrCat("cuda:", (*comm)->local_rank());
    if (asked != "cuda" && asked != own) {
      return fail(absl::StrCat("train: --device ", asked, " with ", (*comm)->world_size(),
                               " ranks: each rank trains on the GPU of its local rank (", own,
                               " here); use --device cuda"));
    }
    absl::SetFlag(&FLAGS_device, own);
  }
  absl::StatusOr<std::unique_ptr<Backend>> device =
      training_backend("train", (*comm)->world_size() == 1);
  if (!device.ok()) return fail(std::string(device.status().message()));
  std::unique_ptr<Backend> backend = *std::move(device);
  SurgeryTrainOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.out_dir = absl::GetFlag(FLAGS_out);
  const std::string data_path = absl::GetFlag(FLAGS_data);
  if (o.model_dir.empty()) return fail("train: --model DIR is required");
  if (data_path.empty()) return fail("train: --data FILE is required");
  if (o.out_dir.empty()) return fail("train: --out DIR is required");
  const std::string schedule = absl::GetFlag(FLAGS_schedule);
  const std::string optimizer = absl::GetFlag(FLAGS_optimizer);
  if (schedule != "cosine" && schedule != "constant") {
    return fail(absl::StrCat("train: --schedule ", schedule, ": expected cosine or constant"));
  }
  if (optimizer != "adamw" && optimizer != "sgd") {
    return fail(absl::StrCat("train: --optimizer ", optimizer, ": expected adamw or sgd"));
  }
  const std::string plan_path = absl::GetFlag(FLAGS_surgery);
  if (!plan_path.empty()) {
    absl::StatusOr<SurgeryPlan> plan = load_plan(plan_path);
    if (!plan.ok()) return fail(std::string(plan.status().message()));
    o.plan = std::move(*plan);
  }
  o.seq_len = absl::GetFlag(FLAGS_seq_len);
  o.batch = absl::GetFlag(FLAGS_batch);
  o.grad_accum = absl::GetFlag(FLAGS_grad_accum);
  o.epochs = absl::GetFlag(FLAGS_epochs);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.lr = absl::GetFlag(FLAGS_lr);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.schedule = schedule == "cosine" ? ScheduleKind::kCosine : ScheduleKind::kConstant;
  o.optimizer.kind = optimizer == "adamw" ? OptimizerKind::kAdamW : OptimizerKind::kSgd;
  o.optimizer.clip = absl::GetFlag(FLAGS_clip);
  o.optimizer.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.optimizer.skip_nonfinite = absl::GetFlag(FLAGS_skip_nonfinite);
  o.eval_every = absl::GetFlag(FLAGS_eval_every);
  o.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  o.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  o.resume = absl::GetFlag(FLAGS_resume);
  o.recompute = absl::GetFlag(FLAGS_recompute);
  o.stop_after_step = absl::GetFlag(FLAGS_stop_after);
  const std::string checkpoint_dtype = absl::GetFlag(FLAGS_checkpoint_dtype);
  const std::optional<DType> saved = float_dtype_from_flag(checkpoint_dtype);
  if (!saved.has_value()) {
    return fail(absl::StrCat("train: --checkpoint_dtype '", checkpoint_dtype,
                             "' is not f32, bf16 or f16"));
  }
  o.checkpoint_storage = *saved;
  ProgressBar bar("train", "steps");
  o.log = [&bar](const std::string& line) { bar.print_line(line); };
  o.progress = [&bar](int64_t done, int64_t total) { bar.update(done, total); };

  absl::StatusOr<BloomConfig> config =
      load_bloom_config(std::filesystem::path(o.model_dir) / "config.json");
  if (!config.ok()) return fail(std::string(config.status().message()));
  if (backend->kind() == DeviceKind::kCuda && config->family != ModelFamily::kBloom) {
    return fail(absl::StrCat("train: --device ", absl::GetFlag(FLAGS_device), ": the ",
                             family_name(config->family),
                             " family runs on the CPU only; use --device cpu"));
  }
  // --dtype: the weights' storage while training (weight_storage's rule; auto: bf16 on a CUDA
  // device whose tensor-core attention takes the head dim); bf16 / f16 keep fp32 masters of the
  // trainable elements.
  absl::StatusOr<WeightStorage> storage = training_storage("train", *backend, config->head_dim());
  if (!storage.ok()) return fail(std::string(storage.status().message()));
  o.storage = storage->dtype;
  o.storage_reason = storage->reason;
  if (o.storage == DType::kF16) {
    // f16 (5 exponent bits) trains with dynamic loss scaling (model/trainer.h, LossScaling).
    o.optimizer.loss_scaling = {kF16InitialLossScale, /*dynamic=*/true};
  }
  absl::StatusOr<std::optional<Tokenizer>> tokenizer = optional_tokenizer(o.model_dir.string());
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));
  Tokenizer* tok = tokenizer->has_value() ? &**tokenizer : nullptr;
  const uint32_t vocab = static_cast<uint32_t>(config->vocab_size);
  const std::string eval_path = absl::GetFlag(FLAGS_eval_data);
  const double holdout = eval_path.empty() ? absl::GetFlag(FLAGS_holdout) : 0.0;
  absl::StatusOr<ChunkedDataset> train = chunks_of(data_path, tok, vocab, holdout);
  if (!train.ok()) return fail(std::string(train.status().message()));
  TrainData data;
  data.train = &*train;
  if (!eval_path.empty()) {
    absl::StatusOr<ChunkedDataset> eval = chunks_of(eval_path, tok, vocab, 0.0);
    if (!eval.ok()) return fail(std::string(eval.status().message()));
    for (size_t i = 0; i < eval->train_size(); ++i) {
      std::span<const uint32_t> c = eval->train_chunk(i);
      data.eval_chunks.emplace_back(c.begin(), c.end());
    }
  } else {
    for (size_t i = 0; i < train->holdout_size(); ++i) {
      std::span<const uint32_t> c = train->holdout_chunk(i);
      data.eval_chunks.emplace_back(c.begin(), c.end());
    }
  }
  const std::string scan_path = absl::GetFlag(FLAGS_scan_data);
  if (!scan_path.empty()) {
    absl::StatusOr<ChunkedDataset> scan = chunks_of(scan_path, tok, vocab, 0.0);
    if (!scan.ok()) return fail(std::string(scan.status().message()));
    for (size_t i = 0; i < scan->train_size(); ++i) {
      std::span<const uint32_t> c = scan->train_chunk(i);
      o.scan_chunks.emplace_back(c.begin(), c.end());
    }
  } else {
    const size_t n = std::min(data.eval_chunks.size(), kDefaultScanChunks);
    o.scan_chunks.assign(data.eval_chunks.begin(), data.eval_chunks.begin() + n);
  }
  apply_distributed_options(**comm, o);
  absl::StatusOr<TrainRunResult> r = run_surgery_training(o, data, *backend);
  if (!r.ok()) return fail(std::string(r.status().message()));
  if ((*comm)->rank() != 0) return 0;
  if (r->final_dir.empty()) {
    std::printf("train: stopped after step %lld (--stop_after)\n",
                static_cast<long long>(r->steps));
  } else {
    std::printf("train: done, %lld steps, final loss %.4f%s, weights in %s\n",
                static_cast<long long>(r->steps), r->final_loss,
                r->best_ppl.has_value()
                    ? absl::StrCat(", best held-out perplexity ", *r->best_ppl).c_str()
                    : "",
                r->final_dir.c_str());
  }
  return 0;
}

}  // namespace engine::cli
