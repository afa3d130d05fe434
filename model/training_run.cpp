// The training run: validation, set-up (surgery or resume), the step loop with evaluation,
// checkpoints and metrics; contract in model/trainer.h, behaviour in docs/TRAINING.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/io.h"
#include "model/bloom_backward.h"
#include "model/checkpoint_manifest.h"
#include "model/numeric_faults.h"
#include "model/perplexity.h"
#include "model/trainer.h"
#include "model/training_checkpoint.h"

namespace engine {

namespace fs = std::filesystem;

namespace {

using run_checkpoint::kOptimizerFile;
using run_checkpoint::kStateFile;
using run_checkpoint::last_checkpoint;
using run_checkpoint::read_optimizer_state;
using run_checkpoint::save_checkpoint;

// The trainer state file's layout version.
constexpr int kStateVersion = 1;
constexpr const char* kMetricsFile = "metrics.jsonl";

// FNV-1a over the training chunks in storage order: identifies the data a run was started on.
uint64_t data_fingerprint(const ChunkedDataset& data) {
  constexpr uint64_t kOffset = 14695981039346656037ull;
  constexpr uint64_t kPrime = 1099511628211ull;
  uint64_t h = kOffset;
  for (size_t i = 0; i < data.train_size(); ++i) {
    for (uint32_t id : data.train_chunk(i)) {
      for (int byte = 0; byte < 4; ++byte) {
        h ^= (id >> (8 * byte)) & 0xffu;
        h *= kPrime;
      }
    }
  }
  return h;
}

nlohmann::json mask_summary(const BloomModel& model, const FrozenMask& mask) {
  nlohmann::json per_tensor = nlohmann::json::object();
  for (const ParameterInfo& p : model.arena.parameters()) {
    int64_t count = 0;
    for (int64_t i = 0; i < p.numel; ++i) count += mask.trainable(p.offset + i) ? 1 : 0;
    if (count > 0) per_tensor[p.name] = count;
  }
  return {{"trainable_elements", mask.trainable_count()},
          {"parameter_elements", model.arena.parameter_elements()},
          {"trainable_per_tensor", per_tensor}};
}

// The architecture fields of a config: what a checkpoint must share with its base model (the
// stored dtype and other metadata may differ, e.g. an f16 base saved as f32 checkpoints).
nlohmann::json architecture_json(const BloomConfig& c) {
  return {{"vocab_size", c.vocab_size},
          {"hidden_size", c.hidden_size},
          {"n_layer", c.n_layer},
          {"n_head", c.n_head},
          {"layer_norm_epsilon", c.layer_norm_epsilon}};
}

const char* schedule_name(ScheduleKind k) {
  return k == ScheduleKind::kCosine ? "cosine" : "constant";
}

const char* optimizer_name(OptimizerKind k) { return k == OptimizerKind::kAdamW ? "adamw" : "sgd"; }

// Everything that shapes the trajectory of a run: a resumed run must agree on all of it.
nlohmann::json recipe_json(const TrainRunOptions& o, int64_t total, int64_t warmup,
                           const ChunkedDataset& data) {
  return {{"seq_len", o.seq_len},
          {"batch", o.batch},
          {"grad_accum", o.grad_accum},
          {"total_steps", total},
          {"lr", o.lr},
          {"warmup", warmup},
          {"schedule", schedule_name(o.schedule)},
          {"optimizer", optimizer_name(o.optimizer.kind)},
          {"beta1", o.optimizer.beta1},
          {"beta2", o.optimizer.beta2},
          {"eps", o.optimizer.eps},
          {"weight_decay", o.optimizer.weight_decay},
          {"clip", o.optimizer.clip},
          {"skip_nonfinite", o.optimizer.skip_nonfinite},
          {"seed", o.seed},
          {"train_chunks", data.train_size()},
          {"data_fingerprint", absl::StrFormat("%016x", data_fingerprint(data))}};
}

absl::Status with_last_good(const absl::Status& s, const std::string& last_good) {
  return absl::Status(s.code(),
                      absl::StrCat(std::string(s.message()), "; last good checkpoint: ", last_good));
}

// Appends one JSON object per line, flushed at once, so a killed run leaves whole lines.
class MetricsLog {
 public:
  // keep_through_step >= 0 (a resume from step_N): lines of the earlier run about steps after N
  // are dropped first (atomically), since those steps run again and are logged anew; the log
  // stays one history, each step once. A line cut short by a kill is dropped too.
  absl::Status open(const fs::path& file, int64_t keep_through_step = -1) {
    path_ = file;
    std::error_code ec;
    if (keep_through_step >= 0 && fs::exists(file, ec)) {
      std::ifstream in(file);
      std::string kept, line;
      bool dropped = false;
      while (std::getline(in, line)) {
        const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        const auto step = j.is_object() ? j.find("step") : j.end();
        if (!j.is_object() || (step != j.end() && step->is_number_integer() &&
                               step->get<int64_t>() > keep_through_step)) {
          dropped = true;
          continue;
        }
        kept += line;
        kept += '\n';
      }
      if (dropped) {
        if (absl::Status s = write_string_atomically(file, kept); !s.ok()) return s;
      }
    }
    stream_.open(file, std::ios::app);
    if (!stream_)
      return absl::InternalError(absl::StrCat(file.string(), ": cannot open for append"));
    return absl::OkStatus();
  }
  void write(const nlohmann::json& j) {
    if (!stream_.is_open()) return;
    stream_ << j.dump() << '\n';
    stream_.flush();
  }
  // An error once a write failed (e.g. a full disk), so the run stops instead of losing lines.
  absl::Status status() const {
    if (!stream_.is_open() || stream_.good()) return absl::OkStatus();
    return absl::DataLossError(absl::StrCat(path_.string(), ": write failed (disk full?)"));
  }

 private:
  fs::path path_;
  std::ofstream stream_;
};

absl::StatusOr<nlohmann::json> read_json(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat(file.string(), ": cannot open"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(file.string(), ": invalid JSON"));
  return j;
}

// Names the first field of `want` whose value differs in `got`.
std::string first_difference(const nlohmann::json& got, const nlohmann::json& want) {
  for (auto it = want.begin(); it != want.end(); ++it) {
    if (!got.contains(it.key())) return absl::StrCat(it.key(), " (missing in the checkpoint)");
    if (got[it.key()] != it.value()) {
      return absl::StrCat(it.key(), " (checkpoint ", got[it.key()].dump(), ", this run ",
                          it.value().dump(), ")");
    }
  }
  return "";
}

}  // namespace

absl::StatusOr<TrainRunResult> run_training(const TrainRunOptions& o, const TrainData& data,
                                            Backend& backend) {
  using Clock = std::chrono::steady_clock;
  auto log = [&](const std::string& line) {
    if (o.log) o.log(line);
  };
  // Data parallelism (docs/DISTRIBUTED.md): every rank runs this function; rank 0 alone writes.
  Communicator* comm = o.comm != nullptr && o.comm->world_size() > 1 ? o.comm : nullptr;
  const int world = comm != nullptr ? comm->world_size() : 1;
  const int rank = comm != nullptr ? comm->rank() : 0;
  const bool writer = rank == 0;
  const double startup_timeout = comm != nullptr ? comm->timeout() : 0.0;
  // --- validate everything before any work -----------------------------------------------------
  if (o.seq_len < 2 || o.batch < 1 || o.grad_accum < 1 || o.epochs < 1 || o.steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: need seq_len >= 2, batch >= 1, grad_accum >= 1, epochs >= 1, steps "
        ">= 0 (got ",
        o.seq_len, ", ", o.batch, ", ", o.grad_accum, ", ", o.epochs, ", ", o.steps, ")"));
  }
  if (!(o.lr >= 0.0) || !(o.optimizer.clip >= 0.0)) {
    return absl::InvalidArgumentError("train: --lr and --clip must be >= 0");
  }
  if (data.train == nullptr || data.train->train_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train: no training chunk of ", o.seq_len, " tokens in the data"));
  }
  if (data.train->seq_len() != o.seq_len) {
    return absl::InvalidArgumentError("train: data chunk length differs from seq_len");
  }
  if (o.out_dir.empty()) return absl::InvalidArgumentError("train: --out DIR is required");
  std::error_code ec;
  if (fs::exists(o.out_dir, ec) && !fs::is_directory(o.out_dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.out_dir.string(), ": output path exists and is not a directory"));
  }
  const int64_t resume_step = fs::is_directory(o.out_dir, ec) ? last_checkpoint(o.out_dir) : -1;
  // --resume into an existing OUT without a complete checkpoint (killed before the first one)
  // starts from the beginning; a missing OUT is more likely a mistyped path.
  if (o.resume && !fs::is_directory(o.out_dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat(o.out_dir.string(), ": --resume but the directory does not exist"));
  }
  if (!o.resume && fs::is_directory(o.out_dir, ec) &&
      (resume_step >= 0 || fs::exists(o.out_dir / kMetricsFile))) {
    return absl::AlreadyExistsError(absl::StrCat(
        o.out_dir.string(), ": holds a previous run; pass --resume or choose another --out"));
  }

  absl::StatusOr<BloomModel> base = load_model_directory(o.model_dir);
  if (!base.ok()) return base.status();
  if (absl::Status s = check_finite_parameters(*base); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.model_dir.string(), ": ", std::string(s.message())));
  }
  const BloomConfig config = base->config;
  // Identifies the base weights (before surgery) for the resume check.
  const std::string base_weights_sha256 = arena_sha256(base->arena);
  const HeadGeometry geometry{config.n_layer, config.n_head, config.head_dim()};
  if (o.selection.validate) {
    if (absl::Status s = o.selection.validate(geometry); !s.ok()) return s;
  }
  // The reference of the later scans: the base model's heads before any change.
  std::optional<nlohmann::json> base_scan;
  if (o.scan != nullptr) {
    absl::StatusOr<nlohmann::json> scan = o.scan->scan_base(*base, backend);
    if (!scan.ok()) return scan.status();
    base_scan = std::move(*scan);
  }
  std::optional<FrozenMask> mask;
  if (o.selection.prepare) {
    // E.g. surgery on the base weights: the reference every frozen element must keep.
    absl::StatusOr<FrozenMask> m = o.selection.prepare(base->arena, geometry);
    if (!m.ok()) return m.status();
    mask.emplace(std::move(*m));
  } else {
    mask.emplace(FrozenMask::all_trainable(base->arena));
  }
  const int64_t steps_per_epoch = std::max<int64_t>(
      1, static_cast<int64_t>(data.train->train_size()) / (o.batch * o.grad_accum * world));
  const int64_t total = o.steps > 0 ? o.steps : steps_per_epoch * o.epochs;
  LrSchedule schedule;
  schedule.peak = o.lr;
  schedule.total = total;
  schedule.warmup = o.warmup >= 0 ? o.warmup : LrSchedule::default_warmup(total);
  schedule.kind = o.schedule;
  nlohmann::json recipe = recipe_json(o, total, schedule.warmup, *data.train);
  // N ranks with micro-batch b follow one process with micro-batch N*b, but a resumed run must
  // keep its rank count to keep its data order; single-process recipes stay as they were.
  if (world > 1) recipe["world_size"] = world;
  const nlohmann::json& plan_json = o.selection.record;
  const nlohmann::json config_json = architecture_json(config);

  BloomModel model;
  int64_t start_step = 0;
  std::optional<double> best_ppl;
  int64_t best_step = 0;
  nlohmann::json resumed_state;
  if (resume_step >= 0) {
    const fs::path dir = o.out_dir / absl::StrCat("step_", resume_step);
    // Every byte of the checkpoint against its manifest before anything in it is used: the
    // trainer's own files here, the model files when load_model_directory reads them below.
    if (absl::Status s = verify_checkpoint_files(dir); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("resume: ", std::string(s.message())));
    }
    absl::StatusOr<nlohmann::json> state = read_json(dir / kStateFile);
    if (!state.ok()) return state.status();
    auto mismatch = [&](const std::string& what) {
      return absl::FailedPreconditionError(
          absl::StrCat("resume: ", dir.string(), " was made with a different ", what));
    };
    if (!state->contains("version") || (*state)["version"] != kStateVersion) {
      return mismatch("trainer state version");
    }
    const std::string checkpoint_base = state->value("base_model", std::string("(unrecorded)"));
    const std::string both_bases = absl::StrCat("checkpoint base ", checkpoint_base, ", --model ",
                                                o.model_dir.string());
    if ((*state)["base_config"] != config_json) {
      return mismatch(absl::StrCat("model configuration: ",
                                   first_difference((*state)["base_config"], config_json), "; ",
                                   both_bases));
    }
    const std::string checkpoint_hash =
        state->value("base_weights_sha256", std::string("(unrecorded)"));
    if (checkpoint_hash != base_weights_sha256) {
      return mismatch(absl::StrCat("base model: checkpoint base ", checkpoint_base,
                                   " has weights sha256 ", checkpoint_hash, ", --model ",
                                   o.model_dir.string(), " has ", base_weights_sha256));
    }
    if ((*state)["plan"] != plan_json) return mismatch("surgery plan (or none)");
    const std::string diff = first_difference((*state)["recipe"], recipe);
    if (!diff.empty()) return mismatch(absl::StrCat("training recipe: ", diff));
    absl::StatusOr<BloomModel> loaded = load_model_directory(dir);
    if (!loaded.ok()) return loaded.status();
    if (architecture_json(loaded->config) != config_json) return mismatch("model configuration");
    // Every frozen element must be the base model's (after surgery), bit for bit.
    const uint32_t* want = reinterpret_cast<const uint32_t*>(base->arena.base());
    const uint32_t* got = reinterpret_cast<const uint32_t*>(loaded->arena.base());
    for (const ParameterInfo& p : base->arena.parameters()) {
      for (int64_t i = 0; i < p.numel; ++i) {
        const int64_t k = p.offset + i;
        if (!mask->trainable(k) && want[k] != got[k]) {
          return absl::FailedPreconditionError(
              absl::StrCat("resume: ", dir.string(), ": tensor ", p.name, " element ", i,
                           " is frozen but differs from ", o.model_dir.string(),
                           " (the checkpoint comes from another base model or plan)"));
        }
      }
    }
    model = std::move(*loaded);
    start_step = resume_step;
    if ((*state)["best"].is_object()) {
      best_ppl = (*state)["best"]["ppl"].get<double>();
      best_step = (*state)["best"]["step"].get<int64_t>();
    }
    resumed_state = *state;
  } else {
    model = std::move(*base);
  }
  if (resume_step >= 0) {
    // A kill between moving an old checkpoint aside and renaming its replacement into place
    // leaves only OUT/.old-<name>: put it back.
    for (const char* name : {"best", "final"}) {
      const fs::path old = o.out_dir / absl::StrCat(".old-", name);
      if (fs::is_directory(old, ec) && !fs::exists(o.out_dir / name, ec)) {
        fs::rename(old, o.out_dir / name, ec);
        if (ec) {
          return absl::InternalError(absl::StrCat(old.string(), ": rename: ", ec.message()));
        }
      }
    }
  }
  if (comm != nullptr) {
    // Every decision taken from the step number (evaluation, checkpoints, the stop hook, the
    // schedule) is agreed here once, through a fingerprint of what drives it, and so is the
    // checkpoint resumed from. This is also the barrier that keeps rank 0 from creating files in
    // OUT while another rank still checks it.
    if (absl::Status s = check_same_value(
            *comm, static_cast<uint64_t>(resume_step),
            "the last complete checkpoint in OUT (is OUT on a filesystem every rank sees?)");
        !s.ok()) {
      return s;
    }
    const std::string cadence =
        absl::StrCat(recipe.dump(), plan_json.dump(), " ", o.eval_every, " ", o.checkpoint_every,
                     " ", o.stop_after_step, " ", o.dist_checksum ? 1 : 0);
    if (absl::Status s = check_same_value(*comm, checksum64(cadence.data(), cadence.size()),
                                          "the training recipe or evaluation/checkpoint cadence");
        !s.ok()) {
      return s;
    }
  }
  if (!fs::create_directories(o.out_dir, ec) && ec) {
    return absl::InternalError(absl::StrCat(o.out_dir.string(), ": cannot create: ", ec.message()));
  }
  const nlohmann::json summary = mask_summary(model, *mask);
  Trainer trainer(model, backend, *mask, o.optimizer);
  // The trainer's compact gradient holds its own copy of the mask's bit words; this one would
  // only double them for the rest of the run (70 MiB at bloom-560m, 205 MiB at bloom-1b7).
  mask.reset();
  trainer.set_recompute(o.recompute);
  trainer.set_communicator(comm);
  trainer.set_fault_hook(o.fault_hook);
  if (resume_step >= 0) {
    if (absl::Status s = read_optimizer_state(
            o.out_dir / absl::StrCat("step_", resume_step) / kOptimizerFile, trainer, resume_step);
        !s.ok()) {
      return s;
    }
  }
  MetricsLog metrics;
  if (writer) {  // other ranks' metrics writes go nowhere
    if (absl::Status s = metrics.open(o.out_dir / kMetricsFile, resume_step); !s.ok()) return s;
  }
  const int64_t optimizer_bytes =
      static_cast<int64_t>(2 * trainer.first_moment().size() * sizeof(float));
  metrics.write({{"event", resume_step >= 0 ? "resume" : "start"},
                 {"step", start_step},
                 {"total_steps", total},
                 {"trainable_elements", summary["trainable_elements"]},
                 {"parameter_elements", summary["parameter_elements"]},
                 {"optimizer_state_bytes", optimizer_bytes},
                 {"parameter_bytes", static_cast<int64_t>(model.arena.size_bytes())}});
  log(absl::StrFormat(
      "train: %d steps, %d trainable of %d parameter elements (optimizer state "
      "%.1f MiB), %s",
      total, summary["trainable_elements"].get<int64_t>(),
      summary["parameter_elements"].get<int64_t>(), optimizer_bytes / (1024.0 * 1024.0),
      resume_step >= 0 ? absl::StrCat("resumed at step ", resume_step)
                       : std::string("from the start")));

  if (base_scan.has_value()) {
    nlohmann::json line = *base_scan;
    line["event"] = "scan";
    line["step"] = 0;
    line["before_surgery"] = true;
    metrics.write(line);
  }
  const int64_t checkpoint_every = o.checkpoint_every > 0
                                       ? o.checkpoint_every
                                       : (o.eval_every > 0 ? o.eval_every : steps_per_epoch);
  std::string last_good = resume_step >= 0
                              ? (o.out_dir / absl::StrCat("step_", resume_step)).string()
                              : std::string("none");
  auto state_for = [&](int64_t step, double loss) {
    nlohmann::json best = nlohmann::json();
    if (best_ppl.has_value()) best = {{"ppl", *best_ppl}, {"step", best_step}};
    return nlohmann::json{{"format", "engine-train-state"},
                          {"version", kStateVersion},
                          {"step", step},
                          {"chunks_consumed", step * o.batch * o.grad_accum * world},
                          {"loss", loss},
                          {"recipe", recipe},
                          {"plan", plan_json},
                          {"base_model", o.model_dir.string()},
                          {"base_config", config_json},
                          {"base_weights_sha256", base_weights_sha256},
                          {"mask", summary},
                          {"best", best}};
  };
  auto scan = [&](int64_t step) -> absl::Status {
    if (o.scan == nullptr) return absl::OkStatus();
    absl::StatusOr<TrainingScan::Line> now = o.scan->scan(model, backend, step);
    if (!now.ok()) return now.status();
    nlohmann::json line = std::move(now->fields);
    line["event"] = "scan";
    line["step"] = step;
    metrics.write(line);
    log(now->log);
    return absl::OkStatus();
  };
  auto evaluate = [&](int64_t step) -> absl::StatusOr<std::optional<double>> {
    if (data.eval_chunks.empty()) {
      if (absl::Status s = scan(step); !s.ok()) return s;
      return std::optional<double>();
    }
    PerplexityOptions po;
    po.seq_len = o.seq_len, po.stride = o.seq_len, po.batch = o.batch;
    absl::StatusOr<PerplexityResult> r = PerplexityResult{};
    if (comm == nullptr) {
      r = sliding_window_perplexity(model, backend, data.eval_chunks, po);
    } else {
      // Rank r evaluates held-out chunks r, r + N, ...; the sums are then added up.
      std::vector<std::vector<int32_t>> shard;
      for (size_t i = static_cast<size_t>(rank); i < data.eval_chunks.size(); i += world) {
        shard.push_back(data.eval_chunks[i]);
      }
      if (!shard.empty()) r = sliding_window_perplexity(model, backend, shard, po);
      if (!r.ok()) return r.status();
      double sums[3] = {r->nll_sum, static_cast<double>(r->tokens_scored),
                        static_cast<double>(r->windows)};
      if (absl::Status s = comm->all_reduce_sum(sums, 3, absl::StrCat("evaluation at step ", step));
          !s.ok()) {
        return s;
      }
      r->nll_sum = sums[0];
      r->tokens_scored = static_cast<int64_t>(sums[1]);
      r->windows = static_cast<int64_t>(sums[2]);
    }
    if (!r.ok()) return r.status();
    const double ppl = std::exp(r->mean_nll());
    metrics.write({{"event", "eval"},
                   {"step", step},
                   {"eval_nll", r->mean_nll()},
                   {"eval_ppl", ppl},
                   {"eval_tokens", r->tokens_scored}});
    log(absl::StrFormat("eval  step %d: held-out perplexity %.4f over %d tokens", step, ppl,
                        r->tokens_scored));
    if (absl::Status s = scan(step); !s.ok()) return s;
    return std::optional<double>(ppl);
  };

  // Rank 0 writes; then every rank learns whether that worked (and, with dist_checksum, that the
  // weights are identical everywhere) under the start-up timeout, since a write may take long.
  auto save = [&](const std::string& name, const nlohmann::json& state) -> absl::Status {
    const absl::Status written =
        writer ? save_checkpoint(o.out_dir, name, model, trainer, state,
                                 plan_json.is_null() ? nullptr : &plan_json)
               : absl::OkStatus();
    if (comm == nullptr) return written;
    const double step_timeout = comm->timeout();
    comm->set_timeout(startup_timeout);
    absl::StatusOr<bool> all =
        agree_all(*comm, written.ok(), absl::StrCat("agreement after checkpoint ", name));
    absl::Status result = !all.ok()       ? all.status()
                          : !written.ok() ? written
                          : *all          ? absl::OkStatus()
                                          : absl::InternalError(absl::StrCat(
                                       "rank 0 could not write checkpoint ", name,
                                       " (its message is in rank 0's output)"));
    if (result.ok() && o.dist_checksum) {
      const uint64_t sum = checksum64(model.arena.base(), model.arena.size_bytes());
      result = check_same_value(*comm, sum, absl::StrCat("the weight checksum at ", name));
    }
    comm->set_timeout(step_timeout);
    return result;
  };

  TrainRunResult result;
  double last_loss = resumed_state.is_object() ? resumed_state.value("loss", 0.0) : 0.0;
  bool evaluated_at_end = false;
  std::vector<MicroBatch> micro(static_cast<size_t>(o.grad_accum));
  for (int64_t step = start_step + 1; step <= total; ++step) {
    const auto t0 = Clock::now();
    if (o.on_step_start) o.on_step_start(step);
    for (int64_t a = 0; a < o.grad_accum; ++a) {
      micro[a] = chunk_micro_batch(
          *data.train, shard_first_chunk(step, a, o.batch, o.grad_accum, rank, world), o.batch);
    }
    const double lr = schedule.lr(step);
    absl::StatusOr<StepResult> r = trainer.step(micro, lr);
    if (!r.ok()) {
      return absl::Status(r.status().code(), absl::StrCat(std::string(r.status().message()),
                                                          "; last good checkpoint: ", last_good));
    }
    if (comm != nullptr && step == start_step + 1) comm->set_timeout(o.dist_step_timeout_s);
    last_loss = r->loss;
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const double tokens_per_s = r->tokens / std::max(seconds, 1e-9);
    nlohmann::json line = {{"event", "step"},
                           {"step", step},
                           {"loss", r->loss},
                           {"lr", lr},
                           {"grad_norm", r->grad_norm},
                           {"tokens", r->tokens},
                           {"tokens_per_s", tokens_per_s}};
    if (!r->finite) {
      line["skipped_nonfinite"] = true;
      line["nonfinite"] = r->nonfinite;
    }
    metrics.write(line);
    if (absl::Status s = metrics.status(); !s.ok()) return with_last_good(s, last_good);
    log(absl::StrFormat("step %d/%d  loss %.4f  lr %.3g  grad_norm %.4f  %.0f tok/s%s", step, total,
                        r->loss, lr, r->grad_norm, tokens_per_s,
                        r->finite ? "" : "  (non-finite, skipped)"));
    if (o.progress) o.progress(step, total);
    const bool last = step == total;
    if ((o.eval_every > 0 && step % o.eval_every == 0) || last) {
      absl::StatusOr<std::optional<double>> ppl = evaluate(step);
      if (!ppl.ok()) return ppl.status();
      evaluated_at_end = last;
      if (ppl->has_value() && (!best_ppl.has_value() || **ppl < *best_ppl)) {
        best_ppl = **ppl;
        best_step = step;
        if (absl::Status s = save("best", state_for(step, last_loss)); !s.ok()) {
          return with_last_good(s, last_good);
        }
      }
    }
    if (step % checkpoint_every == 0 || last) {
      const std::string name = absl::StrCat("step_", step);
      if (absl::Status s = save(name, state_for(step, last_loss)); !s.ok()) {
        return with_last_good(s, last_good);
      }
      last_good = (o.out_dir / name).string();
    }
    if (o.stop_after_step > 0 && step >= o.stop_after_step && !last) {
      result.steps = step;
      result.final_loss = last_loss;
      result.best_ppl = best_ppl;
      return result;
    }
  }
  if (!evaluated_at_end && start_step >= total) {
    absl::StatusOr<std::optional<double>> ppl = evaluate(total);
    if (!ppl.ok()) return ppl.status();
  }
  result.final_dir = o.out_dir / "final";
  if (absl::Status s = save("final", state_for(trainer.step_count(), last_loss)); !s.ok()) {
    return with_last_good(s, last_good);
  }
  metrics.write({{"event", "end"}, {"step", trainer.step_count()}, {"loss", last_loss}});
  result.steps = trainer.step_count();
  result.final_loss = last_loss;
  result.best_ppl = best_ppl;
  return result;
}

}  // namespace engine
