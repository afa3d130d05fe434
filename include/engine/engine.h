// The engine's public C++ API: load a BLOOM model directory, run it, measure its attention heads,
// operate on them with a surgery plan, evaluate, and save. This header (and nothing else) is what
// an embedding program includes; kernels, the tape and the arena layout stay private.
//
// Errors are returned, never printed: every fallible call returns Result<T> (or Result<void>)
// carrying either a value or a one-line message naming the file, field or value at fault. The
// library never exits or aborts the process on bad input.
//
// Thread-safety: a Model is not internally synchronised. Const member functions may run
// concurrently with each other on one Model; a non-const call (apply_plan, train) needs
// exclusive access. Different Model objects are fully independent (no global mutable
// state), so two models can be used from two threads at once.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace engine::api {

// A value or an error message. `ok()` says which; `value()` on an error is a programming error.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  static Result failure(std::string message) { return Result(Failure{std::move(message)}); }
  bool ok() const { return value_.has_value(); }
  const T& value() const& { return *value_; }
  T& value() & { return *value_; }
  T&& value() && { return std::move(*value_); }
  const T* operator->() const { return &*value_; }
  T* operator->() { return &*value_; }
  const std::string& error() const { return error_; }

 private:
  struct Failure {
    std::string message;
  };
  explicit Result(Failure f) : error_(std::move(f.message)) {}
  std::optional<T> value_;
  std::string error_;
};

template <>
class Result<void> {
 public:
  Result() = default;
  static Result failure(std::string message) {
    Result r;
    r.failed_ = true;
    r.error_ = std::move(message);
    return r;
  }
  bool ok() const { return !failed_; }
  const std::string& error() const { return error_; }

 private:
  bool failed_ = false;
  std::string error_;
};

struct ModelInfo {
  int64_t vocab_size = 0, hidden_size = 0, n_layer = 0, n_head = 0, head_dim = 0;
  int64_t parameters = 0;           // total parameter count
  std::vector<float> alibi_slopes;  // (n_head)
  std::string device;               // the backend the model computes on: "cpu" or "cuda"
  std::string dtype;                // the weights' storage there: "f32", "bf16" or "f16"
  std::string dtype_reason;         // why: "auto: cpu", "auto: cuda, head_dim 64", "bf16", ...
};

// Per-head attention statistics (METHOD.md section 2), means over a sequence's real query rows.
struct HeadValues {
  int64_t layer = 0, head = 0;
  double bos_mass = 0, entropy = 0, local_mass = 0;
};

struct ForwardOutput {
  double loss = 0;             // mean next-token cross-entropy over scored positions
  int64_t scored = 0;          // scored positions
  std::vector<float> logits;   // (B, T, V) when requested
  // stats[b] holds sequence b's (L * H) heads, layer-major, when requested.
  std::vector<std::vector<HeadValues>> stats;
};

struct ForwardOptions {
  bool logits = false;
  bool head_statistics = false;
};

struct PerplexityOptions {
  int64_t seq_len = 512;
  int64_t stride = 256;
};

struct Perplexity {
  int64_t tokens_scored = 0;
  double nll = 0;  // mean negative log-likelihood per scored token
  double ppl = 0;  // exp(nll)
};

// A surgery plan (plan.json version 1, docs/FORMATS.md).
struct PlanTarget {
  int64_t layer = 0, head = 0;
};
class Plan {
 public:
  // Parses plan.json text strictly; `source` names it in errors.
  static Result<Plan> parse(const std::string& json_text, const std::string& source = "plan");
  static Result<Plan> load(const std::string& path);
  // Default recipe (Xavier-uniform QKV, zero QKV bias and dense columns, all three trainable).
  static Plan for_targets(std::vector<PlanTarget> targets, uint64_t seed = 0);
  std::vector<PlanTarget> targets() const;
  std::string to_json() const;

  Plan(const Plan&);
  Plan& operator=(const Plan&);
  Plan(Plan&&) noexcept;
  Plan& operator=(Plan&&) noexcept;
  ~Plan();

 private:
  friend class Model;
  struct Impl;
  explicit Plan(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Diagnosis of many sequences (METHOD.md section 2): per head, the mean over sequences of the
// per-sequence statistics, their spread, and the class the thresholds give the means.
struct DiagnoseOptions {
  int64_t seq_len = 512;  // longer sequences are truncated
  int64_t batch = 4;      // sequences per forward pass
  double dead = 0.95, sink = 0.5, low_entropy = 0.5;
};

struct HeadDiagnosis {
  int64_t layer = 0, head = 0;
  double slope = 0;
  double bos_mass = 0, bos_mass_std = 0, entropy = 0, entropy_std = 0, local_mass = 0;
  std::string cls;  // "HEALTHY", "LOW_ENTROPY", "SINK" or "DEAD"
};

struct Diagnosis {
  int64_t sequences = 0, tokens = 0;
  int64_t healthy = 0, low_entropy = 0, sink = 0, dead = 0;
  std::vector<HeadDiagnosis> heads;  // layer-major
  std::string report_json;           // report.json version 1 (docs/FORMATS.md)
  int64_t collapsed() const { return sink + dead; }
};

// Training on token-id documents (joined by `separator`, cut into seq_len chunks, seeded
// order). Trains the elements apply_plan made trainable, or every parameter when no plan was
// applied.
struct TrainOptions {
  int64_t steps = 10;
  int64_t seq_len = 128;
  int64_t batch = 1;
  int64_t grad_accum = 1;
  double lr = 5e-5;
  int64_t warmup = -1;         // -1 = min(100, steps / 4)
  bool cosine = true;          // else constant after warm-up
  std::string optimizer = "adamw";  // or "sgd"
  double beta1 = 0.9, beta2 = 0.999, weight_decay = 0.0;
  double clip = 1.0;           // global-norm clip over trainable elements; 0 disables
  uint64_t seed = 1234;
  std::vector<int32_t> separator;  // ids placed between documents (none by default)
};

struct TrainProgress {
  int64_t step = 0, total_steps = 0;
  double loss = 0, grad_norm = 0, lr = 0;
};

struct TrainSummary {
  int64_t steps = 0;
  double first_loss = 0, last_loss = 0;
  int64_t trainable_elements = 0;
  bool cancelled = false;
};

// What apply_plan did: how many elements became trainable (the optimizer's state size).
struct SurgerySummary {
  int64_t targets = 0;
  int64_t trainable_elements = 0;
  int64_t total_parameters = 0;
};

class Model {
 public:
  // Loads an HF model directory (config.json + safetensors) onto `device`: "cpu", "cuda",
  // "cuda:N" or "auto" (cuda when a GPU is visible, else cpu), as the CLI's --device. On a CUDA
  // device forward, perplexity, diagnose and train run there; the default stays "cpu" rather
  // than "auto" until the device path has run on hardware. `dtype` is the weights' storage, as
  // the CLI's --dtype: "auto" (bf16 on a CUDA device whose tensor-core attention takes the
  // model's head dim, else f32; f32 on the cpu), "f32", "bf16" or "f16" (on the cpu: the bf16 /
  // f16 storage twin, values rounded on every store, fp32 arithmetic). With 16-bit weights train
  // keeps fp32 masters of the trainable elements (f16 with dynamic loss scaling) and save()
  // writes the masters and the loaded values of the frozen elements.
  static Result<Model> load(const std::string& directory, const std::string& device = "cpu",
                            const std::string& dtype = "auto");

  ModelInfo info() const;

  // ids: one vector per sequence; shorter sequences are right-padded internally.
  Result<ForwardOutput> forward(const std::vector<std::vector<int32_t>>& ids,
                                const ForwardOptions& options = {}) const;

  // Hugging Face sliding-window perplexity over documents of token ids.
  Result<Perplexity> perplexity(const std::vector<std::vector<int32_t>>& documents,
                                const PerplexityOptions& options = {}) const;

  // Diagnoses every head over `sequences` of token ids.
  Result<Diagnosis> diagnose(const std::vector<std::vector<int32_t>>& sequences,
                             const DiagnoseOptions& options = {}) const;

  // Trains for options.steps optimizer steps with a fresh optimizer state. `on_step` (optional) is called after every step
  // on the calling thread; setting `*cancel` (optional) stops after the current step, which is
  // reported as cancelled, not as an error. Frozen elements never change.
  Result<TrainSummary> train(const std::vector<std::vector<int32_t>>& documents,
                             const TrainOptions& options,
                             const std::function<void(const TrainProgress&)>& on_step = {},
                             const std::atomic<bool>* cancel = nullptr);

  // Checks the plan against this model, re-initialises the target heads in place and records
  // which elements are trainable. Nothing changes when it fails.
  Result<SurgerySummary> apply_plan(const Plan& plan);

  // Writes an HF model directory; dtype "f32", "f16" or "bf16".
  Result<void> save(const std::string& directory, const std::string& dtype = "f32") const;

  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The library's version string.
const char* version();

}  // namespace engine::api
