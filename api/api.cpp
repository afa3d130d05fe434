// Implementation of the public API (include/engine/engine.h) over the internal modules.
// Every absl::Status becomes a Result failure carrying its message; nothing here prints.
#include "include/engine/engine.h"

#include <algorithm>
#include <cmath>

#include "engine/backend.h"
#include "engine/device.h"
#include "model/device_model.h"
#include "model/bloom_forward.h"
#include "model/config.h"
#include "model/model_directory.h"
#include "model/dataset.h"
#include "model/perplexity.h"
#include "model/trainer.h"
#include "surgery/corpus_scan.h"
#include "surgery/diagnosis.h"
#include "engine/frozen_mask.h"
#include "surgery/head_surgery.h"
#include "surgery/plan.h"

namespace engine::api {

namespace {
template <typename T>
Result<T> fail(const absl::Status& s) {
  return Result<T>::failure(std::string(s.message()));
}
}  // namespace

const char* version() { return "0.1.0"; }

// ---- Plan ---------------------------------------------------------------------------------------

struct Plan::Impl {
  SurgeryPlan plan;
};

Plan::Plan(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Plan::Plan(const Plan& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
Plan& Plan::operator=(const Plan& o) {
  impl_ = std::make_unique<Impl>(*o.impl_);
  return *this;
}
Plan::Plan(Plan&&) noexcept = default;
Plan& Plan::operator=(Plan&&) noexcept = default;
Plan::~Plan() = default;

Result<Plan> Plan::parse(const std::string& json_text, const std::string& source) {
  auto p = parse_plan_text(json_text, source);
  if (!p.ok()) return fail<Plan>(p.status());
  return Plan(std::make_unique<Impl>(Impl{*std::move(p)}));
}

Result<Plan> Plan::load(const std::string& path) {
  auto p = load_plan(path);
  if (!p.ok()) return fail<Plan>(p.status());
  return Plan(std::make_unique<Impl>(Impl{*std::move(p)}));
}

Plan Plan::for_targets(std::vector<PlanTarget> targets, uint64_t seed) {
  SurgeryPlan p;
  for (const PlanTarget& t : targets) p.targets.push_back(HeadTarget{t.layer, t.head});
  p.seed = seed;
  return Plan(std::make_unique<Impl>(Impl{std::move(p)}));
}

std::vector<PlanTarget> Plan::targets() const {
  std::vector<PlanTarget> out;
  for (const HeadTarget& t : impl_->plan.targets) out.push_back(PlanTarget{t.layer, t.head});
  return out;
}

std::string Plan::to_json() const { return plan_to_json(impl_->plan).dump(2); }

// ---- Model --------------------------------------------------------------------------------------

struct Model::Impl {
  BloomModel model;
  std::unique_ptr<Backend> backend;
  StorageChoice storage;           // the weights' storage on the backend (load's dtype)
  std::optional<FrozenMask> mask;  // set by apply_plan
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Result<Model> Model::load(const std::string& directory, const std::string& device,
                          const std::string& dtype) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = make_backend(device);
  if (!backend.ok()) return fail<Model>(backend.status());
  auto m = load_model_directory(directory);
  if (!m.ok()) return fail<Model>(m.status());
  const bool cuda = (*backend)->kind() == DeviceKind::kCuda;
  absl::StatusOr<StorageChoice> storage = choose_storage(dtype, cuda, m->config.head_dim());
  if (!storage.ok()) {
    return Result<Model>::failure(absl::StrCat("load: dtype ", storage.status().message()));
  }
  auto impl = std::make_unique<Impl>();
  impl->model = *std::move(m);
  impl->backend = *std::move(backend);
  impl->storage = *std::move(storage);
  if (absl::Status s = make_resident(impl->model, *impl->backend, impl->storage.dtype); !s.ok()) {
    return Result<Model>::failure(absl::StrCat("load: ", s.message()));
  }
  return Model(std::move(impl));
}

ModelInfo Model::info() const {
  const BloomConfig& c = impl_->model.config;
  ModelInfo i;
  i.vocab_size = c.vocab_size;
  i.device = std::string(impl_->backend->name());
  // The spelling of load's dtype ("f32", "bf16", "f16"), not the safetensors one.
  i.dtype = impl_->storage.dtype == DType::kBF16  ? "bf16"
            : impl_->storage.dtype == DType::kF16 ? "f16"
                                                  : "f32";
  i.dtype_reason = impl_->storage.reason;
  i.hidden_size = c.hidden_size;
  i.n_layer = c.n_layer;
  i.n_head = c.n_head;
  i.head_dim = c.head_dim();
  i.parameters = impl_->model.arena.parameter_elements();
  i.alibi_slopes = attention_slopes(c);
  return i;
}

Result<ForwardOutput> Model::forward(const std::vector<std::vector<int32_t>>& ids,
                                     const ForwardOptions& options) const {
  if (ids.empty()) return Result<ForwardOutput>::failure("forward: no sequences given");
  size_t longest = 0;
  for (const auto& s : ids) longest = std::max(longest, s.size());
  if (longest == 0) return Result<ForwardOutput>::failure("forward: every sequence is empty");
  const auto batch = static_cast<int64_t>(ids.size());
  const auto seq = static_cast<int64_t>(longest);
  std::vector<int32_t> flat(static_cast<size_t>(batch * seq), 0);
  std::vector<uint8_t> mask(flat.size(), 0);
  for (int64_t b = 0; b < batch; ++b) {
    if (ids[b].empty()) {
      return Result<ForwardOutput>::failure("forward: sequence " + std::to_string(b) + " is empty");
    }
    for (size_t t = 0; t < ids[b].size(); ++t) {
      flat[b * seq + t] = ids[b][t];
      mask[b * seq + t] = 1;
    }
  }
  const std::vector<int32_t> targets = next_token_targets(flat.data(), mask.data(), batch, seq);
  ForwardInputs in;
  in.batch = batch;
  in.seq = seq;
  in.ids = flat.data();
  in.mask = mask.data();
  in.targets = targets.data();
  in.want_logits = options.logits;
  in.want_stats = options.head_statistics;
  auto r = bloom_forward(impl_->model, *impl_->backend, in);
  if (!r.ok()) return fail<ForwardOutput>(r.status());
  ForwardOutput out;
  out.loss = r->loss;
  out.scored = r->scored;
  out.logits = std::move(r->logits);
  if (options.head_statistics) {
    const HeadStats& s = r->stats;
    out.stats.resize(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t l = 0; l < s.n_layer; ++l) {
        for (int64_t h = 0; h < s.n_head; ++h) {
          out.stats[b].push_back(HeadValues{l, h, s.at(s.bos_mass, l, b, h),
                                            s.at(s.entropy, l, b, h), s.at(s.local_mass, l, b, h)});
        }
      }
    }
  }
  return out;
}

Result<Perplexity> Model::perplexity(const std::vector<std::vector<int32_t>>& documents,
                                     const PerplexityOptions& options) const {
  engine::PerplexityOptions o;
  o.seq_len = options.seq_len;
  o.stride = options.stride;
  auto r = sliding_window_perplexity(impl_->model, *impl_->backend, documents, o);
  if (!r.ok()) return fail<Perplexity>(r.status());
  Perplexity p;
  p.tokens_scored = r->tokens_scored;
  p.nll = r->mean_nll();
  p.ppl = std::exp(p.nll);
  return p;
}

Result<Diagnosis> Model::diagnose(const std::vector<std::vector<int32_t>>& sequences,
                                  const DiagnoseOptions& options) const {
  engine::DiagnoseOptions o;
  o.seq_len = options.seq_len;
  o.batch = options.batch;
  o.thresholds = Thresholds{options.dead, options.sink, options.low_entropy};
  o.model_name = impl_->model.source.filename().string();
  if (auto s = validate_thresholds(o.thresholds); !s.ok()) return fail<Diagnosis>(s);
  if (options.seq_len < 1) return Result<Diagnosis>::failure("diagnose: seq_len must be >= 1");
  std::vector<TokenSequence> cut;
  for (const auto& s : sequences) {
    cut.emplace_back(s.begin(), s.begin() + std::min<int64_t>(options.seq_len, s.size()));
  }
  auto report = diagnose_sequences(impl_->model, *impl_->backend, cut, o);
  if (!report.ok()) return fail<Diagnosis>(report.status());
  Diagnosis d;
  d.sequences = report->sequences;
  d.tokens = report->tokens;
  d.healthy = report->counts.healthy;
  d.low_entropy = report->counts.low_entropy;
  d.sink = report->counts.sink;
  d.dead = report->counts.dead;
  for (const HeadSummary& h : report->heads) {
    d.heads.push_back(HeadDiagnosis{h.layer, h.head, h.slope, h.bos_mass.mean, h.bos_mass.std,
                                    h.entropy.mean, h.entropy.std, h.local_mass.mean,
                                    head_class_name(h.cls)});
  }
  d.report_json = report_to_json(*report).dump(2);
  return d;
}

Result<TrainSummary> Model::train(const std::vector<std::vector<int32_t>>& documents,
                                  const TrainOptions& options,
                                  const std::function<void(const TrainProgress&)>& on_step,
                                  const std::atomic<bool>* cancel) {
  if (options.steps < 1 || options.batch < 1 || options.grad_accum < 1 || options.seq_len < 2) {
    return Result<TrainSummary>::failure(
        "train: steps, batch and grad_accum must be >= 1 and seq_len >= 2");
  }
  OptimizerOptions opt;
  if (options.optimizer == "adamw") {
    opt.kind = OptimizerKind::kAdamW;
  } else if (options.optimizer == "sgd") {
    opt.kind = OptimizerKind::kSgd;
  } else {
    return Result<TrainSummary>::failure("train: optimizer \"" + options.optimizer +
                                         "\" is not adamw or sgd");
  }
  opt.beta1 = options.beta1;
  opt.beta2 = options.beta2;
  opt.weight_decay = options.weight_decay;
  opt.clip = options.clip;
  // f16 weights: dynamic loss scaling, as the CLI's --dtype f16 (model/trainer.h, LossScaling).
  if (impl_->storage.dtype == DType::kF16) {
    opt.loss_scaling = {kF16InitialLossScale, /*dynamic=*/true};
  }

  Corpus corpus;
  for (const auto& doc : documents) {
    for (int32_t id : doc) {
      if (id < 0 || id >= impl_->model.config.vocab_size) {
        return Result<TrainSummary>::failure("train: token id " + std::to_string(id) +
                                             " is outside the vocabulary");
      }
      corpus.ids.push_back(static_cast<uint32_t>(id));
    }
    corpus.document_ends.push_back(corpus.ids.size());
  }
  const std::vector<uint32_t> separator(options.separator.begin(), options.separator.end());
  ChunkOptions chunk;
  chunk.seq_len = options.seq_len;
  chunk.seed = options.seed;
  auto data = ChunkedDataset::build(corpus, separator, chunk);
  if (!data.ok()) return fail<TrainSummary>(data.status());
  if (data->train_size() == 0) {
    return Result<TrainSummary>::failure("train: the documents hold fewer than seq_len tokens");
  }

  if (!impl_->mask) impl_->mask = FrozenMask::all_trainable(impl_->model.arena);
  Trainer trainer(impl_->model, *impl_->backend, *impl_->mask, opt);
  LrSchedule schedule;
  schedule.peak = options.lr;
  schedule.total = options.steps;
  schedule.warmup = options.warmup >= 0 ? options.warmup : LrSchedule::default_warmup(options.steps);
  schedule.kind = options.cosine ? ScheduleKind::kCosine : ScheduleKind::kConstant;

  TrainSummary summary;
  summary.trainable_elements = trainer.trainable_count();
  uint64_t next_chunk = 0;
  for (int64_t step = 1; step <= options.steps; ++step) {
    if (cancel != nullptr && cancel->load()) {
      summary.cancelled = true;
      break;
    }
    std::vector<MicroBatch> micro;
    for (int64_t a = 0; a < options.grad_accum; ++a) {
      micro.push_back(chunk_micro_batch(*data, next_chunk, options.batch));
      next_chunk += static_cast<uint64_t>(options.batch);
    }
    auto r = trainer.step(micro, schedule.lr(step));
    if (!r.ok()) {
      // On a device the resident weights hold the steps taken so far: bring the host copy
      // (what save() writes) level with them before reporting the error.
      (void)trainer.download_weights();
      return fail<TrainSummary>(r.status());
    }
    if (step == 1) summary.first_loss = r->loss;
    summary.last_loss = r->loss;
    summary.steps = step;
    if (on_step) on_step(TrainProgress{step, options.steps, r->loss, r->grad_norm, r->lr});
  }
  // On a device the trainer updated the resident weights; the host arena (what save() writes
  // and info() describes) follows here. A no-op on the CPU.
  if (absl::Status s = trainer.download_weights(); !s.ok()) return fail<TrainSummary>(s);
  return summary;
}

Result<SurgerySummary> Model::apply_plan(const Plan& plan) {
  const BloomConfig& c = impl_->model.config;
  const HeadGeometry g = HeadGeometry::of(c);
  if (auto s = validate_plan(plan.impl_->plan, g, "plan"); !s.ok()) return fail<SurgerySummary>(s);
  auto mask = apply_surgery(impl_->model.arena, g, plan.impl_->plan);
  if (!mask.ok()) return fail<SurgerySummary>(mask.status());
  // The surgery edited the host arena; a device (or the 16-bit twin) computes on its own copy,
  // refreshed here in the storage load chose.
  if (absl::Status s = make_resident(impl_->model, *impl_->backend, impl_->storage.dtype);
      !s.ok()) {
    return fail<SurgerySummary>(s);
  }
  SurgerySummary summary;
  summary.targets = static_cast<int64_t>(plan.impl_->plan.targets.size());
  summary.trainable_elements = mask->trainable_count();
  summary.total_parameters = impl_->model.arena.parameter_elements();
  impl_->mask = *std::move(mask);
  return summary;
}

Result<void> Model::save(const std::string& directory, const std::string& dtype) const {
  const std::optional<DType> t = float_dtype_from_flag(dtype);
  if (!t.has_value()) {
    return Result<void>::failure("save: dtype \"" + dtype + "\" is not f32, f16 or bf16");
  }
  if (auto s = save_model_directory(impl_->model, directory, *t); !s.ok()) {
    return Result<void>::failure(std::string(s.message()));
  }
  return {};
}

}  // namespace engine::api
