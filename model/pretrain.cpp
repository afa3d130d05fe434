// Pretraining from scratch; contract in model/pretrain.h.
#include "model/pretrain.h"

#include <chrono>
#include <cmath>
#include <span>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/io.h"
#include "model/bloom_init.h"
#include "model/dataset.h"
#include "model/model_directory.h"
#include "model/tokenizer.h"

namespace engine {
namespace fs = std::filesystem;

namespace {

// BLOOM's own Adam betas (the BigScience training used beta2 0.95, not PyTorch's 0.999).
constexpr double kPretrainBeta2 = 0.95;
constexpr double kPretrainLr = 1e-3;
constexpr int64_t kPretrainSeqLen = 128;
constexpr int64_t kPretrainBatch = 8;
constexpr int64_t kPretrainSteps = 400;
constexpr int64_t kPretrainWarmup = 30;
constexpr int64_t kPretrainEvalEvery = 100;

// Written by run_training into every complete checkpoint (model/trainer.cpp, docs/FORMATS.md).
constexpr const char* kTrainerStateFile = "trainer_state.json";

std::vector<std::vector<int32_t>> to_eval_chunks(const ChunkedDataset& d) {
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < d.holdout_size(); ++i) {
    std::span<const uint32_t> c = d.holdout_chunk(i);
    out.emplace_back(c.begin(), c.end());
  }
  return out;
}

}  // namespace

bool has_resumable_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step_", 0) == 0 &&
        fs::exists(e.path() / kTrainerStateFile, ec)) {
      return true;
    }
  }
  return false;
}

TrainRunOptions default_pretrain_recipe() {
  TrainRunOptions o;
  o.seq_len = kPretrainSeqLen;
  o.batch = kPretrainBatch;
  o.grad_accum = 1;
  o.steps = kPretrainSteps;
  o.lr = kPretrainLr;
  o.warmup = kPretrainWarmup;
  o.schedule = ScheduleKind::kCosine;
  o.optimizer.beta1 = 0.9;
  o.optimizer.beta2 = kPretrainBeta2;
  o.eval_every = kPretrainEvalEvery;
  return o;
}

BloomConfig small_bloom_config(int64_t n_layer, int64_t n_head, int64_t hidden_size) {
  BloomConfig c;
  c.vocab_size = kByteLevelVocab;
  c.hidden_size = hidden_size;
  c.n_layer = n_layer;
  c.n_head = n_head;
  // The keys transformers' BloomConfig expects besides the architecture; ids match the
  // byte-level tokenizer's special tokens.
  c.raw = {{"architectures", {"BloomForCausalLM"}},
           {"model_type", "bloom"},
           {"bos_token_id", 1},
           {"eos_token_id", 2},
           {"pad_token_id", 3},
           {"apply_residual_connection_post_layernorm", false},
           {"attention_dropout", 0.0},
           {"hidden_dropout", 0.0},
           {"initializer_range", kBloomInitStd},
           {"use_cache", true}};
  return c;
}

absl::StatusOr<PretrainResult> run_pretraining(const PretrainOptions& options, Backend& backend) {
  const auto start = std::chrono::steady_clock::now();
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };
  if (options.out_dir.empty()) return absl::InvalidArgumentError("pretrain: --out DIR is required");
  if (options.data.empty()) return absl::InvalidArgumentError("pretrain: --data FILE is required");
  if (options.n_layer < 1 || options.n_head < 1 || options.hidden_size < 1 ||
      options.hidden_size % options.n_head != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pretrain: need n_layer >= 1, n_head >= 1 and hidden_size divisible by n_head (got ",
        options.n_layer, ", ", options.n_head, ", ", options.hidden_size, ")"));
  }
  if (!options.collapse.empty() &&
      !(std::isfinite(options.collapse_weight) && options.collapse_weight > 0.0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "pretrain: --collapse_weight ", options.collapse_weight, " must be positive and finite"));
  }
  std::vector<float> sink_weight;
  if (!options.collapse.empty()) {
    sink_weight.assign(static_cast<size_t>(options.n_layer * options.n_head), 0.0f);
    for (const HeadTarget& t : options.collapse) {
      if (t.layer < 0 || t.layer >= options.n_layer || t.head < 0 || t.head >= options.n_head) {
        return absl::InvalidArgumentError(absl::StrCat(
            "pretrain: --collapse ", t.layer, ":", t.head, " is outside ", options.n_layer,
            " layers x ", options.n_head, " heads"));
      }
      float& w = sink_weight[t.layer * options.n_head + t.head];
      if (w != 0.0f) {
        return absl::InvalidArgumentError(
            absl::StrCat("pretrain: --collapse ", t.layer, ":", t.head, " is listed twice"));
      }
      w = static_cast<float>(options.collapse_weight);
    }
  }
  if (!(options.holdout >= 0.0 && options.holdout < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("pretrain: --holdout ", options.holdout, " is outside [0, 1)"));
  }
  const fs::path init_dir = options.out_dir / "init";
  const fs::path train_dir = options.out_dir / "train";
  std::error_code ec;
  if (!options.resume && (fs::exists(train_dir, ec) ||
                          fs::exists(options.out_dir / kPretrainSummaryFile, ec))) {
    return absl::AlreadyExistsError(absl::StrCat(
        options.out_dir.string(), ": holds a previous pretraining; pass --resume or choose another --out"));
  }

  // The initialised model. It is a pure function of the options, so a resumed run rewrites the
  // same bytes (and run_training's resume check compares against them).
  const BloomConfig config =
      small_bloom_config(options.n_layer, options.n_head, options.hidden_size);
  absl::StatusOr<BloomModel> model = allocate_bloom_model(config);
  if (!model.ok()) return model.status();
  if (absl::Status s = init_bloom_weights(*model, options.train.seed, options.init_std); !s.ok()) {
    return s;
  }
  fs::create_directories(init_dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(init_dir.string(), ": ", ec.message()));
  if (absl::Status s = write_byte_level_tokenizer_json((init_dir / "tokenizer.json").string());
      !s.ok()) {
    return s;
  }
  if (absl::Status s = save_model_directory(*model, init_dir); !s.ok()) return s;

  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::load((init_dir / "tokenizer.json").string());
  if (!tokenizer.ok()) return tokenizer.status();
  DataReadOptions read;
  read.tokenizer = &*tokenizer;
  read.vocab_size = static_cast<uint32_t>(config.vocab_size);
  absl::StatusOr<Corpus> corpus = load_corpus({options.data.string()}, read);
  if (!corpus.ok()) return corpus.status();
  absl::StatusOr<std::vector<uint32_t>> separator = tokenizer->encode("\n\n");
  if (!separator.ok()) return separator.status();
  ChunkOptions co;
  co.seq_len = options.train.seq_len;
  co.holdout_fraction = options.holdout;
  co.seed = options.train.seed;
  absl::StatusOr<ChunkedDataset> chunks = ChunkedDataset::build(*corpus, *separator, co);
  if (!chunks.ok()) return chunks.status();
  log(absl::StrCat("pretrain: ", corpus->ids.size(), " tokens in ", corpus->document_ends.size(),
                   " documents; ", chunks->train_size(), " training and ", chunks->holdout_size(),
                   " held-out chunks of ", co.seq_len));

  TrainRunOptions train = options.train;
  train.model_dir = init_dir;
  train.out_dir = train_dir;
  train.selection = TrainSelection{};  // every parameter trains
  train.scan = nullptr;
  train.resume = options.resume && has_resumable_checkpoint(train_dir);
  if (!train.resume && fs::exists(train_dir, ec)) {
    // Left by a run interrupted before its first checkpoint: nothing in it can be resumed.
    fs::remove_all(train_dir, ec);
    if (ec) return absl::InternalError(absl::StrCat(train_dir.string(), ": ", ec.message()));
  }
  train.log = options.log;
  train.sink_loss_weight = sink_weight;
  TrainData data;
  data.train = &*chunks;
  data.eval_chunks = to_eval_chunks(*chunks);
  absl::StatusOr<TrainRunResult> run = run_training(train, data, backend);
  if (!run.ok()) return run.status();
  if (run->final_dir.empty()) {
    return absl::AbortedError("pretrain: training stopped before its last step");
  }

  const fs::path chosen = fs::exists(train_dir / "best", ec) ? train_dir / "best" : run->final_dir;
  absl::StatusOr<BloomModel> trained = load_model_directory(chosen);
  if (!trained.ok()) return trained.status();
  if (absl::Status s = save_model_directory(*trained, options.out_dir); !s.ok()) return s;

  PretrainResult result;
  result.steps = run->steps;
  result.final_loss = run->final_loss;
  result.best_ppl = run->best_ppl;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.summary = {
      {"command", options.command},
      {"data", options.data.string()},
      {"corpus_tokens", corpus->ids.size()},
      {"documents", corpus->document_ends.size()},
      {"train_chunks", chunks->train_size()},
      {"holdout_chunks", chunks->holdout_size()},
      {"architecture",
       {{"n_layer", config.n_layer}, {"n_head", config.n_head},
        {"hidden_size", config.hidden_size}, {"vocab_size", config.vocab_size}}},
      {"recipe",
       {{"steps", run->steps}, {"seq_len", train.seq_len}, {"batch", train.batch},
        {"grad_accum", train.grad_accum}, {"lr", train.lr}, {"warmup", train.warmup},
        {"beta1", train.optimizer.beta1}, {"beta2", train.optimizer.beta2},
        {"init_std", options.init_std}, {"seed", train.seed}, {"holdout", options.holdout}}},
      {"final_loss", run->final_loss},
      {"best_ppl", run->best_ppl.has_value() ? nlohmann::json(*run->best_ppl) : nlohmann::json()},
      {"chosen_checkpoint", chosen.filename().string()},
      {"seconds", result.seconds}};
  if (!options.collapse.empty()) {
    nlohmann::json heads = nlohmann::json::array();
    for (const HeadTarget& t : options.collapse) heads.push_back({t.layer, t.head});
    result.summary["collapse"] = {
        {"induced", true},
        {"heads", heads},
        {"weight", options.collapse_weight},
        {"steps", run->steps},
        {"how",
         "controlled collapse: the named heads trained with the auxiliary loss weight * mean over "
         "query rows of -log A[t, first token] added to the language-model loss for every step"}};
  }
  if (absl::Status s = write_string_atomically(options.out_dir / kPretrainSummaryFile,
                                               result.summary.dump(2) + "\n");
      !s.ok()) {
    return s;
  }
  return result;
}

}  // namespace engine
