// Training: masked optimizer steps and the whole run (data order, schedule, evaluation,
// checkpoints, resume, metrics). docs/TRAINING.md describes the behaviour, docs/FORMATS.md the
// checkpoint layout.
//
// Contract:
// - Trainer::step takes the micro-batches of one optimizer step, accumulates the gradient of
//   mean(micro-batch losses) into the compact buffer (trainable elements only, tape.h), clips by
//   the global norm over trainable elements, and applies masked AdamW or SGD: only arena elements
//   listed by the FrozenMask are ever written, so frozen ones stay bit-identical. Optimizer state
//   holds one m and one v per trainable element (the arena is f32, so no master copy is needed).
//   A non-finite loss or gradient leaves the weights and state untouched and is reported with
//   its cause named (model/numeric_faults.h): the weight tensor, the loss, or the gradient tensor.
//   A non-finite weight is an error even with skip_nonfinite (skipping cannot clear it).
// - 16-bit weights (the model resident in BF16 / F16 on the backend, model/device_model.h, before
//   the Trainer is made; on the CPU that is the storage twin): the forward and backward read the
//   16-bit copy; fp32 masters of the trainable elements only, in compact order (the compact
//   gradient's run table), start as the host arena's fp32 values; AdamW / SGD update the masters
//   and write each updated master into the 16-bit copy rounded to nearest even. Frozen elements
//   are written nowhere. download_weights() scatters the masters into the host arena, whose
//   frozen elements keep their loaded fp32 bits, so a checkpoint saved from it holds the trained
//   masters exactly and the frozen elements bit for bit; a resume from it starts the same
//   masters, moments and 16-bit copy (bit-exact on the same device and build).
// - On a device backend (the model's F32 weights resident there, model/device_model.h, before the
//   Trainer is made) the compact gradient, m and v live in device memory and the update writes
//   the resident arena, in chunks of arena offsets uploaded to the device (one upload for a
//   selection of up to 2^20 elements, cached; otherwise one per chunk per step). The host arena
//   and first_moment() / second_moment() are then refreshed only by download_weights() and
//   download_optimizer_state() (for checkpoints and evaluation); upload_optimizer_state() puts
//   resumed moments back. A non-finite step on a device downloads the weights and the gradient
//   to name its cause. Not on a device yet: data parallelism (world size > 1) and the sink loss
//   (both Unimplemented).
// - run_training on a device backend makes the base model resident for its scan and the trained
//   model before the Trainer is made (after surgery or a resume), downloads the weights and
//   moments before every checkpoint and uploads resumed moments; evaluation and scans read the
//   resident weights.
// - run_training drives Trainer over a ChunkedDataset in its seeded per-epoch order; everything
//   it does is a pure function of (weights, selection, options, data), so on the CPU backend a
//   run resumed from checkpoint step_N ends bit-identical to an uninterrupted run. It knows no
//   surgery plan: what trains comes as a TrainSelection and the head scans as a TrainingScan,
//   both built by surgery/ (surgery/surgery_training.h) from a plan.
// - Checkpoints carry a content manifest (model/checkpoint_manifest.h) written last; resume
//   verifies every byte of the checkpoint against it first, and refuses a checkpoint made from
//   another base model (configuration or weights hash) naming both. A checkpoint save that fails
//   (e.g. a full disk) removes what it wrote and leaves earlier checkpoints untouched.
// - Every input problem (a selection for another shape, targets out of range, an output path that
//   is a file, a resume directory from another model, plan or recipe) is an error before any work.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/arena.h"
#include "engine/backend.h"
#include "engine/device_array.h"
#include "engine/distributed.h"
#include "engine/schedule.h"
#include "engine/tape.h"
#include "model/bloom_forward.h"
#include "model/dataset.h"
#include "model/head_geometry.h"
#include "model/model_directory.h"
#include "nlohmann/json.hpp"
#include "engine/frozen_mask.h"

namespace engine {

enum class OptimizerKind { kAdamW, kSgd };

// Loss scaling (for F16 weights, whose activation gradients underflow below 2^-24; the CLI turns
// it on for --dtype f16, docs/TRAINING.md). The backward runs on `scale` x the loss (a power of
// two, so scaling and unscaling are exact), the gradient norm and the update are unscaled. With
// `dynamic`, a step whose compact gradient holds an inf or NaN (its norm is not finite: the one
// device reduction the step takes anyway) while the loss is finite is an overflow: skipped (it
// counts as a step, as with skip_nonfinite) and the scale halved; after `growth_interval` clean
// steps in a row the scale doubles. Without `dynamic` the scale is fixed (1: no scaling).
struct LossScaling {
  double scale = 1.0;
  bool dynamic = false;
  int64_t growth_interval = 2000;  // clean steps before doubling (torch.cuda.amp.GradScaler's)
};
// The initial scale of --dtype f16 (GradScaler's 2^16).
inline constexpr double kF16InitialLossScale = 65536.0;

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdamW;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;  // METHOD.md section 4
  double clip = 1.0;  // global-norm clip over trainable elements; 0 disables
  bool skip_nonfinite = false;
  LossScaling loss_scaling;
};

struct MicroBatch {
  int64_t batch = 0, seq = 0;
  std::vector<int32_t> ids;      // (B, T)
  std::vector<uint8_t> mask;     // (B, T) or empty = all real
  std::vector<int32_t> targets;  // (B, T), -1 = not scored
};

struct StepResult {
  int64_t step = 0;        // 1-based optimizer step just taken (or skipped)
  double loss = 0.0;       // mean of the micro-batch losses
  double grad_norm = 0.0;  // before clipping
  double lr = 0.0;
  int64_t tokens = 0;  // scored tokens
  bool finite = true;  // false: nothing was updated
  std::string nonfinite;  // when !finite: the cause (numeric_faults.h), e.g. the tensor named
  // Controlled collapse only (Trainer::set_sink_loss_weight): mean of the micro-batches'
  // auxiliary sink losses, which the step also minimised; `loss` does not include it.
  double sink_loss = 0.0;
  double loss_scale = 1.0;  // the loss scale this step's backward ran with (LossScaling)
  bool overflow = false;    // dynamic loss scaling: the gradient overflowed, the step skipped
};

// Test hook for injecting numerical faults into a step; both members are empty in production.
// before_forward sees the weights before the step's forward pass, after_backward the accumulated
// compact gradient before its norm is taken.
struct StepFaultHook {
  std::function<void(int64_t step, BloomModel& model)> before_forward;
  std::function<void(int64_t step, CompactGradients& gradients)> after_backward;
};

class Trainer {
 public:
  Trainer(BloomModel& model, Backend& backend, const FrozenMask& mask, OptimizerOptions options);

  // One optimizer step at learning rate `lr`; `step_count()` advances unless the step was
  // non-finite and not skipped (then an error names the step).
  absl::StatusOr<StepResult> step(std::span<const MicroBatch> micro_batches, double lr);

  int64_t step_count() const { return step_; }
  int64_t trainable_count() const { return grads_.size(); }
  const CompactGradients& gradients() const { return grads_; }
  // Optimizer state, for checkpoints: 1-based count of steps taken, first and second moments.
  std::vector<float>& first_moment() { return m_; }
  std::vector<float>& second_moment() { return v_; }
  void set_step_count(int64_t step) { step_ = step; }
  // Loss scaling state (LossScaling), for checkpoints: the current scale and the clean steps
  // since it last changed.
  double loss_scale() const { return loss_scale_; }
  int64_t clean_steps() const { return clean_steps_; }
  void set_loss_scale_state(double scale, int64_t clean_steps) {
    loss_scale_ = scale, clean_steps_ = clean_steps;
  }
  // Device backends and 16-bit weights (contract above); no-ops on the CPU in f32, where the host
  // memory is the state.
  absl::Status download_weights();
  absl::Status download_optimizer_state();
  absl::Status upload_optimizer_state();
  // The fp32 masters of 16-bit weights into `out` (compact order); FailedPrecondition for f32.
  absl::Status download_masters(std::vector<float>& out) const;
  // Activation recomputation per block (bloom_backward.h): less memory, same results.
  void set_recompute(bool on) { recompute_ = on; }
  // Data parallelism: the local gradient, loss and token count are averaged (summed) over the
  // ranks before the norm, and the non-finite decision is agreed, so every rank applies the same
  // update. Null or world size 1 = one process. On a device the compact gradient is reduced in
  // device memory when the transport can (NCCL), else staged through the host (MPI).
  void set_communicator(Communicator* comm) { comm_ = comm; }
  void set_fault_hook(StepFaultHook hook) { fault_hook_ = std::move(hook); }
  // Controlled collapse (model/bloom_backward.h, SinkLoss): per-(layer, head) weights of the
  // auxiliary attention-sink loss, (L, H); empty = none.
  void set_sink_loss_weight(std::vector<float> weight) { sink_weight_ = std::move(weight); }

 private:
  BloomModel& model_;
  Backend& backend_;
  OptimizerOptions options_;
  CompactGradients grads_;
  std::vector<float> m_, v_;
  // Device backends only: the moments, the update's chunk of arena offsets, and whether it
  // holds the whole selection already; init_ is a failed allocation, reported by step().
  bool on_device() const { return backend_.kind() != DeviceKind::kCpu; }
  // The weights' storage on the backend; 16-bit: fp32 masters of the trainable elements.
  DType storage_ = DType::kF32;
  DeviceArray<float> masters_;
  absl::Status init_masters();
  DeviceArray<float> m_device_, v_device_;
  DeviceArray<int64_t> index_device_;
  bool index_cached_ = false;
  absl::Status init_;
  int64_t step_ = 0;
  double loss_scale_ = 1.0;
  int64_t clean_steps_ = 0;
  bool recompute_ = false;
  Communicator* comm_ = nullptr;
  // The gradient all-reduce over comm_; on a device through staging_ when the transport cannot
  // read device memory.
  absl::Status all_reduce_gradient(const std::string& what);
  std::vector<float> staging_;
  StepFaultHook fault_hook_;
  std::vector<float> sink_weight_;
};


// What a run trains, without saying where that comes from (surgery/surgery_training.h builds it
// from a surgery plan). Default (every member empty): every parameter trains, nothing recorded.
struct TrainSelection {
  // Checked against the base model's shape before any work: before the head scan of the base
  // model and before `prepare`. Empty: nothing to check.
  std::function<absl::Status(const HeadGeometry&)> validate;
  // Prepares the base weights in place (e.g. re-initialises heads) and returns the mask of the
  // trainable elements; the prepared weights are the reference every frozen element keeps.
  // Empty: the weights stay as loaded and every element trains.
  std::function<absl::StatusOr<FrozenMask>(ParameterArena&, const HeadGeometry&)> prepare;
  // What a resumed run must agree on (the trainer state's "plan"); when not null it is also
  // written into every checkpoint as plan.json. Null: no plan.
  nlohmann::json record;
};

// The periodic head scan of a run (surgery/ supplies it): once on the base model before
// `TrainSelection::prepare`, then after every evaluation. Each scan returns the fields of its
// metrics line ("event" and "step" are added by the run).
class TrainingScan {
 public:
  virtual ~TrainingScan() = default;
  // The base model before any change: the reference of the later scans.
  virtual absl::StatusOr<nlohmann::json> scan_base(const BloomModel& base, Backend& backend) = 0;
  struct Line {
    nlohmann::json fields;  // of the metrics line
    std::string log;        // the progress line
  };
  virtual absl::StatusOr<Line> scan(const BloomModel& model, Backend& backend, int64_t step) = 0;
};

struct TrainRunOptions {
  std::filesystem::path model_dir;  // --model (the base checkpoint)
  std::filesystem::path out_dir;    // --out
  TrainSelection selection;         // --surgery (through surgery/); default: everything trains
  std::shared_ptr<TrainingScan> scan;  // null: no head scans
  int64_t seq_len = 512, batch = 1, grad_accum = 8;
  int64_t epochs = 1;  // used when steps == 0
  int64_t steps = 0;   // total optimizer steps; 0 = from epochs
  double lr = 5e-5;
  int64_t warmup = -1;  // -1 = min(100, total / 4)
  ScheduleKind schedule = ScheduleKind::kCosine;
  OptimizerOptions optimizer;
  int64_t eval_every = 0;        // optimizer steps between evaluations; 0 = at the end only
  int64_t checkpoint_every = 0;  // 0 = eval_every, or once per epoch when that is 0 too
  uint64_t seed = 1234;
  bool resume = false;
  bool recompute = false;  // per-block activation recomputation (same results)
  // The weights' storage while training (--dtype): F32, or BF16 / F16 with fp32 masters of the
  // trainable elements (Trainer's contract); on the CPU backend 16-bit is the storage twin.
  // Part of the recipe when not F32.
  DType storage = DType::kF32;
  // Why `storage` was chosen, e.g. "auto: cuda, head_dim 64" (the CLI's --dtype rule): stated in
  // the metrics start event and the start line; not part of the recipe. Empty: nothing said.
  std::string storage_reason;
  // The checkpoints' weights (--checkpoint_dtype): F32 (the trained masters and the frozen
  // elements exactly), or the training storage type itself, whose safetensors hold every element
  // rounded to nearest even (what the 16-bit copy holds) and whose directory adds masters.bin,
  // the fp32 masters in compact order, so a resume stays exact. Part of the recipe when not F32.
  DType checkpoint_storage = DType::kF32;
  // Test hook standing in for a kill: stop without a final checkpoint once the run has taken this
  // many optimizer steps in total (0 = off).
  int64_t stop_after_step = 0;
  // Test hook for numerical faults (Trainer::set_fault_hook).
  StepFaultHook fault_hook;
  // Human-readable progress lines (the library itself never prints).
  std::function<void(const std::string&)> log;
  // Called after every optimizer step with (steps done, total steps), for a progress bar.
  std::function<void(int64_t, int64_t)> progress;
  // Data parallelism (docs/DISTRIBUTED.md). `comm` null = one process. Rank r trains on its
  // shard of every global micro-batch (shard_first_chunk), so the global batch is
  // batch * grad_accum * world size; only rank 0 writes metrics and checkpoints. The timeout the
  // communicator has on entry covers start-up, the first step and every collective that waits
  // for rank 0's writes; `dist_step_timeout_s` applies to the other collectives after step 1.
  Communicator* comm = nullptr;
  double dist_step_timeout_s = 60.0;
  bool dist_checksum = false;  // compare a checksum of the weights across ranks per checkpoint
  // Called at the start of every optimizer step with its 1-based number (fault-injection tests).
  std::function<void(int64_t)> on_step_start;
  // Controlled collapse (docs/REPAIR.md): per-(layer, head) weights of the auxiliary
  // attention-sink loss, (L, H); empty = none. Part of the recipe when set.
  std::vector<float> sink_loss_weight;
};

// Data for a run: training chunks with their seeded order and held-out chunks (may be empty).
struct TrainData {
  const ChunkedDataset* train = nullptr;
  std::vector<std::vector<int32_t>> eval_chunks;
};

struct TrainRunResult {
  int64_t steps = 0;               // optimizer steps at the end
  double final_loss = 0.0;         // loss of the last step
  std::optional<double> best_ppl;  // best held-out perplexity seen
  std::filesystem::path final_dir;
};

absl::StatusOr<TrainRunResult> run_training(const TrainRunOptions& options, const TrainData& data,
                                            Backend& backend);

// The micro-batch of `batch` consecutive chunks starting at global chunk index `first` of the
// seeded order (epoch = index / train_size, then epoch_order(epoch)).
MicroBatch chunk_micro_batch(const ChunkedDataset& data, uint64_t first, int64_t batch);

}  // namespace engine
