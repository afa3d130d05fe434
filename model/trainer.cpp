// Trainer: one surgery-aware optimizer step; contract in trainer.h. The run around it (set-up,
// evaluation, checkpoints, resume) is model/training_run.cpp.
#include "model/trainer.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/strings/str_cat.h"
#include "model/bloom_backward.h"
#include "model/device_model.h"
#include "model/numeric_faults.h"

namespace engine {

Trainer::Trainer(BloomModel& model, Backend& backend, const FrozenMask& mask,
                 OptimizerOptions options)
    : model_(model),
      backend_(backend),
      options_(options),
      grads_(mask.words(), mask.elements(), backend) {
  if (options_.kind == OptimizerKind::kAdamW) {
    m_.assign(static_cast<size_t>(grads_.size()), 0.0f);
    v_.assign(static_cast<size_t>(grads_.size()), 0.0f);
  }
  init_ = grads_.status();
  if (!init_.ok()) return;
  loss_scale_ = options_.loss_scaling.scale;
  int exponent = 0;
  if (!(std::isfinite(loss_scale_) && loss_scale_ > 0.0 &&
        std::frexp(loss_scale_, &exponent) == 0.5) ||
      options_.loss_scaling.growth_interval < 1) {
    init_ = absl::InvalidArgumentError(absl::StrCat(
        "train: loss scale ", loss_scale_, " (growth interval ",
        options_.loss_scaling.growth_interval,
        "): the scale must be a positive power of two and the interval at least 1"));
    return;
  }
  const bool resident = model_.device != nullptr && model_.device->backend == &backend_;
  storage_ = resident ? model_.device->storage : DType::kF32;
  if (on_device() && !resident) {
    init_ = absl::FailedPreconditionError(absl::StrCat(
        "train: the model's weights are not resident on ", std::string(backend_.name())));
    return;
  }
  if (on_device() && options_.kind == OptimizerKind::kAdamW) {
    if (init_ = m_device_.resize(backend_, grads_.size()); !init_.ok()) return;
    if (init_ = v_device_.resize(backend_, grads_.size()); !init_.ok()) return;
  }
  if (storage_ != DType::kF32) init_ = init_masters();
}

// The masters start as the host arena's fp32 values of the trainable elements (the loaded or
// surgically prepared weights, or a resumed checkpoint's trained values), gathered in compact
// order through the run table, in bounded chunks.
absl::Status Trainer::init_masters() {
  if (absl::Status s = masters_.resize(backend_, grads_.size()); !s.ok()) return s;
  constexpr int64_t kChunk = int64_t{1} << 20;
  const auto* host = reinterpret_cast<const float*>(model_.arena.base());
  std::vector<int64_t> index(static_cast<size_t>(std::min(kChunk, grads_.size())));
  std::vector<float> values(index.size());
  for (int64_t first = 0; first < grads_.size(); first += kChunk) {
    const int64_t count = std::min(kChunk, grads_.size() - first);
    grads_.arena_indices(first, count, index.data());
    for (int64_t i = 0; i < count; ++i) values[i] = host[index[i]];
    if (absl::Status s = backend_.copy_to_device(masters_.data() + first, values.data(),
                                                 static_cast<size_t>(count) * sizeof(float));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status Trainer::download_weights() {
  if (!init_.ok()) return init_;
  if (storage_ != DType::kF32) {
    // The trained values are the masters: scattered into the host arena at their offsets. Frozen
    // host elements are never written, so they keep the loaded (or prepared) fp32 bits.
    constexpr int64_t kChunk = int64_t{1} << 20;
    auto* host = reinterpret_cast<float*>(model_.arena.base());
    std::vector<int64_t> index(static_cast<size_t>(std::min(kChunk, grads_.size())));
    std::vector<float> values(index.size());
    for (int64_t first = 0; first < grads_.size(); first += kChunk) {
      const int64_t count = std::min(kChunk, grads_.size() - first);
      if (absl::Status s = backend_.copy_to_host(values.data(), masters_.data() + first,
                                                 static_cast<size_t>(count) * sizeof(float));
          !s.ok()) {
        return s;
      }
      grads_.arena_indices(first, count, index.data());
      for (int64_t i = 0; i < count; ++i) host[index[i]] = values[i];
    }
    return absl::OkStatus();
  }
  if (!on_device()) return absl::OkStatus();
  return backend_.copy_to_host(model_.arena.base(), model_.device->arena.data(),
                               model_.arena.size_bytes());
}

absl::Status Trainer::download_masters(std::vector<float>& out) const {
  if (!init_.ok()) return init_;
  if (storage_ == DType::kF32) {
    return absl::FailedPreconditionError("train: f32 weights have no master copy");
  }
  return masters_.download(out);
}

absl::Status Trainer::download_optimizer_state() {
  if (!on_device() || options_.kind != OptimizerKind::kAdamW) return absl::OkStatus();
  if (!init_.ok()) return init_;
  if (absl::Status s = m_device_.download(m_); !s.ok()) return s;
  return v_device_.download(v_);
}

absl::Status Trainer::upload_optimizer_state() {
  if (!on_device() || options_.kind != OptimizerKind::kAdamW) return absl::OkStatus();
  if (!init_.ok()) return init_;
  if (absl::Status s = backend_.copy_to_device(m_device_.data(), m_.data(), m_device_.bytes());
      !s.ok()) {
    return s;
  }
  return backend_.copy_to_device(v_device_.data(), v_.data(), v_device_.bytes());
}

absl::Status Trainer::all_reduce_gradient(const std::string& what) {
  float* g = grads_.data();
  const int64_t n = grads_.size();
  if (!on_device()) return comm_->all_reduce_average(g, n, what);
  // On a device: in GPU memory where the transport reads it (NCCL), else through the host.
  if (comm_->reduces_device_memory()) return comm_->all_reduce_average_on_device(g, n, what);
  staging_.resize(static_cast<size_t>(n));
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (absl::Status s = backend_.copy_to_host(staging_.data(), g, bytes); !s.ok()) return s;
  if (absl::Status s = comm_->all_reduce_average(staging_.data(), n, what); !s.ok()) return s;
  return backend_.copy_to_device(g, staging_.data(), bytes);
}

absl::StatusOr<StepResult> Trainer::step(std::span<const MicroBatch> micro_batches, double lr) {
  if (micro_batches.empty()) return absl::InvalidArgumentError("train step: no micro-batches");
  StepResult r;
  r.step = step_ + 1;
  r.lr = lr;
  if (!init_.ok()) return init_;
  if (fault_hook_.before_forward) fault_hook_.before_forward(r.step, model_);
  if (absl::Status s = grads_.zero(); !s.ok()) return s;
  const double scale = 1.0 / static_cast<double>(micro_batches.size());
  // Loss scaling: the backward's gradients carry the factor, exactly (a power of two).
  const double loss_scale = loss_scale_;
  r.loss_scale = loss_scale;
  double loss_sum = 0.0, sink_sum = 0.0;
  SinkLoss sink;
  sink.weight = sink_weight_;
  for (const MicroBatch& mb : micro_batches) {
    ForwardInputs in;
    in.batch = mb.batch, in.seq = mb.seq;
    in.ids = mb.ids.data();
    in.mask = mb.mask.empty() ? nullptr : mb.mask.data();
    in.targets = mb.targets.data();
    absl::StatusOr<ForwardResult> f =
        bloom_forward_backward(model_, backend_, in, grads_, scale * loss_scale, recompute_,
                               sink.weight.empty() ? nullptr : &sink);
    if (!f.ok()) {
      return absl::Status(f.status().code(),
                          absl::StrCat("step ", r.step, ": ", std::string(f.status().message())));
    }
    loss_sum += f->loss;
    sink_sum += sink.value;
    r.tokens += f->scored;
  }
  r.sink_loss = sink_sum * scale;
  if (fault_hook_.after_backward) fault_hook_.after_backward(r.step, grads_);
  r.loss = loss_sum * scale;
  if (comm_ != nullptr && comm_->world_size() > 1) {
    // Every rank's micro-batches hold the same number of scored tokens (full chunks), so the
    // mean of the rank means is the mean over the global batch.
    const std::string at = absl::StrCat(" at step ", r.step);
    double sums[2] = {r.loss, static_cast<double>(r.tokens)};
    if (absl::Status s = comm_->all_reduce_sum(sums, 2, absl::StrCat("loss all-reduce", at));
        !s.ok()) {
      return s;
    }
    r.loss = sums[0] / comm_->world_size();
    r.tokens = static_cast<int64_t>(sums[1]);
    if (absl::Status s = all_reduce_gradient(absl::StrCat("gradient all-reduce", at)); !s.ok()) {
      return s;
    }
  }
  absl::StatusOr<double> norm = backend_.gradient_norm(grads_.data(), grads_.size());
  if (!norm.ok()) return norm.status();
  r.grad_norm = *norm / loss_scale;
  r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (comm_ != nullptr && comm_->world_size() > 1) {
    absl::StatusOr<bool> all =
        agree_all(*comm_, r.finite, absl::StrCat("finite-step agreement at step ", r.step));
    if (!all.ok()) return all.status();
    r.finite = *all;
  }
  if (!r.finite && options_.loss_scaling.dynamic && std::isfinite(r.loss)) {
    // Dynamic loss scaling: an overflow of the scaled gradient, not a fault. Nothing is
    // updated; the next step runs at half the scale.
    r.overflow = true;
    r.nonfinite = absl::StrCat("gradient overflow at loss scale ", loss_scale,
                               ": step skipped, scale halved");
    loss_scale_ = loss_scale / 2.0;
    clean_steps_ = 0;
    ++step_;
    return r;
  }
  if (!r.finite) {
    // On a device the scans read host copies (the weights are refreshed on the host).
    std::optional<CompactGradients> host_grads;
    if (on_device() || storage_ != DType::kF32) {
      if (absl::Status s = download_weights(); !s.ok()) return s;
    }
    if (on_device()) {
      host_grads.emplace(grads_.words(), grads_.elements());
      if (absl::Status s = backend_.copy_to_host(host_grads->data(), grads_.data(),
                                                 static_cast<size_t>(grads_.size()) * sizeof(float));
          !s.ok()) {
        return s;
      }
    }
    const NonFiniteCause cause = describe_nonfinite_step(
        model_.arena, host_grads ? *host_grads : grads_, r.loss, r.grad_norm);
    if (!options_.skip_nonfinite || cause.weight_at_fault) {
      return absl::InternalError(absl::StrCat("step ", r.step, ": ", cause.message));
    }
    r.nonfinite = cause.message;
    ++step_;
    return r;
  }
  // torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1.
  constexpr double kClipEpsilon = 1e-6;
  // The update unscales the gradient (exact: 1 / a power of two) with the clip factor.
  float grad_scale = static_cast<float>(1.0 / loss_scale);
  if (options_.clip > 0.0 && r.grad_norm > options_.clip) {
    grad_scale =
        static_cast<float>(options_.clip / (r.grad_norm + kClipEpsilon) * (1.0 / loss_scale));
  }
  // The update is elementwise, so it runs over the compact buffer in chunks, each with its
  // slice of arena offsets (CompactGradients keeps runs, not one offset per element).
  constexpr int64_t kUpdateChunk = int64_t{1} << 20;
  std::vector<int64_t> index(static_cast<size_t>(std::min(kUpdateChunk, grads_.size())));
  const bool one_chunk = grads_.size() <= kUpdateChunk;
  for (int64_t first = 0; first < grads_.size(); first += kUpdateChunk) {
    const int64_t count = std::min(kUpdateChunk, grads_.size() - first);
    MaskedAdamWParams p;
    p.n = count;
    p.storage = storage_;
    if (on_device()) {
      // The chunk's offsets on the device: uploaded once when one chunk holds them all.
      if (!(one_chunk && index_cached_)) {
        grads_.arena_indices(first, count, index.data());
        if (index_device_.size() < count) {
          if (absl::Status s = index_device_.resize(backend_, count); !s.ok()) return s;
        }
        if (absl::Status s = backend_.copy_to_device(index_device_.data(), index.data(),
                                                     static_cast<size_t>(count) * sizeof(int64_t));
            !s.ok()) {
          return s;
        }
        index_cached_ = one_chunk;
      }
      p.index = index_device_.data();
      p.params = model_.device->arena.data();
    } else {
      grads_.arena_indices(first, count, index.data());
      p.index = index.data();
      // The CPU's 16-bit twin updates its resident 16-bit arena; f32 the host arena itself.
      p.params = storage_ != DType::kF32 ? static_cast<void*>(model_.device->arena.data())
                                         : static_cast<void*>(model_.arena.base());
    }
    if (storage_ != DType::kF32) p.master = masters_.data() + first;
    p.grad = grads_.data() + first;
    p.lr = static_cast<float>(lr);
    p.grad_scale = grad_scale;
    p.step = step_ + 1;
    absl::Status s;
    if (options_.kind == OptimizerKind::kAdamW) {
      float* m = on_device() ? m_device_.data() : m_.data();
      float* v = on_device() ? v_device_.data() : v_.data();
      p.m = m + first, p.v = v + first;
      p.beta1 = static_cast<float>(options_.beta1), p.beta2 = static_cast<float>(options_.beta2);
      p.eps = static_cast<float>(options_.eps);
      p.weight_decay = static_cast<float>(options_.weight_decay);
      s = backend_.masked_adamw(p);
    } else {
      s = backend_.masked_sgd(p);
    }
    if (!s.ok()) return s;
  }
  ++step_;
  if (options_.loss_scaling.dynamic && ++clean_steps_ >= options_.loss_scaling.growth_interval) {
    loss_scale_ = loss_scale * 2.0;
    clean_steps_ = 0;
  }
  return r;
}

MicroBatch chunk_micro_batch(const ChunkedDataset& data, uint64_t first, int64_t batch) {
  MicroBatch mb;
  mb.batch = batch, mb.seq = data.seq_len();
  mb.ids.reserve(static_cast<size_t>(batch * data.seq_len()));
  const uint64_t n = data.train_size();
  uint64_t cached_epoch = UINT64_MAX;
  std::vector<uint32_t> order;
  for (int64_t b = 0; b < batch; ++b) {
    const uint64_t g = first + static_cast<uint64_t>(b);
    const uint64_t epoch = g / n;
    if (epoch != cached_epoch) order = data.epoch_order(epoch), cached_epoch = epoch;
    std::span<const uint32_t> chunk = data.train_chunk(order[g % n]);
    mb.ids.insert(mb.ids.end(), chunk.begin(), chunk.end());
  }
  mb.targets = next_token_targets(mb.ids.data(), nullptr, mb.batch, mb.seq);
  return mb;
}

}  // namespace engine
