// `engine repair --model DIR --data FILE --out DIR [--passes 2] [--select collapsed|sink|dead|
// all-in-band] [--heads L:H,...] [--layers A-B] [--head_indices A-B] [--exclude L:H,...]
// [--fallback_healthy] [--scan_data FILE] [--holdout 0.05] [--max_seqs N] [--dead/--sink/
// --low_entropy T] [--drift 0.05] [training flags of `engine train`] [--resume]`: the whole
// pipeline of surgery/repair.h. --data is cut into training chunks and a held-out share
// (--holdout); the held-out chunks give the perplexity that picks checkpoints and, without
// --scan_data, the sequences that are diagnosed.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <span>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/head_selection.h"
#include "cli/invocation.h"
#include "cli/model_loading.h"
#include "engine/engine.h"
#include "model/dataset.h"
#include "model/pretrain.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"
#include "surgery/corpus_scan.h"
#include "surgery/repair.h"

ABSL_DECLARE_FLAG(int, batch);
ABSL_DECLARE_FLAG(int, steps);
ABSL_DECLARE_FLAG(int, epochs);
ABSL_DECLARE_FLAG(int, grad_accum);
ABSL_DECLARE_FLAG(double, lr);
ABSL_DECLARE_FLAG(int, warmup);
ABSL_DECLARE_FLAG(double, clip);
ABSL_DECLARE_FLAG(double, weight_decay);
ABSL_DECLARE_FLAG(int, eval_every);
ABSL_DECLARE_FLAG(int, checkpoint_every);
ABSL_DECLARE_FLAG(double, holdout);
ABSL_DECLARE_FLAG(bool, resume);
ABSL_DECLARE_FLAG(int, max_seqs);
ABSL_DECLARE_FLAG(double, dead);
ABSL_DECLARE_FLAG(double, sink);
ABSL_DECLARE_FLAG(double, low_entropy);
ABSL_DECLARE_FLAG(double, drift);
ABSL_FLAG(int, passes, 2, "repair: at most this many diagnose -> surgery -> train passes");
ABSL_FLAG(bool, fallback_healthy, false,
          "repair: when pass 1 selects nothing, re-initialise one healthy head column instead");

namespace engine::cli {
namespace {

// The pretraining command recorded next to a model made by `engine pretrain`, if any.
std::optional<std::string> pretrain_command(const std::filesystem::path& model_dir) {
  std::ifstream in(model_dir / kPretrainSummaryFile);
  if (!in) return std::nullopt;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("command") || !j["command"].is_string()) {
    return std::nullopt;
  }
  return j["command"].get<std::string>();
}

// pretrain.json's "collapse" record (model/pretrain.h) when the model's collapse was induced by
// `engine pretrain --collapse`, else null; `note` receives the sentence the report shows.
nlohmann::json induced_collapse(const std::filesystem::path& model_dir, std::string* note) {
  std::ifstream in(model_dir / kPretrainSummaryFile);
  if (!in) return nullptr;
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("collapse") ||
      !j["collapse"].is_object()) {
    return nullptr;
  }
  const nlohmann::json& c = j["collapse"];
  std::string heads;
  if (c.contains("heads") && c["heads"].is_array()) {
    for (const nlohmann::json& h : c["heads"]) {
      if (h.is_array() && h.size() == 2) {
        absl::StrAppend(&heads, heads.empty() ? "" : ",", h[0].dump(), ":", h[1].dump());
      }
    }
  }
  *note = absl::StrCat(
      "This model's collapsed heads were INDUCED, not natural: `engine pretrain --collapse ", heads,
      " --collapse_weight ", c.value("weight", 0.0), "` trained those heads towards the first "
      "token with an auxiliary loss (weight x mean of -log A[t, first]) for all ",
      c.value("steps", int64_t{0}), " pretraining steps, while the rest of the model trained "
      "normally (docs/REPAIR.md).");
  nlohmann::json subject = {{"collapse", c}};
  subject["note"] = *note;
  return subject;
}

}  // namespace

int run_repair(const std::vector<std::string>& args) {
  (void)args;
  apply_thread_flag();
  RepairOptions o;
  // The device first: asking for one this command cannot use is an error before any work. The
  // whole pipeline runs on it (the diagnoses, the perplexities and the training; surgery edits
  // the host arena, which is then uploaded), one process, in the weight storage --dtype names
  // (read once the model's head dim is known, below).
  absl::StatusOr<std::unique_ptr<Backend>> device = training_backend("repair");
  if (!device.ok()) return fail(std::string(device.status().message()));
  std::unique_ptr<Backend> backend = *std::move(device);
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.out_dir = absl::GetFlag(FLAGS_out);
  const std::string data_path = absl::GetFlag(FLAGS_data);
  if (o.model_dir.empty()) return fail("repair: --model DIR is required");
  if (data_path.empty()) return fail("repair: --data FILE is required");
  if (o.out_dir.empty()) return fail("repair: --out DIR is required");
  absl::StatusOr<PlanSelection> selection = selection_from_flags();
  if (!selection.ok()) return fail(std::string(selection.status().message()));
  o.selection = *selection;
  auto init = qkv_weight_init_from_name(absl::GetFlag(FLAGS_init));
  if (!init.ok()) return fail(std::string(init.status().message()));
  if (*init == QkvWeightInit::kKeep) {
    return fail("repair: --init keep: repair re-initialises its targets (xavier_uniform or xavier_normal)");
  }
  o.qkv_init = *init;
  o.passes = absl::GetFlag(FLAGS_passes);
  o.fallback_healthy = absl::GetFlag(FLAGS_fallback_healthy);
  o.thresholds = {absl::GetFlag(FLAGS_dead), absl::GetFlag(FLAGS_sink),
                  absl::GetFlag(FLAGS_low_entropy)};
  o.drift_threshold = absl::GetFlag(FLAGS_drift);
  o.scan_batch = absl::GetFlag(FLAGS_batch);
  o.resume = absl::GetFlag(FLAGS_resume);
  TrainRunOptions& t = o.train;
  t.seq_len = absl::GetFlag(FLAGS_seq_len);
  t.batch = absl::GetFlag(FLAGS_batch);
  t.grad_accum = absl::GetFlag(FLAGS_grad_accum);
  t.epochs = absl::GetFlag(FLAGS_epochs);
  t.steps = absl::GetFlag(FLAGS_steps);
  t.lr = absl::GetFlag(FLAGS_lr);
  t.warmup = absl::GetFlag(FLAGS_warmup);
  t.optimizer.clip = absl::GetFlag(FLAGS_clip);
  t.optimizer.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  t.eval_every = absl::GetFlag(FLAGS_eval_every);
  t.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  t.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  o.version = api::version();
  if (std::optional<std::string> c = pretrain_command(o.model_dir)) o.commands.push_back(*c);
  o.subject = induced_collapse(o.model_dir, &o.subject_note);
  o.commands.push_back(invocation_command_line());
  o.log = [](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  };

  // --- data ---------------------------------------------------------------------------------------
  absl::StatusOr<BloomConfig> config = load_bloom_config(o.model_dir / "config.json");
  if (!config.ok()) return fail(std::string(config.status().message()));
  // --dtype: as `engine train` (auto: bf16 on a CUDA device whose tensor-core attention takes
  // the head dim); 16-bit weights train with fp32 masters of the trainable elements, and every
  // diagnosis and perplexity reads the 16-bit weights.
  absl::StatusOr<WeightStorage> storage = training_storage("repair", *backend, config->head_dim());
  if (!storage.ok()) return fail(std::string(storage.status().message()));
  t.storage = storage->dtype;
  t.storage_reason = storage->reason;
  if (t.storage == DType::kF16) {
    // f16 (5 exponent bits) trains with dynamic loss scaling (model/trainer.h, LossScaling).
    t.optimizer.loss_scaling = {kF16InitialLossScale, /*dynamic=*/true};
  }
  absl::StatusOr<std::optional<Tokenizer>> tokenizer = optional_tokenizer(o.model_dir.string());
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));
  DataReadOptions read;
  read.tokenizer = tokenizer->has_value() ? &**tokenizer : nullptr;
  read.vocab_size = static_cast<uint32_t>(config->vocab_size);
  absl::StatusOr<Corpus> corpus = load_corpus({data_path}, read);
  if (!corpus.ok()) return fail(std::string(corpus.status().message()));
  std::vector<uint32_t> separator;
  if (read.tokenizer != nullptr) {
    absl::StatusOr<std::vector<uint32_t>> s = read.tokenizer->encode("\n\n");
    if (!s.ok()) return fail(std::string(s.status().message()));
    separator = std::move(*s);
  }
  ChunkOptions co;
  co.seq_len = t.seq_len;
  co.holdout_fraction = absl::GetFlag(FLAGS_holdout);
  co.seed = t.seed;
  absl::StatusOr<ChunkedDataset> chunks = ChunkedDataset::build(*corpus, separator, co);
  if (!chunks.ok()) return fail(std::string(chunks.status().message()));
  RepairData data;
  data.train = &*chunks;
  for (size_t i = 0; i < chunks->holdout_size(); ++i) {
    std::span<const uint32_t> c = chunks->holdout_chunk(i);
    data.eval_chunks.emplace_back(c.begin(), c.end());
  }
  const int64_t max_seqs = absl::GetFlag(FLAGS_max_seqs);
  const std::string scan_path = absl::GetFlag(FLAGS_scan_data);
  if (!scan_path.empty()) {
    SequenceOptions so;
    so.seq_len = t.seq_len;
    so.max_seqs = max_seqs;
    absl::StatusOr<std::vector<TokenSequence>> s = read_diagnosis_sequences(scan_path, read, so);
    if (!s.ok()) return fail(std::string(s.status().message()));
    data.scan_sequences = std::move(*s);
  } else {
    for (const std::vector<int32_t>& c : data.eval_chunks) {
      if (max_seqs > 0 && static_cast<int64_t>(data.scan_sequences.size()) >= max_seqs) break;
      data.scan_sequences.push_back(c);
    }
  }
  o.data_description = absl::StrCat(
      data_path, ": ", chunks->train_size(), " training and ", chunks->holdout_size(),
      " held-out chunks of ", t.seq_len, " tokens; diagnosis on ", data.scan_sequences.size(),
      " sequences of ", scan_path.empty() ? std::string("the held-out chunks") : scan_path);
  if (data.scan_sequences.empty()) {
    return fail(absl::StrCat("repair: no held-out sequence to diagnose on (", data_path,
                             " gives ", chunks->holdout_size(),
                             " held-out chunks; raise --holdout or pass --scan_data)"));
  }

  absl::StatusOr<RepairResult> r = run_repair(o, data, *backend);
  if (!r.ok()) return fail(std::string(r.status().message()));
  std::printf("repair: %s\nrepair: repaired model in %s\nrepair: report in %s\n",
              r->stop_reason.c_str(), r->final_dir.c_str(), r->report_html.c_str());
  return 0;
}

}  // namespace engine::cli
