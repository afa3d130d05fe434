// BLOOM forward pass; contract in bloom_forward.h.
#include "model/bloom_forward.h"

#include <algorithm>
#include <cmath>
#include <span>
#include <string>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/bloom_layout.h"
#include "model/device_model.h"

namespace engine {
namespace {

// The tensor's address in an arena copy at `base` holding `storage` elements (the host arena or
// a backend's copy of it: same element offsets).
absl::StatusOr<const void*> tensor(const BloomModel& model, const std::byte* base, DType storage,
                                   const std::string& name) {
  absl::StatusOr<TensorView> v = model.arena.view(name);
  if (!v.ok()) return v.status();
  if (v->dtype != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", name, " is not f32"));
  }
  return base + v->arena_offset * static_cast<int64_t>(dtype_size(storage));
}

// y = x W^T + bias (+ residual): W is (out, in) as torch.nn.Linear stores it. The bias and the
// residual are the GEMM's epilogue, so the backend adds them where the product is formed.
absl::Status linear(Backend& backend, DType storage, const void* x, int64_t rows, int64_t in,
                    const void* w, const void* bias, int64_t out, void* y,
                    const void* residual = nullptr) {
  GemmParams g;
  g.input_type = g.output_type = storage;
  g.transpose_b = true;
  g.m = rows, g.n = out, g.k = in;
  g.a = x, g.lda = in;
  g.b = w, g.ldb = in;
  g.c = y, g.ldc = out;
  g.bias = bias;
  g.residual = residual, g.ldr = out;
  return backend.gemm(g);
}

absl::Status layernorm(Backend& backend, DType storage, const void* x, int64_t rows,
                       int64_t width, float eps, const void* weight, const void* bias, void* y,
                       float* mean, float* rstd) {
  LayerNormParams p;
  p.storage = storage;
  p.rows = rows, p.width = width, p.eps = eps;
  p.x = x, p.weight = weight, p.bias = bias, p.y = y, p.mean = mean, p.rstd = rstd;
  return backend.layernorm_forward(p);
}

// Activations in `storage`, the LayerNorm moments and the lse in F32.
absl::Status size_block(Backend& backend, DType storage, BlockActivations& a, int64_t rows,
                        int64_t batch, int64_t seq, const BloomConfig& c, bool ln2 = true,
                        bool gelu = true) {
  const int64_t C = c.hidden_size;
  const DType f32 = DType::kF32;
  const std::tuple<ActivationBuffer*, int64_t, DType> sizes[] = {
      {&a.x, rows * C, storage},           {&a.ln1, rows * C, storage},
      {&a.ln1_mean, rows, f32},            {&a.ln1_rstd, rows, f32},
      {&a.qkv, rows * 3 * C, storage},     {&a.qkv_pre, c.clip_qkv > 0.0 ? rows * 3 * C : 0, storage},
      {&a.attn, rows * C, storage},
      {&a.lse, batch * c.n_head * seq, f32}, {&a.x_mid, rows * C, storage},
      {&a.ln2, ln2 ? rows * C : 0, storage}, {&a.ln2_mean, rows, f32},
      {&a.ln2_rstd, rows, f32},            {&a.fc1, rows * 4 * C, storage},
      {&a.gelu, gelu ? rows * 4 * C : 0, storage}};
  for (const auto& [buffer, n, type] : sizes) {
    if (n == 0) continue;
    if (absl::Status s = buffer->resize(backend, n, type); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// A host array's copy in the backend's memory (empty for an empty span).
template <typename T>
absl::Status upload(Backend& backend, DeviceArray<T>& to, std::span<const T> from) {
  return to.upload(backend, from);
}

// Where one block reads and writes; every tensor holds `storage` elements.
struct BlockCall {
  DType storage = DType::kF32;
  int64_t batch = 0;
  int64_t rows_per_batch = 0;   // new positions per batch row
  int64_t past = 0;             // cached positions before them (batch 1 only)
  const int32_t* positions = nullptr;  // (B, past + new) or null = derive from mask
  const uint8_t* mask = nullptr;       // (B, past + new) or null
  void* qkv_store = nullptr;    // (B, past + new, 3C): rows [past, past + new) are written
  const void* x_in = nullptr;   // (rows, C)
  void* x_out = nullptr;        // (rows, C), may alias x_in
  HeadStatsAccumulator stats;
  // Where the ln2 and GELU outputs go when the block's own buffers are not kept (else null).
  void* ln2_out = nullptr;
  void* gelu_out = nullptr;
  // Nothing reads the block's output (the last block when only statistics are wanted): stop
  // after the attention, whose call produced them.
  bool attention_only = false;
};

absl::Status run_block(Backend& backend, const BloomConfig& c, const BloomBlockWeights& w,
                       const float* slopes, const BlockCall& call, BlockActivations& a) {
  const int64_t C = c.hidden_size, H = c.n_head, D = c.head_dim();
  const int64_t rows = call.batch * call.rows_per_batch;
  const float eps = static_cast<float>(c.layer_norm_epsilon);
  const DType st = call.storage;
  void* qkv = static_cast<std::byte*>(call.qkv_store) +
              call.past * 3 * C * static_cast<int64_t>(dtype_size(st));
  void* ln2 = call.ln2_out != nullptr ? call.ln2_out : a.ln2.data();
  void* gelu = call.gelu_out != nullptr ? call.gelu_out : a.gelu.data();
  if (absl::Status s = layernorm(backend, st, call.x_in, rows, C, eps, w.ln1_weight, w.ln1_bias,
                                 a.ln1.data(), a.ln1_mean.f32(), a.ln1_rstd.f32());
      !s.ok()) {
    return s;
  }
  const bool clip = c.clip_qkv > 0.0;
  if (clip && (st != DType::kF32 || backend.kind() != DeviceKind::kCpu)) {
    return absl::UnimplementedError("forward: attn_config.clip_qkv needs f32 on the CPU");
  }
  // With clip_qkv the projection lands in qkv_pre (kept for the clamp's backward) and its
  // clamped copy in qkv.
  if (absl::Status s = linear(backend, st, a.ln1.data(), rows, C, w.qkv_weight, w.qkv_bias,
                              3 * C, clip ? a.qkv_pre.data() : qkv);
      !s.ok()) {
    return s;
  }
  if (clip) {
    // MPT's clip_qkv: the fused projection clamped to [-clip, clip] (CPU, f32 storage only).
    const float bound = static_cast<float>(c.clip_qkv);
    const float* pre = a.qkv_pre.f32();
    float* v = static_cast<float*>(qkv);
    for (int64_t i = 0; i < rows * 3 * C; ++i) v[i] = std::clamp(pre[i], -bound, bound);
  }
  AlibiAttentionParams ap;
  ap.storage = st;
  ap.batch = call.batch, ap.seq = call.past + call.rows_per_batch, ap.heads = H, ap.head_dim = D;
  ap.query_begin = call.past;
  ap.scale = attention_scale(c);
  ap.qkv = call.qkv_store;
  ap.slopes = slopes;
  ap.bf16_bias_divisor = attention_bias_divisor(c);
  ap.positions = call.positions;
  ap.mask = call.mask;
  ap.out = a.attn.data();
  // The saved lse is only meaningful (and sized) for full-sequence calls.
  ap.lse = call.past == 0 ? a.lse.f32() : nullptr;
  ap.stats = call.stats;
  if (absl::Status s = backend.alibi_attention_forward(ap); !s.ok()) return s;
  if (call.attention_only) return absl::OkStatus();
  if (absl::Status s = linear(backend, st, a.attn.data(), rows, C, w.dense_weight, w.dense_bias,
                              C, a.x_mid.data(), call.x_in);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = layernorm(backend, st, a.x_mid.data(), rows, C, eps, w.ln2_weight,
                                 w.ln2_bias, ln2, a.ln2_mean.f32(), a.ln2_rstd.f32());
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          linear(backend, st, ln2, rows, C, w.fc1_weight, w.fc1_bias, 4 * C, a.fc1.data());
      !s.ok()) {
    return s;
  }
  GeluParams gp;
  gp.storage = st;
  gp.exact = family_traits(c).gelu_exact;
  gp.n = rows * 4 * C;
  gp.x = a.fc1.data(), gp.y = gelu;
  if (absl::Status s = backend.gelu_forward(gp); !s.ok()) return s;
  return linear(backend, st, gelu, rows, 4 * C, w.fc2_weight, w.fc2_bias, C, call.x_out,
                a.x_mid.data());
}

int64_t bytes_of(const ActivationBuffer& v) { return static_cast<int64_t>(v.bytes()); }
template <typename T>
int64_t bytes_of(const DeviceArray<T>& v) { return static_cast<int64_t>(v.bytes()); }

absl::Status validate(const BloomConfig& c, const ForwardInputs& in) {
  if (in.batch <= 0 || in.seq <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("forward: empty input (batch ", in.batch, ", seq ", in.seq, ")"));
  }
  if (in.ids == nullptr) return absl::InvalidArgumentError("forward: input ids are missing");
  for (int64_t b = 0; b < in.batch; ++b) {
    for (int64_t t = 0; t < in.seq; ++t) {
      const int64_t k = b * in.seq + t;
      if (in.ids[k] < 0 || in.ids[k] >= c.vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward: input id ", in.ids[k], " at batch row ", b, " position ", t,
                         " is outside the vocabulary [0, ", c.vocab_size, ")"));
      }
      if (in.mask != nullptr && in.mask[k] > 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward: attention mask value ", static_cast<int>(in.mask[k]),
                         " at batch row ", b, " position ", t, " is not 0 or 1"));
      }
      if (in.targets != nullptr && (in.targets[k] < -1 || in.targets[k] >= c.vocab_size)) {
        return absl::InvalidArgumentError(
            absl::StrCat("forward: target ", in.targets[k], " at batch row ", b, " position ", t,
                         " is neither -1 nor inside the vocabulary [0, ", c.vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// Every tensor's address in the arena at `base` (the host arena or a backend's copy of it).
absl::StatusOr<BloomWeights> weights_at(const BloomModel& model, const std::byte* base,
                                        DType storage) {
  BloomWeights w;
  w.storage = storage;
  auto get = [&](const std::string& name, const void** dst) -> absl::Status {
    absl::StatusOr<const void*> p = tensor(model, base, storage, name);
    if (!p.ok()) return p.status();
    *dst = *p;
    return absl::OkStatus();
  };
  struct Named {
    std::string name;
    const void** dst;
  };
  using R = ParamRole;
  const BloomConfig& c = model.config;
  w.zeros.assign(static_cast<size_t>(c.hidden_size), 0.0f);
  std::vector<Named> names = {
      {parameter_name(c, R::kEmbedding), &w.embedding},
      {parameter_name(c, R::kEmbLnWeight), &w.emb_ln_weight},
      {parameter_name(c, R::kEmbLnBias), &w.emb_ln_bias},
      {parameter_name(c, R::kLnfWeight), &w.lnf_weight},
      {parameter_name(c, R::kLnfBias), &w.lnf_bias},
  };
  w.blocks.resize(c.n_layer);
  for (int64_t l = 0; l < c.n_layer; ++l) {
    BloomBlockWeights& b = w.blocks[l];
    for (auto [role, dst] : {std::pair{R::kLn1Weight, &b.ln1_weight}, {R::kLn1Bias, &b.ln1_bias},
                             {R::kQkvWeight, &b.qkv_weight}, {R::kQkvBias, &b.qkv_bias},
                             {R::kDenseWeight, &b.dense_weight}, {R::kDenseBias, &b.dense_bias},
                             {R::kLn2Weight, &b.ln2_weight}, {R::kLn2Bias, &b.ln2_bias},
                             {R::kFc1Weight, &b.fc1_weight}, {R::kFc1Bias, &b.fc1_bias},
                             {R::kFc2Weight, &b.fc2_weight}, {R::kFc2Bias, &b.fc2_bias}}) {
      names.push_back({parameter_name(c, role, l), dst});
    }
  }
  const FamilyTraits traits = family_traits(c);
  for (Named& n : names) {
    *n.dst = nullptr;
    if (n.name.empty()) continue;
    if (absl::Status s = get(n.name, n.dst); !s.ok()) return s;
  }
  if (!traits.layernorm_bias) {
    for (BloomBlockWeights& b : w.blocks) b.ln1_bias = b.ln2_bias = w.zeros.data();
    w.lnf_bias = w.zeros.data();
  }
  w.lm_head = w.embedding;
  if (const std::string head = parameter_name(c, R::kLmHead); !head.empty()) {
    if (absl::Status s = get(head, &w.lm_head); !s.ok()) return s;
  }
  return w;
}

}  // namespace

absl::StatusOr<BloomWeights> bloom_weights(const BloomModel& model) {
  if (!model.arena.allocated()) return absl::FailedPreconditionError("the model has no weights");
  return weights_at(model, model.arena.base(), DType::kF32);
}

absl::StatusOr<BloomWeights> bloom_weights(const BloomModel& model, const Backend& backend) {
  if (model.config.family != ModelFamily::kBloom && backend.kind() != DeviceKind::kCpu) {
    return absl::UnimplementedError(absl::StrCat(
        "the ", family_name(model.config.family), " family runs on the CPU only, not on ",
        std::string(backend.name())));
  }
  absl::StatusOr<const std::byte*> base = arena_on(model, backend);
  if (!base.ok()) return base.status();
  return weights_at(model, *base, storage_on(model, backend));
}

absl::Status check_finite_parameters(const BloomModel& model) {
  if (model.arena.dtype() != DType::kF32) {
    return absl::InvalidArgumentError("check_finite_parameters: arena is not f32");
  }
  for (const ParameterInfo& info : model.arena.parameters()) {
    const float* data = model.arena.view(info).as<const float>();
    for (int64_t i = 0; i < info.numel; ++i) {
      if (!std::isfinite(data[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor ", info.name, ": element ", i, " is ", std::isnan(data[i]) ? "NaN" : "Inf"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<int32_t> next_token_targets(const int32_t* ids, const uint8_t* mask, int64_t batch,
                                        int64_t seq) {
  std::vector<int32_t> targets(batch * seq, -1);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t + 1 < seq; ++t) {
      const int64_t k = b * seq + t;
      const bool real = mask == nullptr || (mask[k] != 0 && mask[k + 1] != 0);
      if (real) targets[k] = ids[k + 1];
    }
  }
  return targets;
}

int64_t activation_bytes(const BlockActivations& a) {
  return bytes_of(a.x) + bytes_of(a.ln1) + bytes_of(a.ln1_mean) + bytes_of(a.ln1_rstd) +
         bytes_of(a.qkv) + bytes_of(a.qkv_pre) + bytes_of(a.attn) + bytes_of(a.lse) + bytes_of(a.x_mid) +
         bytes_of(a.ln2) + bytes_of(a.ln2_mean) + bytes_of(a.ln2_rstd) + bytes_of(a.fc1) +
         bytes_of(a.gelu);
}

int64_t activation_bytes(const BloomActivations& a) {
  int64_t total = bytes_of(a.positions) + bytes_of(a.embedded) + bytes_of(a.emb_ln_mean) +
                  bytes_of(a.emb_ln_rstd) + bytes_of(a.block_inputs) + bytes_of(a.final_x) +
                  bytes_of(a.lnf) + bytes_of(a.lnf_mean) + bytes_of(a.lnf_rstd) +
                  activation_bytes(a.scratch);
  for (const BlockActivations& b : a.blocks) total += activation_bytes(b);
  return total;
}

absl::StatusOr<ForwardResult> bloom_forward(const BloomModel& model, Backend& backend,
                                            const ForwardInputs& in) {
  const BloomConfig& c = model.config;
  if (absl::Status s = validate(c, in); !s.ok()) return s;
  absl::StatusOr<BloomWeights> weights = bloom_weights(model, backend);
  if (!weights.ok()) return weights.status();
  const int64_t B = in.batch, T = in.seq, C = c.hidden_size, H = c.n_head, L = c.n_layer;
  const int64_t rows = B * T;
  const float eps = static_cast<float>(c.layer_norm_epsilon);
  const DType st = weights->storage;

  auto act = std::make_unique<BloomActivations>();
  act->batch = B, act->seq = T;
  std::vector<int32_t> positions(rows);
  for (int64_t b = 0; b < B; ++b) {
    int32_t count = 0;
    for (int64_t t = 0; t < T; ++t) {
      const bool real = in.mask == nullptr || in.mask[b * T + t] != 0;
      count += real ? 1 : 0;
      positions[b * T + t] = real ? count - 1 : 0;
      if (family_traits(c).key_index_positions) positions[b * T + t] = static_cast<int32_t>(t);
    }
  }
  const std::vector<float> slopes = kernel_slopes(c);
  if (absl::Status s = upload<int32_t>(backend, act->positions, positions); !s.ok()) return s;
  if (absl::Status s = upload<float>(backend, act->slopes, slopes); !s.ok()) return s;
  if (absl::Status s = upload<int32_t>(backend, act->ids, {in.ids, static_cast<size_t>(rows)});
      !s.ok()) {
    return s;
  }
  if (in.mask != nullptr) {
    if (absl::Status s = upload<uint8_t>(backend, act->mask, {in.mask, static_cast<size_t>(rows)});
        !s.ok()) {
      return s;
    }
  }
  if (in.targets != nullptr) {
    if (absl::Status s =
            upload<int32_t>(backend, act->targets, {in.targets, static_cast<size_t>(rows)});
        !s.ok()) {
      return s;
    }
  }
  const uint8_t* mask = in.mask != nullptr ? act->mask.data() : nullptr;
  const int32_t* targets = in.targets != nullptr ? act->targets.data() : nullptr;

  if ((!in.keep_ln2.empty() && static_cast<int64_t>(in.keep_ln2.size()) != L) ||
      (!in.keep_gelu.empty() && static_cast<int64_t>(in.keep_gelu.size()) != L)) {
    return absl::InvalidArgumentError("forward: keep_ln2 / keep_gelu need one entry per layer");
  }
  const bool keep = in.keep_activations;
  const int64_t keep_from = keep ? std::clamp<int64_t>(in.keep_from_layer, 0, L) : 0;
  auto kept = [](const std::vector<uint8_t>& v, int64_t l) { return v.empty() || v[l] != 0; };
  bool use_scratch = keep && keep_from > 0;
  act->blocks.resize(keep ? std::max<int64_t>(L, 1) : 1);
  if (!keep || L == 0) {
    if (absl::Status s = size_block(backend, st, act->blocks[0], rows, B, T, c); !s.ok()) return s;
  }
  for (int64_t l = keep_from; keep && l < L; ++l) {
    const bool ln2 = kept(in.keep_ln2, l), gelu = kept(in.keep_gelu, l);
    if (absl::Status s = size_block(backend, st, act->blocks[l], rows, B, T, c, ln2, gelu);
        !s.ok()) {
      return s;
    }
    use_scratch = use_scratch || !ln2 || !gelu;
  }
  if (use_scratch) {
    if (absl::Status s = size_block(backend, st, act->scratch, rows, B, T, c); !s.ok()) return s;
  }
  // The block every layer below keep_from runs in (and the embedding LayerNorm writes into).
  BlockActivations& first = keep && keep_from > 0 ? act->scratch : act->blocks[0];
  for (auto [buffer, n, type] : {std::tuple{&act->embedded, rows * C, st},
                                 std::tuple{&act->emb_ln_mean, rows, DType::kF32},
                                 std::tuple{&act->emb_ln_rstd, rows, DType::kF32}}) {
    if (absl::Status s = buffer->resize(backend, n, type); !s.ok()) return s;
  }

  EmbeddingParams ep;
  ep.storage = st;
  ep.rows = rows, ep.width = C, ep.vocab = c.vocab_size;
  ep.ids = act->ids.data(), ep.table = weights->embedding, ep.out = act->embedded.data();
  if (absl::Status s = backend.embedding_forward(ep); !s.ok()) return s;
  if (weights->emb_ln_weight == nullptr) {
    if (absl::Status s = backend.copy_on_device(first.x.data(), act->embedded.data(),
                                                act->embedded.bytes());
        !s.ok()) {
      return s;
    }
  } else if (absl::Status s = layernorm(backend, st, act->embedded.data(), rows, C, eps,
                                        weights->emb_ln_weight, weights->emb_ln_bias,
                                        first.x.data(), act->emb_ln_mean.f32(),
                                        act->emb_ln_rstd.f32());
             !s.ok()) {
    return s;
  }

  ForwardResult result;
  HeadStats& hs = result.stats;
  // The statistics' running sums stay in the backend's memory for the whole call and come back
  // to the host once, at the end.
  DeviceArray<double> bos_sum, entropy_sum, local_sum;
  DeviceArray<int64_t> stat_rows;
  if (in.want_stats) {
    hs.n_layer = L, hs.batch = B, hs.n_head = H;
    for (DeviceArray<double>* sum : {&bos_sum, &entropy_sum, &local_sum}) {
      if (absl::Status s = sum->resize(backend, L * B * H); !s.ok()) return s;
    }
    if (absl::Status s = stat_rows.resize(backend, B); !s.ok()) return s;
  }
  // Only statistics wanted (no loss, no logits, no activations handed back): nothing reads the
  // last block's MLP output or ln_f, so neither runs (a twenty-fourth of the MLP work of a
  // bloom-560m diagnosis).
  const bool output_needed = in.targets != nullptr || in.want_logits || in.keep_activations ||
                             in.keep_block_inputs;
  if (output_needed) {
    if (absl::Status s = act->final_x.resize(backend, rows * C, st); !s.ok()) return s;
  }
  const bool keep_inputs = in.keep_block_inputs && !in.keep_activations;
  if (keep_inputs) {
    if (absl::Status s = act->block_inputs.resize(backend, L * rows * C, st); !s.ok()) return s;
  }
  for (int64_t l = 0; l < L; ++l) {
    BlockActivations& a = !keep ? act->blocks[0] : (l < keep_from ? act->scratch : act->blocks[l]);
    if (keep_inputs) {
      if (absl::Status s =
              backend.copy_on_device(act->block_inputs.at(l * rows * C), a.x.data(), a.x.bytes());
          !s.ok()) {
        return s;
      }
    }
    BlockCall call;
    call.storage = st;
    call.batch = B, call.rows_per_batch = T, call.past = 0;
    call.positions = act->positions.data();
    call.mask = mask;
    call.qkv_store = a.qkv.data();
    call.x_in = a.x.data();
    const bool last = l + 1 == L;
    call.attention_only = last && !output_needed;
    // Kept: the next block's input buffer; shared: the block's own input, which is dead once
    // the attention residual has been formed.
    call.x_out = last                            ? act->final_x.data()
                 : !keep || l + 1 < keep_from ? a.x.data()
                                              : act->blocks[l + 1].x.data();
    if (keep && l >= keep_from) {
      if (!kept(in.keep_ln2, l)) call.ln2_out = act->scratch.ln2.data();
      if (!kept(in.keep_gelu, l)) call.gelu_out = act->scratch.gelu.data();
    }
    if (in.want_stats) {
      call.stats.bos_mass_sum = bos_sum.data() + l * B * H;
      call.stats.entropy_sum = entropy_sum.data() + l * B * H;
      call.stats.local_mass_sum = local_sum.data() + l * B * H;
      call.stats.rows = l == 0 ? stat_rows.data() : nullptr;
    }
    if (absl::Status s = run_block(backend, c, weights->blocks[l], act->slopes.data(), call, a);
        !s.ok()) {
      return s;
    }
  }
  if (L == 0 && output_needed) {
    if (absl::Status s = backend.copy_on_device(act->final_x.data(), first.x.data(),
                                                first.x.bytes());
        !s.ok()) {
      return s;
    }
  }
  if (in.want_stats) {
    for (auto [from, to] : {std::pair{&bos_sum, &hs.bos_mass}, std::pair{&entropy_sum, &hs.entropy},
                            std::pair{&local_sum, &hs.local_mass}}) {
      if (absl::Status s = from->download(*to); !s.ok()) return s;
    }
    if (absl::Status s = stat_rows.download(hs.rows); !s.ok()) return s;
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t b = 0; b < B; ++b) {
        const double n = static_cast<double>(std::max<int64_t>(hs.rows[b], 1));
        for (int64_t h = 0; h < H; ++h) {
          const int64_t k = (l * B + b) * H + h;
          hs.bos_mass[k] /= n;
          hs.entropy[k] /= n;
          hs.local_mass[k] /= n;
        }
      }
    }
  }

  if (!output_needed) return result;
  for (auto [buffer, n, type] : {std::tuple{&act->lnf, rows * C, st},
                                 std::tuple{&act->lnf_mean, rows, DType::kF32},
                                 std::tuple{&act->lnf_rstd, rows, DType::kF32}}) {
    if (absl::Status s = buffer->resize(backend, n, type); !s.ok()) return s;
  }
  if (absl::Status s = layernorm(backend, st, act->final_x.data(), rows, C, eps,
                                 weights->lnf_weight, weights->lnf_bias, act->lnf.data(),
                                 act->lnf_mean.f32(), act->lnf_rstd.f32());
      !s.ok()) {
    return s;
  }
  if (in.targets != nullptr || in.want_logits) {
    // The CPU backend writes straight into the result; a device writes into its own memory and
    // the values are copied back once.
    const bool host = backend.kind() == DeviceKind::kCpu;
    DeviceArray<float> row_loss, logits;
    result.row_loss.assign(rows, 0.0f);
    if (in.want_logits) result.logits.resize(rows * c.vocab_size);
    if (!host) {
      if (absl::Status s = row_loss.resize(backend, rows); !s.ok()) return s;
      if (in.want_logits) {
        if (absl::Status s = logits.resize(backend, rows * c.vocab_size); !s.ok()) return s;
      }
    }
    ClassifierParams cp;
    cp.storage = st;
    cp.rows = rows, cp.width = C, cp.vocab = c.vocab_size, cp.vocab_chunk = in.vocab_chunk;
    cp.hidden = act->lnf.data();
    cp.embedding = weights->lm_head;
    cp.targets = targets;
    cp.logits = !in.want_logits ? nullptr : host ? result.logits.data() : logits.data();
    cp.row_loss = host ? result.row_loss.data() : row_loss.data();
    if (in.targets != nullptr && in.dhidden != nullptr) {
      cp.dhidden = in.dhidden;
      cp.loss_scale = in.dhidden_scale;
    }
    if (absl::Status s = backend.classifier_cross_entropy(cp); !s.ok()) return s;
    if (!host) {
      if (absl::Status s = row_loss.download(result.row_loss); !s.ok()) return s;
      if (in.want_logits) {
        if (absl::Status s = logits.download(result.logits); !s.ok()) return s;
      }
    }
    if (in.targets != nullptr) {
      double sum = 0.0;
      for (int64_t r = 0; r < rows; ++r) {
        if (in.targets[r] >= 0) {
          sum += result.row_loss[r];
          ++result.scored;
        }
      }
      result.loss = result.scored > 0 ? sum / static_cast<double>(result.scored) : 0.0;
    }
  }
  if (in.keep_activations || in.keep_block_inputs) result.activations = std::move(act);
  return result;
}

absl::Status bloom_block_forward(const BloomConfig& config, const BloomBlockWeights& weights,
                                 DType storage, Backend& backend, int64_t batch, int64_t seq,
                                 const float* slopes, const int32_t* positions,
                                 const uint8_t* mask, const void* x_in, void* x_out,
                                 BlockActivations& a) {
  const int64_t rows = batch * seq;
  if (absl::Status s = size_block(backend, storage, a, rows, batch, seq, config); !s.ok()) {
    return s;
  }
  BlockCall call;
  call.storage = storage;
  call.batch = batch, call.rows_per_batch = seq, call.past = 0;
  call.positions = positions;
  call.mask = mask;
  call.qkv_store = a.qkv.data();
  call.x_in = x_in;
  call.x_out = x_out;
  return run_block(backend, config, weights, slopes, call, a);
}

KvCache::KvCache(const BloomConfig& config, int64_t capacity)
    : layers_(config.n_layer), capacity_(capacity), row_width_(3 * config.hidden_size) {}

absl::StatusOr<std::vector<float>> bloom_decode_step(const BloomModel& model, Backend& backend,
                                                     KvCache& cache, const int32_t* ids,
                                                     int64_t count) {
  const BloomConfig& c = model.config;
  if (count <= 0) return absl::InvalidArgumentError("decode: no new tokens");
  if (cache.length_ + count > cache.capacity_) {
    return absl::OutOfRangeError(absl::StrCat("decode: ", cache.length_, " cached + ", count,
                                              " new tokens exceed the cache capacity ",
                                              cache.capacity_));
  }
  if (cache.layers_ != c.n_layer || cache.row_width_ != 3 * c.hidden_size) {
    return absl::InvalidArgumentError("decode: the KV cache was made for another model shape");
  }
  if (cache.qkv_.backend() != nullptr && cache.qkv_.backend() != &backend) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode: the KV cache lives on ", std::string(cache.qkv_.backend()->name()), ", not on ",
        std::string(backend.name())));
  }
  ForwardInputs in;
  in.batch = 1, in.seq = count, in.ids = ids;
  if (absl::Status s = validate(c, in); !s.ok()) return s;
  absl::StatusOr<BloomWeights> weights = bloom_weights(model, backend);
  if (!weights.ok()) return weights.status();
  const DType st = weights->storage;
  if (cache.qkv_.backend() == nullptr) {
    if (absl::Status s = cache.qkv_.resize(
            backend, cache.layers_ * cache.capacity_ * cache.row_width_, st);
        !s.ok()) {
      return s;
    }
  } else if (cache.qkv_.storage() != st) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode: the KV cache holds ", dtype_name(cache.qkv_.storage()), ", the weights ",
        dtype_name(st)));
  }
  const int64_t C = c.hidden_size;
  const float eps = static_cast<float>(c.layer_norm_epsilon);

  BlockActivations a;
  if (absl::Status s = size_block(backend, st, a, count, 1, cache.length_ + count, c); !s.ok()) {
    return s;
  }
  DeviceArray<int32_t> device_ids;
  DeviceArray<float> slopes, logits;
  ActivationBuffer embedded, last;
  if (absl::Status s = upload<int32_t>(backend, device_ids, {ids, static_cast<size_t>(count)});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = upload<float>(backend, slopes, kernel_slopes(c)); !s.ok()) return s;
  if (absl::Status s = embedded.resize(backend, count * C, st); !s.ok()) return s;
  if (absl::Status s = last.resize(backend, C, st); !s.ok()) return s;
  if (absl::Status s = logits.resize(backend, c.vocab_size); !s.ok()) return s;
  EmbeddingParams ep;
  ep.storage = st;
  ep.rows = count, ep.width = C, ep.vocab = c.vocab_size;
  ep.ids = device_ids.data(), ep.table = weights->embedding, ep.out = embedded.data();
  if (absl::Status s = backend.embedding_forward(ep); !s.ok()) return s;
  if (weights->emb_ln_weight == nullptr) {
    if (absl::Status s = backend.copy_on_device(a.x.data(), embedded.data(), embedded.bytes());
        !s.ok()) {
      return s;
    }
  } else if (absl::Status s = layernorm(backend, st, embedded.data(), count, C, eps,
                                        weights->emb_ln_weight, weights->emb_ln_bias, a.x.data(),
                                        nullptr, nullptr);
             !s.ok()) {
    return s;
  }
  for (int64_t l = 0; l < c.n_layer; ++l) {
    BlockCall call;
    call.storage = st;
    call.batch = 1, call.rows_per_batch = count, call.past = cache.length_;
    call.qkv_store = cache.layer(l);
    call.x_in = a.x.data();
    call.x_out = a.x.data();
    if (absl::Status s = run_block(backend, c, weights->blocks[l], slopes.data(), call, a);
        !s.ok()) {
      return s;
    }
  }
  cache.length_ += count;
  if (absl::Status s = layernorm(backend, st, a.x.at((count - 1) * C), 1, C, eps,
                                 weights->lnf_weight, weights->lnf_bias, last.data(), nullptr,
                                 nullptr);
      !s.ok()) {
    return s;
  }
  DeviceArray<float> row_loss;
  if (absl::Status s = row_loss.resize(backend, 1); !s.ok()) return s;
  ClassifierParams cp;
  cp.storage = st;
  cp.rows = 1, cp.width = C, cp.vocab = c.vocab_size;
  cp.hidden = last.data(), cp.embedding = weights->lm_head;
  cp.logits = logits.data(), cp.row_loss = row_loss.data();
  if (absl::Status s = backend.classifier_cross_entropy(cp); !s.ok()) return s;
  std::vector<float> host_logits;
  if (absl::Status s = logits.download(host_logits); !s.ok()) return s;
  return host_logits;
}

}  // namespace engine
