// The training run: validation, set-up (surgery or resume), the step loop with evaluation,
// checkpoints and metrics; contract in model/trainer.h, behaviour in docs/TRAINING.md.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "engine/io.h"
#include "model/bloom_backward.h"
#include "model/checkpoint_manifest.h"
#include "model/device_model.h"
#include "model/numeric_faults.h"
#include "model/perplexity.h"
#include "model/trainer.h"
#include "model/training_checkpoint.h"
#include "model/training_metrics.h"

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
  nlohmann::json j = {{"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden_size},
                      {"n_layer", c.n_layer},
                      {"n_head", c.n_head},
                      {"layer_norm_epsilon", c.layer_norm_epsilon}};
  // BLOOM's object is unchanged (checkpoints written before families existed still resume).
  if (c.family != ModelFamily::kBloom) j["family"] = family_name(c.family);
  return j;
}

const char* schedule_name(ScheduleKind k) {
  return k == ScheduleKind::kCosine ? "cosine" : "constant";
}

const char* optimizer_name(OptimizerKind k) { return k == OptimizerKind::kAdamW ? "adamw" : "sgd"; }

// Everything that shapes the trajectory of a run: a resumed run must agree on all of it.
nlohmann::json recipe_json(const TrainRunOptions& o, int64_t total, int64_t warmup,
                           const ChunkedDataset& data) {
  nlohmann::json r = {{"seq_len", o.seq_len},
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
  // Only when set, so the recipes of ordinary runs (and the checkpoints holding them) are as
  // before.
  if (!o.sink_loss_weight.empty()) r["sink_loss_weight"] = o.sink_loss_weight;
  if (o.storage != DType::kF32) r["dtype"] = dtype_name(o.storage);
  const LossScaling& ls = o.optimizer.loss_scaling;
  if (ls.dynamic || ls.scale != 1.0) {
    r["loss_scaling"] = {{"scale", ls.scale}, {"dynamic", ls.dynamic},
                         {"growth_interval", ls.growth_interval}};
  }
  if (o.checkpoint_storage != DType::kF32) {
    r["checkpoint_dtype"] = dtype_name(o.checkpoint_storage);
  }
  return r;
}

absl::Status with_last_good(const absl::Status& s, const std::string& last_good) {
  return absl::Status(s.code(),
                      absl::StrCat(std::string(s.message()), "; last good checkpoint: ", last_good));
}

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

// One run of run_training, in phases: validate the inputs, prepare the base model (the
// selection's check and preparation, the base scan), plan the schedule, resume from a checkpoint
// or start fresh, agree across ranks, start the trainer and the metrics, then the optimizer steps
// (each with its evaluation and checkpoints) and the final checkpoint.
class TrainingRun {
 public:
  TrainingRun(const TrainRunOptions& o, const TrainData& data, Backend& backend)
      : o_(o),
        data_(data),
        backend_(backend),
        // Data parallelism (docs/DISTRIBUTED.md): every rank runs this; rank 0 alone writes.
        comm_(o.comm != nullptr && o.comm->world_size() > 1 ? o.comm : nullptr),
        world_(comm_ != nullptr ? comm_->world_size() : 1),
        rank_(comm_ != nullptr ? comm_->rank() : 0),
        writer_(rank_ == 0),
        startup_timeout_(comm_ != nullptr ? comm_->timeout() : 0.0) {}

  absl::StatusOr<TrainRunResult> run();

 private:
  void log(const std::string& line) const {
    if (o_.log) o_.log(line);
  }
  const nlohmann::json& plan_json() const { return o_.selection.record; }

  // Set-up.
  absl::Status validate_inputs();
  absl::StatusOr<BloomModel> prepare_base();
  void plan_schedule();
  absl::Status resume_from_checkpoint(const BloomModel& base);
  absl::Status restore_moved_aside() const;
  absl::Status agree_across_ranks() const;
  absl::Status start_trainer();

  // The step loop.
  absl::StatusOr<bool> optimizer_step(int64_t step);
  absl::Status scan(int64_t step);
  absl::StatusOr<std::optional<double>> evaluate(int64_t step);
  absl::StatusOr<PerplexityResult> held_out_perplexity(int64_t step);
  nlohmann::json state_for(int64_t step, double loss) const;
  absl::Status save(const std::string& name, const nlohmann::json& state);
  absl::Status finish(TrainRunResult& result);

  const TrainRunOptions& o_;
  const TrainData& data_;
  Backend& backend_;
  Communicator* const comm_;
  const int world_, rank_;
  const bool writer_;
  const double startup_timeout_;

  int64_t resume_step_ = -1;
  // Dynamic loss scaling: the scale and clean-step count a resumed checkpoint recorded.
  std::optional<std::pair<double, int64_t>> resumed_loss_scale_;
  std::string base_weights_sha256_;  // the base weights (before any change), for resume
  nlohmann::json config_json_;
  std::optional<nlohmann::json> base_scan_;  // the reference of the later scans
  std::optional<FrozenMask> mask_;
  int64_t steps_per_epoch_ = 1, total_ = 0, checkpoint_every_ = 1;
  LrSchedule schedule_;
  nlohmann::json recipe_;

  BloomModel model_;
  std::optional<Trainer> trainer_;
  nlohmann::json summary_;  // mask_summary
  MetricsLog metrics_;
  int64_t start_step_ = 0;
  std::optional<double> best_ppl_;
  int64_t best_step_ = 0;
  double last_loss_ = 0.0;
  bool evaluated_at_end_ = false;
  std::string last_good_ = "none";
  std::vector<MicroBatch> micro_;
};

// Everything is checked before any work.
absl::Status TrainingRun::validate_inputs() {
  const TrainRunOptions& o = o_;
  if (o.checkpoint_storage != DType::kF32 && o.checkpoint_storage != o.storage) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: --checkpoint_dtype ", absl::AsciiStrToLower(dtype_name(o.checkpoint_storage)),
        " needs --dtype ", absl::AsciiStrToLower(dtype_name(o.checkpoint_storage)),
        " (16-bit checkpoints carry the masters of 16-bit training); use f32"));
  }
  if (o.seq_len < 2 || o.batch < 1 || o.grad_accum < 1 || o.epochs < 1 || o.steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "train: need seq_len >= 2, batch >= 1, grad_accum >= 1, epochs >= 1, steps "
        ">= 0 (got ",
        o.seq_len, ", ", o.batch, ", ", o.grad_accum, ", ", o.epochs, ", ", o.steps, ")"));
  }
  if (!(o.lr >= 0.0) || !(o.optimizer.clip >= 0.0)) {
    return absl::InvalidArgumentError("train: --lr and --clip must be >= 0");
  }
  if (data_.train == nullptr || data_.train->train_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("train: no training chunk of ", o.seq_len, " tokens in the data"));
  }
  if (data_.train->seq_len() != o.seq_len) {
    return absl::InvalidArgumentError("train: data chunk length differs from seq_len");
  }
  if (o.out_dir.empty()) return absl::InvalidArgumentError("train: --out DIR is required");
  std::error_code ec;
  if (fs::exists(o.out_dir, ec) && !fs::is_directory(o.out_dir, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(o.out_dir.string(), ": output path exists and is not a directory"));
  }
  resume_step_ = fs::is_directory(o.out_dir, ec) ? last_checkpoint(o.out_dir) : -1;
  // --resume into an existing OUT without a complete checkpoint (killed before the first one)
  // starts from the beginning; a missing OUT is more likely a mistyped path.
  if (o.resume && !fs::is_directory(o.out_dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat(o.out_dir.string(), ": --resume but the directory does not exist"));
  }
  if (!o.resume && fs::is_directory(o.out_dir, ec) &&
      (resume_step_ >= 0 || fs::exists(o.out_dir / kMetricsFile))) {
    return absl::AlreadyExistsError(absl::StrCat(
        o.out_dir.string(), ": holds a previous run; pass --resume or choose another --out"));
  }
  return absl::OkStatus();
}

// The base model, checked, scanned and prepared (e.g. surgery); sets the mask and what identifies
// the base model for a resume.
absl::StatusOr<BloomModel> TrainingRun::prepare_base() {
  absl::StatusOr<BloomModel> base = load_model_directory(o_.model_dir);
  if (!base.ok()) return base.status();
  if (absl::Status s = check_finite_parameters(*base); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(o_.model_dir.string(), ": ", std::string(s.message())));
  }
  const BloomConfig& config = base->config;
  // Identifies the base weights (before surgery) for the resume check.
  base_weights_sha256_ = arena_sha256(base->arena);
  config_json_ = architecture_json(config);
  const HeadGeometry geometry = HeadGeometry::of(config);
  if (o_.selection.validate) {
    if (absl::Status s = o_.selection.validate(geometry); !s.ok()) return s;
  }
  if (o_.scan != nullptr) {
    // On a device the scan's forward reads resident weights (the trainer re-uploads the model
    // after any surgery, in start_trainer).
    if (backend_.kind() != DeviceKind::kCpu || o_.storage != DType::kF32) {
      if (absl::Status s = make_resident(*base, backend_, o_.storage); !s.ok()) return s;
    }
    absl::StatusOr<nlohmann::json> scan = o_.scan->scan_base(*base, backend_);
    if (!scan.ok()) return scan.status();
    base_scan_ = std::move(*scan);
  }
  if (o_.selection.prepare) {
    // E.g. surgery on the base weights: the reference every frozen element must keep.
    absl::StatusOr<FrozenMask> m = o_.selection.prepare(base->arena, geometry);
    if (!m.ok()) return m.status();
    mask_.emplace(std::move(*m));
  } else {
    mask_.emplace(FrozenMask::all_trainable(base->arena));
  }
  return base;
}

void TrainingRun::plan_schedule() {
  const TrainRunOptions& o = o_;
  steps_per_epoch_ = std::max<int64_t>(
      1, static_cast<int64_t>(data_.train->train_size()) / (o.batch * o.grad_accum * world_));
  total_ = o.steps > 0 ? o.steps : steps_per_epoch_ * o.epochs;
  schedule_.peak = o.lr;
  schedule_.total = total_;
  schedule_.warmup = o.warmup >= 0 ? o.warmup : LrSchedule::default_warmup(total_);
  schedule_.kind = o.schedule;
  recipe_ = recipe_json(o, total_, schedule_.warmup, *data_.train);
  // N ranks with micro-batch b follow one process with micro-batch N*b, but a resumed run must
  // keep its rank count to keep its data order; single-process recipes stay as they were.
  if (world_ > 1) recipe_["world_size"] = world_;
  checkpoint_every_ = o.checkpoint_every > 0
                          ? o.checkpoint_every
                          : (o.eval_every > 0 ? o.eval_every : steps_per_epoch_);
}

// Loads OUT/step_<resume_step> after checking that it belongs to this base model, selection and
// recipe, bit for bit where frozen.
absl::Status TrainingRun::resume_from_checkpoint(const BloomModel& base) {
  const fs::path dir = o_.out_dir / absl::StrCat("step_", resume_step_);
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
                                              o_.model_dir.string());
  if ((*state)["base_config"] != config_json_) {
    return mismatch(absl::StrCat("model configuration: ",
                                 first_difference((*state)["base_config"], config_json_), "; ",
                                 both_bases));
  }
  const std::string checkpoint_hash =
      state->value("base_weights_sha256", std::string("(unrecorded)"));
  if (checkpoint_hash != base_weights_sha256_) {
    return mismatch(absl::StrCat("base model: checkpoint base ", checkpoint_base,
                                 " has weights sha256 ", checkpoint_hash, ", --model ",
                                 o_.model_dir.string(), " has ", base_weights_sha256_));
  }
  if ((*state)["plan"] != plan_json()) return mismatch("surgery plan (or none)");
  const std::string diff = first_difference((*state)["recipe"], recipe_);
  if (!diff.empty()) return mismatch(absl::StrCat("training recipe: ", diff));
  absl::StatusOr<BloomModel> loaded = load_model_directory(dir);
  if (!loaded.ok()) return loaded.status();
  if (architecture_json(loaded->config) != config_json_) return mismatch("model configuration");
  // Every frozen element must be the base model's (after surgery), bit for bit; in a 16-bit
  // checkpoint, the base's value rounded to that type.
  const DType stored = o_.checkpoint_storage;
  auto as_stored = [stored](const float* v) {
    float x = *v;
    if (stored != DType::kF32) {
      uint16_t h;
      convert_from_f32(stored, v, &h, 1);
      convert_to_f32(stored, &h, &x, 1);
    }
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
  };
  const float* want = reinterpret_cast<const float*>(base.arena.base());
  const uint32_t* got = reinterpret_cast<const uint32_t*>(loaded->arena.base());
  for (const ParameterInfo& p : base.arena.parameters()) {
    for (int64_t i = 0; i < p.numel; ++i) {
      const int64_t k = p.offset + i;
      if (!mask_->trainable(k) && as_stored(want + k) != got[k]) {
        return absl::FailedPreconditionError(
            absl::StrCat("resume: ", dir.string(), ": tensor ", p.name, " element ", i,
                         " is frozen but differs from ", o_.model_dir.string(),
                         " (the checkpoint comes from another base model or plan)"));
      }
    }
  }
  if (stored != DType::kF32) {
    // The trained values are the masters (the safetensors hold them rounded): back into the
    // arena at the trainable elements, in ascending order, before the trainer gathers them.
    absl::StatusOr<std::vector<float>> masters =
        run_checkpoint::read_masters(dir / run_checkpoint::kMastersFile, mask_->trainable_count());
    if (!masters.ok()) return masters.status();
    float* w = reinterpret_cast<float*>(loaded->arena.base());
    size_t next = 0;
    for (int64_t k = 0; k < mask_->elements(); ++k) {
      if (mask_->trainable(k)) w[k] = (*masters)[next++];
    }
  }
  model_ = std::move(*loaded);
  start_step_ = resume_step_;
  if ((*state)["best"].is_object()) {
    best_ppl_ = (*state)["best"]["ppl"].get<double>();
    best_step_ = (*state)["best"]["step"].get<int64_t>();
  }
  last_loss_ = state->is_object() ? state->value("loss", 0.0) : 0.0;
  if (state->contains("loss_scale") && (*state)["loss_scale"].is_object()) {
    const nlohmann::json& ls = (*state)["loss_scale"];
    resumed_loss_scale_ = {ls.value("scale", 1.0), ls.value("clean_steps", int64_t{0})};
  }
  last_good_ = dir.string();
  return absl::OkStatus();
}

// A kill between moving an old checkpoint aside and renaming its replacement into place leaves
// only OUT/.old-<name>: put it back.
absl::Status TrainingRun::restore_moved_aside() const {
  std::error_code ec;
  for (const char* name : {"best", "final"}) {
    const fs::path old = o_.out_dir / absl::StrCat(".old-", name);
    if (fs::is_directory(old, ec) && !fs::exists(o_.out_dir / name, ec)) {
      fs::rename(old, o_.out_dir / name, ec);
      if (ec) return absl::InternalError(absl::StrCat(old.string(), ": rename: ", ec.message()));
    }
  }
  return absl::OkStatus();
}

// Every decision taken from the step number (evaluation, checkpoints, the stop hook, the
// schedule) is agreed here once, through a fingerprint of what drives it, and so is the
// checkpoint resumed from. This is also the barrier that keeps rank 0 from creating files in OUT
// while another rank still checks it.
absl::Status TrainingRun::agree_across_ranks() const {
  if (comm_ == nullptr) return absl::OkStatus();
  if (absl::Status s = check_same_value(
          *comm_, static_cast<uint64_t>(resume_step_),
          "the last complete checkpoint in OUT (is OUT on a filesystem every rank sees?)");
      !s.ok()) {
    return s;
  }
  const std::string cadence =
      absl::StrCat(recipe_.dump(), plan_json().dump(), " ", o_.eval_every, " ",
                   o_.checkpoint_every, " ", o_.stop_after_step, " ", o_.dist_checksum ? 1 : 0);
  return check_same_value(*comm_, checksum64(cadence.data(), cadence.size()),
                          "the training recipe or evaluation/checkpoint cadence");
}

// OUT, the trainer (with the resumed optimizer state), the metrics log and its first lines.
absl::Status TrainingRun::start_trainer() {
  std::error_code ec;
  if (!fs::create_directories(o_.out_dir, ec) && ec) {
    return absl::InternalError(
        absl::StrCat(o_.out_dir.string(), ": cannot create: ", ec.message()));
  }
  summary_ = mask_summary(model_, *mask_);
  // On a device the trainer updates the resident copy of the weights (surgery and a resumed
  // checkpoint are in the host arena by now); save() downloads it.
  if (backend_.kind() != DeviceKind::kCpu || o_.storage != DType::kF32) {
    if (absl::Status s = make_resident(model_, backend_, o_.storage); !s.ok()) return s;
  }
  trainer_.emplace(model_, backend_, *mask_, o_.optimizer);
  // The trainer's compact gradient holds its own copy of the mask's bit words; this one would
  // only double them for the rest of the run (70 MiB at bloom-560m, 205 MiB at bloom-1b7).
  mask_.reset();
  trainer_->set_recompute(o_.recompute);
  trainer_->set_communicator(comm_);
  trainer_->set_fault_hook(o_.fault_hook);
  trainer_->set_sink_loss_weight(o_.sink_loss_weight);
  if (resume_step_ >= 0) {
    if (absl::Status s = read_optimizer_state(
            o_.out_dir / absl::StrCat("step_", resume_step_) / kOptimizerFile, *trainer_,
            resume_step_);
        !s.ok()) {
      return s;
    }
    if (absl::Status s = trainer_->upload_optimizer_state(); !s.ok()) return s;
    if (resumed_loss_scale_.has_value()) {
      trainer_->set_loss_scale_state(resumed_loss_scale_->first, resumed_loss_scale_->second);
    }
  }
  if (writer_) {  // other ranks' metrics writes go nowhere
    if (absl::Status s = metrics_.open(o_.out_dir / kMetricsFile, resume_step_); !s.ok()) return s;
  }
  // m and v, plus the fp32 masters of 16-bit weights.
  const int64_t optimizer_bytes =
      static_cast<int64_t>(2 * trainer_->first_moment().size() * sizeof(float)) +
      (o_.storage != DType::kF32
           ? trainer_->trainable_count() * static_cast<int64_t>(sizeof(float))
           : 0);
  metrics_.write({{"event", resume_step_ >= 0 ? "resume" : "start"},
                  {"step", start_step_},
                  {"device", std::string(backend_.name())},
                  {"total_steps", total_},
                  {"trainable_elements", summary_["trainable_elements"]},
                  {"parameter_elements", summary_["parameter_elements"]},
                  {"optimizer_state_bytes", optimizer_bytes},
                  {"parameter_bytes", static_cast<int64_t>(model_.arena.size_bytes())},
                  {"dtype", absl::AsciiStrToLower(dtype_name(o_.storage))},
                  {"dtype_reason", o_.storage_reason}});
  log(absl::StrFormat(
      "train: %d steps, %d trainable of %d parameter elements (optimizer state "
      "%.1f MiB), %s weights%s, %s",
      total_, summary_["trainable_elements"].get<int64_t>(),
      summary_["parameter_elements"].get<int64_t>(), optimizer_bytes / (1024.0 * 1024.0),
      absl::AsciiStrToLower(dtype_name(o_.storage)),
      o_.storage_reason.empty() ? std::string() : absl::StrCat(" (", o_.storage_reason, ")"),
      resume_step_ >= 0 ? absl::StrCat("resumed at step ", resume_step_)
                        : std::string("from the start")));
  if (base_scan_.has_value()) {
    nlohmann::json line = *base_scan_;
    line["event"] = "scan";
    line["step"] = 0;
    line["before_surgery"] = true;
    metrics_.write(line);
  }
  return absl::OkStatus();
}

nlohmann::json TrainingRun::state_for(int64_t step, double loss) const {
  nlohmann::json best = nlohmann::json();
  if (best_ppl_.has_value()) best = {{"ppl", *best_ppl_}, {"step", best_step_}};
  nlohmann::json state{{"format", "engine-train-state"},
                        {"version", kStateVersion},
                        {"step", step},
                        {"chunks_consumed", step * o_.batch * o_.grad_accum * world_},
                        {"loss", loss},
                        {"recipe", recipe_},
                        {"plan", plan_json()},
                        {"base_model", o_.model_dir.string()},
                        {"base_config", config_json_},
                        {"base_weights_sha256", base_weights_sha256_},
                        {"mask", summary_},
                        {"best", best}};
  if (o_.optimizer.loss_scaling.dynamic && trainer_.has_value()) {
    state["loss_scale"] = {{"scale", trainer_->loss_scale()},
                           {"clean_steps", trainer_->clean_steps()}};
  }
  return state;
}

absl::Status TrainingRun::scan(int64_t step) {
  if (o_.scan == nullptr) return absl::OkStatus();
  absl::StatusOr<TrainingScan::Line> now = o_.scan->scan(model_, backend_, step);
  if (!now.ok()) return now.status();
  nlohmann::json line = std::move(now->fields);
  line["event"] = "scan";
  line["step"] = step;
  metrics_.write(line);
  log(now->log);
  return absl::OkStatus();
}

// The held-out perplexity sums; with several ranks, rank r evaluates held-out chunks r, r + N,
// ... and the sums are then added up.
absl::StatusOr<PerplexityResult> TrainingRun::held_out_perplexity(int64_t step) {
  PerplexityOptions po;
  po.seq_len = o_.seq_len, po.stride = o_.seq_len, po.batch = o_.batch;
  if (comm_ == nullptr) return sliding_window_perplexity(model_, backend_, data_.eval_chunks, po);
  absl::StatusOr<PerplexityResult> r = PerplexityResult{};
  std::vector<std::vector<int32_t>> shard;
  for (size_t i = static_cast<size_t>(rank_); i < data_.eval_chunks.size(); i += world_) {
    shard.push_back(data_.eval_chunks[i]);
  }
  if (!shard.empty()) r = sliding_window_perplexity(model_, backend_, shard, po);
  if (!r.ok()) return r.status();
  double sums[3] = {r->nll_sum, static_cast<double>(r->tokens_scored),
                    static_cast<double>(r->windows)};
  if (absl::Status s = comm_->all_reduce_sum(sums, 3, absl::StrCat("evaluation at step ", step));
      !s.ok()) {
    return s;
  }
  r->nll_sum = sums[0];
  r->tokens_scored = static_cast<int64_t>(sums[1]);
  r->windows = static_cast<int64_t>(sums[2]);
  return r;
}

// The held-out perplexity (none without held-out data) and the head scan.
absl::StatusOr<std::optional<double>> TrainingRun::evaluate(int64_t step) {
  if (data_.eval_chunks.empty()) {
    if (absl::Status s = scan(step); !s.ok()) return s;
    return std::optional<double>();
  }
  absl::StatusOr<PerplexityResult> r = held_out_perplexity(step);
  if (!r.ok()) return r.status();
  const double ppl = std::exp(r->mean_nll());
  metrics_.write({{"event", "eval"},
                  {"step", step},
                  {"eval_nll", r->mean_nll()},
                  {"eval_ppl", ppl},
                  {"eval_tokens", r->tokens_scored}});
  log(absl::StrFormat("eval  step %d: held-out perplexity %.4f over %d tokens", step, ppl,
                      r->tokens_scored));
  if (absl::Status s = scan(step); !s.ok()) return s;
  return std::optional<double>(ppl);
}

// Rank 0 writes; then every rank learns whether that worked (and, with dist_checksum, that the
// weights are identical everywhere) under the start-up timeout, since a write may take long.
absl::Status TrainingRun::save(const std::string& name, const nlohmann::json& state) {
  // On a device: the weights and moments to the host first (no-ops on the CPU).
  if (absl::Status s = trainer_->download_weights(); !s.ok()) return s;
  if (absl::Status s = trainer_->download_optimizer_state(); !s.ok()) return s;
  const absl::Status written =
      writer_ ? save_checkpoint(o_.out_dir, name, model_, *trainer_, state,
                                plan_json().is_null() ? nullptr : &plan_json(),
                                o_.checkpoint_storage)
              : absl::OkStatus();
  if (comm_ == nullptr) return written;
  const double step_timeout = comm_->timeout();
  comm_->set_timeout(startup_timeout_);
  absl::StatusOr<bool> all =
      agree_all(*comm_, written.ok(), absl::StrCat("agreement after checkpoint ", name));
  absl::Status result = !all.ok()       ? all.status()
                        : !written.ok() ? written
                        : *all          ? absl::OkStatus()
                                        : absl::InternalError(absl::StrCat(
                                     "rank 0 could not write checkpoint ", name,
                                     " (its message is in rank 0's output)"));
  if (result.ok() && o_.dist_checksum) {
    const uint64_t sum = checksum64(model_.arena.base(), model_.arena.size_bytes());
    result = check_same_value(*comm_, sum, absl::StrCat("the weight checksum at ", name));
  }
  comm_->set_timeout(step_timeout);
  return result;
}

// One optimizer step with its metrics line, then the evaluation and checkpoints due at it.
// True: the stop hook ends the run here, without a final checkpoint.
absl::StatusOr<bool> TrainingRun::optimizer_step(int64_t step) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  if (o_.on_step_start) o_.on_step_start(step);
  for (int64_t a = 0; a < o_.grad_accum; ++a) {
    micro_[a] = chunk_micro_batch(
        *data_.train, shard_first_chunk(step, a, o_.batch, o_.grad_accum, rank_, world_), o_.batch);
  }
  const double lr = schedule_.lr(step);
  absl::StatusOr<StepResult> r = trainer_->step(micro_, lr);
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat(std::string(r.status().message()),
                                                        "; last good checkpoint: ", last_good_));
  }
  if (comm_ != nullptr && step == start_step_ + 1) comm_->set_timeout(o_.dist_step_timeout_s);
  last_loss_ = r->loss;
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  const double tokens_per_s = r->tokens / std::max(seconds, 1e-9);
  nlohmann::json line = {{"event", "step"},
                         {"step", step},
                         {"loss", r->loss},
                         {"lr", lr},
                         {"grad_norm", r->grad_norm},
                         {"tokens", r->tokens},
                         {"tokens_per_s", tokens_per_s}};
  if (!o_.sink_loss_weight.empty()) line["sink_loss"] = r->sink_loss;
  const LossScaling& scaling = o_.optimizer.loss_scaling;
  if (scaling.dynamic || scaling.scale != 1.0) line["loss_scale"] = r->loss_scale;
  if (r->overflow) line["overflow"] = true;
  if (!r->finite) {
    line["skipped_nonfinite"] = true;
    line["nonfinite"] = r->nonfinite;
  }
  metrics_.write(line);
  if (absl::Status s = metrics_.status(); !s.ok()) return with_last_good(s, last_good_);
  log(absl::StrFormat("step %d/%d  loss %.4f  lr %.3g  grad_norm %.4f  %.0f tok/s%s%s", step,
                      total_, r->loss, lr, r->grad_norm, tokens_per_s,
                      o_.sink_loss_weight.empty()
                          ? ""
                          : absl::StrFormat("  sink_loss %.4f", r->sink_loss),
                      r->finite     ? ""
                      : r->overflow ? absl::StrFormat("  (gradient overflow at loss scale %g, "
                                                      "skipped)", r->loss_scale)
                                    : "  (non-finite, skipped)"));
  if (o_.progress) o_.progress(step, total_);
  const bool last = step == total_;
  if ((o_.eval_every > 0 && step % o_.eval_every == 0) || last) {
    absl::StatusOr<std::optional<double>> ppl = evaluate(step);
    if (!ppl.ok()) return ppl.status();
    evaluated_at_end_ = last;
    if (ppl->has_value() && (!best_ppl_.has_value() || **ppl < *best_ppl_)) {
      best_ppl_ = **ppl;
      best_step_ = step;
      if (absl::Status s = save("best", state_for(step, last_loss_)); !s.ok()) {
        return with_last_good(s, last_good_);
      }
    }
  }
  if (step % checkpoint_every_ == 0 || last) {
    const std::string name = absl::StrCat("step_", step);
    if (absl::Status s = save(name, state_for(step, last_loss_)); !s.ok()) {
      return with_last_good(s, last_good_);
    }
    last_good_ = (o_.out_dir / name).string();
  }
  return o_.stop_after_step > 0 && step >= o_.stop_after_step && !last;
}

// After the last step: the evaluation a run resumed at its end still owes, the final checkpoint
// and the end line.
absl::Status TrainingRun::finish(TrainRunResult& result) {
  if (!evaluated_at_end_ && start_step_ >= total_) {
    absl::StatusOr<std::optional<double>> ppl = evaluate(total_);
    if (!ppl.ok()) return ppl.status();
  }
  result.final_dir = o_.out_dir / "final";
  if (absl::Status s = save("final", state_for(trainer_->step_count(), last_loss_)); !s.ok()) {
    return with_last_good(s, last_good_);
  }
  metrics_.write({{"event", "end"}, {"step", trainer_->step_count()}, {"loss", last_loss_}});
  result.steps = trainer_->step_count();
  return absl::OkStatus();
}

absl::StatusOr<TrainRunResult> TrainingRun::run() {
  if (absl::Status s = validate_inputs(); !s.ok()) return s;
  absl::StatusOr<BloomModel> base = prepare_base();
  if (!base.ok()) return base.status();
  plan_schedule();
  if (resume_step_ >= 0) {
    if (absl::Status s = resume_from_checkpoint(*base); !s.ok()) return s;
    if (absl::Status s = restore_moved_aside(); !s.ok()) return s;
  } else {
    model_ = std::move(*base);
  }
  if (absl::Status s = agree_across_ranks(); !s.ok()) return s;
  if (absl::Status s = start_trainer(); !s.ok()) return s;

  TrainRunResult result;
  micro_.resize(static_cast<size_t>(o_.grad_accum));
  for (int64_t step = start_step_ + 1; step <= total_; ++step) {
    absl::StatusOr<bool> stop = optimizer_step(step);
    if (!stop.ok()) return stop.status();
    if (*stop) {
      result.steps = step;
      result.final_loss = last_loss_;
      result.best_ppl = best_ppl_;
      return result;
    }
  }
  if (absl::Status s = finish(result); !s.ok()) return s;
  result.final_loss = last_loss_;
  result.best_ppl = best_ppl_;
  return result;
}

}  // namespace

absl::StatusOr<TrainRunResult> run_training(const TrainRunOptions& options, const TrainData& data,
                                            Backend& backend) {
  TrainingRun run(options, data, backend);
  return run.run();
}

}  // namespace engine
