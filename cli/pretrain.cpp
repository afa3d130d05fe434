// `engine pretrain --data FILE --out DIR [--n_layer 4] [--n_head 8] [--hidden_size 128]
// [--steps 400] [--lr 1e-3] [--seq_len 128] [--batch 8] [--grad_accum 1] [--warmup 30]
// [--eval_every 100] [--holdout 0.005] [--seed S] [--resume] [--collapse L:H,...]
// [--collapse_weight W]`: trains a small byte-level BLOOM-architecture model from scratch
// (model/pretrain.h, docs/REPAIR.md); --collapse induces attention-sink heads (controlled
// collapse, model/bloom_backward.h). The training flags are
// shared with `engine train`; those left at `engine train`'s defaults take pretraining's defaults
// (default_pretrain_recipe), so `--lr` means the same thing in both commands.
#include <cstdio>
#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/invocation.h"
#include "cli/model_loading.h"
#include "model/pretrain.h"
#include "surgery/plan_select.h"

ABSL_DECLARE_FLAG(int, batch);
ABSL_DECLARE_FLAG(int, steps);
ABSL_DECLARE_FLAG(int, grad_accum);
ABSL_DECLARE_FLAG(double, lr);
ABSL_DECLARE_FLAG(int, warmup);
ABSL_DECLARE_FLAG(int, eval_every);
ABSL_DECLARE_FLAG(double, holdout);
ABSL_DECLARE_FLAG(bool, resume);
ABSL_FLAG(int, n_layer, 4, "pretrain: transformer blocks");
ABSL_FLAG(int, n_head, 8, "pretrain: attention heads per block");
ABSL_FLAG(int, hidden_size, 128, "pretrain: hidden size (a multiple of --n_head)");
ABSL_FLAG(std::string, collapse, "",
          "pretrain: controlled collapse: LAYER:HEAD,... heads trained towards the first token");
ABSL_FLAG(double, collapse_weight, 1.0,
          "pretrain: weight of the --collapse heads' auxiliary loss (mean -log A[t, first])");

namespace engine::cli {
namespace {

// True when the named flag still holds its compiled-in default (it was not given).
bool at_default(const char* name) {
  const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  return flag != nullptr && flag->CurrentValue() == flag->DefaultValue();
}

}  // namespace

int run_pretrain(const std::vector<std::string>& args) {
  (void)args;
  apply_thread_flag();
  PretrainOptions o;
  // The device first: asking for one this command cannot use is an error before any work.
  absl::StatusOr<std::unique_ptr<Backend>> device = training_backend("pretrain");
  if (!device.ok()) return fail(std::string(device.status().message()));
  std::unique_ptr<Backend> backend = *std::move(device);
  o.data = absl::GetFlag(FLAGS_data);
  o.out_dir = absl::GetFlag(FLAGS_out);
  if (o.data.empty()) return fail("pretrain: --data FILE is required");
  if (o.out_dir.empty()) return fail("pretrain: --out DIR is required");
  o.n_layer = absl::GetFlag(FLAGS_n_layer);
  o.n_head = absl::GetFlag(FLAGS_n_head);
  o.hidden_size = absl::GetFlag(FLAGS_hidden_size);
  o.train = default_pretrain_recipe();
  if (!at_default("seq_len")) o.train.seq_len = absl::GetFlag(FLAGS_seq_len);
  if (!at_default("batch")) o.train.batch = absl::GetFlag(FLAGS_batch);
  if (!at_default("steps")) o.train.steps = absl::GetFlag(FLAGS_steps);
  if (!at_default("grad_accum")) o.train.grad_accum = absl::GetFlag(FLAGS_grad_accum);
  if (!at_default("lr")) o.train.lr = absl::GetFlag(FLAGS_lr);
  if (!at_default("warmup")) o.train.warmup = absl::GetFlag(FLAGS_warmup);
  if (!at_default("eval_every")) o.train.eval_every = absl::GetFlag(FLAGS_eval_every);
  if (!at_default("holdout")) o.holdout = absl::GetFlag(FLAGS_holdout);
  o.train.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  o.resume = absl::GetFlag(FLAGS_resume);
  if (!absl::GetFlag(FLAGS_collapse).empty()) {
    absl::StatusOr<std::vector<HeadTarget>> heads =
        parse_head_list(absl::GetFlag(FLAGS_collapse), "collapse");
    if (!heads.ok()) return fail(std::string(heads.status().message()));
    o.collapse = *std::move(heads);
  }
  o.collapse_weight = absl::GetFlag(FLAGS_collapse_weight);
  // --dtype: as `engine train` (auto: bf16 on a CUDA device whose tensor-core attention takes
  // the head dim). A shape that does not divide is refused by run_pretraining, naming it.
  const int64_t head_dim =
      o.n_head > 0 && o.hidden_size % o.n_head == 0 ? o.hidden_size / o.n_head : 0;
  absl::StatusOr<WeightStorage> storage = training_storage("pretrain", *backend, head_dim);
  if (!storage.ok()) return fail(std::string(storage.status().message()));
  if (!o.collapse.empty() && storage->dtype != DType::kF32 &&
      absl::GetFlag(FLAGS_dtype) == "auto") {
    // The sink loss reads fp32 QKV and lse (16-bit weights refuse it): auto keeps f32 for it.
    storage->dtype = DType::kF32;
    storage->reason = "auto: --collapse (the sink loss) trains f32 weights";
  }
  o.train.storage = storage->dtype;
  o.train.storage_reason = storage->reason;
  if (o.train.storage == DType::kF16) {
    // f16 (5 exponent bits) trains with dynamic loss scaling (model/trainer.h, LossScaling).
    o.train.optimizer.loss_scaling = {kF16InitialLossScale, /*dynamic=*/true};
  }
  o.command = invocation_command_line();
  o.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };
  absl::StatusOr<PretrainResult> r = run_pretraining(o, *backend);
  if (!r.ok()) return fail(std::string(r.status().message()));
  std::printf("pretrain: done, %lld steps in %.0f s, final loss %.4f%s; model in %s\n",
              static_cast<long long>(r->steps), r->seconds, r->final_loss,
              r->best_ppl.has_value()
                  ? absl::StrCat(", best held-out perplexity ", *r->best_ppl).c_str()
                  : "",
              o.out_dir.c_str());
  return 0;
}

}  // namespace engine::cli
