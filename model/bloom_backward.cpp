// BLOOM forward + tape backward; contract in bloom_backward.h.
#include "model/bloom_backward.h"

#include <cmath>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/device_array.h"
#include "model/bloom_layout.h"
#include "model/device_model.h"

namespace engine {
namespace {

// `base`: the arena as the backend reads it (arena_on), holding `storage` elements.
absl::StatusOr<TapeParameter> parameter(const BloomModel& model, const std::byte* base,
                                        DType storage, const std::string& name) {
  absl::StatusOr<TensorView> v = model.arena.view(name);
  if (!v.ok()) return v.status();
  TapeParameter p;
  p.data = base + v->arena_offset * static_cast<int64_t>(dtype_size(storage));
  p.arena_offset = v->arena_offset;
  p.rows = v->rank() == 2 ? v->shape[0] : 1;
  p.cols = v->shape.back();
  return p;
}

struct BlockParams {
  TapeParameter ln1_w, ln1_b, qkv_w, qkv_b, dense_w, dense_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w,
      fc2_b;
};

struct GraphParams {
  TapeParameter embedding, emb_ln_w, emb_ln_b, lnf_w, lnf_b;
  TapeParameter lm_head;  // the classifier's weights: the embedding when tied
  std::vector<BlockParams> blocks;
  bool embedding_layernorm = true;
  std::vector<float> zeros;  // (C): what absent LayerNorm biases point at
};

absl::StatusOr<GraphParams> graph_params(const BloomModel& model, const Backend& backend) {
  absl::StatusOr<const std::byte*> arena = arena_on(model, backend);
  if (!arena.ok()) return arena.status();
  const std::byte* base = *arena;
  const DType storage = storage_on(model, backend);
  absl::Status missing = absl::OkStatus();
  auto param = [&](const std::string& name) {
    absl::StatusOr<TapeParameter> p = parameter(model, base, storage, name);
    if (!p.ok()) {
      if (missing.ok()) missing = p.status();
      return TapeParameter{};
    }
    return *p;
  };
  using R = ParamRole;
  const BloomConfig& c = model.config;
  GraphParams g;
  g.zeros.assign(static_cast<size_t>(c.hidden_size), 0.0f);
  // An absent tensor (FamilyTraits): an empty parameter (never trainable); an absent LayerNorm
  // bias also points at zeros, which the LayerNorm ops read.
  auto role = [&](R r, int64_t l = -1) {
    const std::string name = parameter_name(c, r, l);
    if (!name.empty()) return param(name);
    TapeParameter absent;
    if (r == R::kLn1Bias || r == R::kLn2Bias || r == R::kLnfBias) absent.data = g.zeros.data();
    return absent;
  };
  g.embedding = role(R::kEmbedding);
  g.emb_ln_w = role(R::kEmbLnWeight);
  g.emb_ln_b = role(R::kEmbLnBias);
  g.lnf_w = role(R::kLnfWeight);
  g.lnf_b = role(R::kLnfBias);
  g.lm_head = c.tie_word_embeddings ? g.embedding : role(R::kLmHead);
  g.embedding_layernorm = family_traits(c).embedding_layernorm;
  for (int64_t l = 0; l < c.n_layer; ++l) {
    g.blocks.push_back(BlockParams{
        role(R::kLn1Weight, l), role(R::kLn1Bias, l), role(R::kQkvWeight, l),
        role(R::kQkvBias, l), role(R::kDenseWeight, l), role(R::kDenseBias, l),
        role(R::kLn2Weight, l), role(R::kLn2Bias, l), role(R::kFc1Weight, l),
        role(R::kFc1Bias, l), role(R::kFc2Weight, l), role(R::kFc2Bias, l)});
  }
  if (!missing.ok()) return missing;
  return g;
}

// What every block entry shares.
struct GraphShape {
  DType storage = DType::kF32;  // of the activations and weights (the tape's)
  int64_t batch = 0, seq = 0, hidden = 0, heads = 0, head_dim = 0;
  float eps = 1e-5f;
  float scale = 0.0f;       // attention_scale (config.h)
  bool gelu_exact = false;  // FamilyTraits::gelu_exact
  float clip_qkv = 0.0f;    // MPT's attn_config.clip_qkv (0 = no clamp)
  const float* slopes = nullptr;   // kernel_slopes (config.h)
  float bf16_bias_divisor = 0.0f;  // attention_bias_divisor (config.h)
  const int32_t* positions = nullptr;
  const uint8_t* mask = nullptr;
};

// Records one block reading value `x` and writing `out` (B * T, C); returns the output value.
// `sink_weight`: the attention's per-head auxiliary sink-loss weights (H), or null.
int record_block(Tape& tape, const GraphShape& s, const BlockParams& p, BlockActivations& a, int x,
                 const void* out, const float* sink_weight = nullptr) {
  const int64_t rows = s.batch * s.seq, C = s.hidden;
  const int ln1 = tape.add_value(a.ln1.data(), rows * C);
  tape.record(TapeLayerNorm{rows, C, s.eps, a.ln1_mean.f32(), a.ln1_rstd.f32(), p.ln1_w, p.ln1_b,
                            x, ln1});
  const int qkv = tape.add_value(a.qkv.data(), rows * 3 * C);
  if (s.clip_qkv > 0.0f) {
    // MPT's clip_qkv: the projection (qkv_pre), then its clamp into the attention's input.
    const int pre = tape.add_value(a.qkv_pre.data(), rows * 3 * C);
    tape.record(TapeLinear{rows, C, 3 * C, p.qkv_w, p.qkv_b, ln1, -1, pre});
    tape.record(TapeClamp{rows * 3 * C, -s.clip_qkv, s.clip_qkv, pre, qkv});
  } else {
    tape.record(TapeLinear{rows, C, 3 * C, p.qkv_w, p.qkv_b, ln1, -1, qkv});
  }
  const int attn = tape.add_value(a.attn.data(), rows * C);
  TapeAttention at;
  AlibiAttentionParams& ap = at.forward;
  ap.storage = s.storage;
  ap.batch = s.batch, ap.seq = s.seq, ap.heads = s.heads, ap.head_dim = s.head_dim;
  ap.scale = s.scale;
  ap.qkv = a.qkv.data();
  ap.slopes = s.slopes;
  ap.bf16_bias_divisor = s.bf16_bias_divisor;
  ap.positions = s.positions;
  ap.mask = s.mask;
  ap.out = a.attn.data();
  ap.lse = a.lse.f32();
  ap.sink_loss_weight = sink_weight;
  at.qkv = qkv, at.out = attn;
  tape.record(at);
  const int x_mid = tape.add_value(a.x_mid.data(), rows * C);
  tape.record(TapeLinear{rows, C, C, p.dense_w, p.dense_b, attn, x, x_mid});
  // Unkept (empty) ln2 / gelu buffers belong to frozen fc1 / fc2 weights: their values are never
  // read (ForwardInputs::keep_ln2), so they enter the tape without data.
  const int ln2 = tape.add_value(a.ln2.empty() ? nullptr : a.ln2.data(), rows * C);
  tape.record(TapeLayerNorm{rows, C, s.eps, a.ln2_mean.f32(), a.ln2_rstd.f32(), p.ln2_w, p.ln2_b,
                            x_mid, ln2});
  const int fc1 = tape.add_value(a.fc1.data(), rows * 4 * C);
  tape.record(TapeLinear{rows, C, 4 * C, p.fc1_w, p.fc1_b, ln2, -1, fc1});
  const int gelu = tape.add_value(a.gelu.empty() ? nullptr : a.gelu.data(), rows * 4 * C);
  tape.record(TapeGelu{rows * 4 * C, fc1, gelu, s.gelu_exact});
  const int x_next = tape.add_value(out, rows * C);
  tape.record(TapeLinear{rows, 4 * C, C, p.fc2_w, p.fc2_b, gelu, x_mid, x_next});
  return x_next;
}

// Records ln_f and the classifier reading value `x`; `dhidden`: the classifier's input gradient
// when the forward pass computed it already (null: the backward computes it).
void record_head(Tape& tape, const GraphShape& s, const GraphParams& p, BloomActivations& act,
                 int x, const ForwardInputs& in, int64_t vocab, const void* dhidden) {
  const int64_t rows = s.batch * s.seq, C = s.hidden;
  const int lnf = tape.add_value(act.lnf.data(), rows * C);
  tape.record(TapeLayerNorm{rows, C, s.eps, act.lnf_mean.f32(), act.lnf_rstd.f32(), p.lnf_w,
                            p.lnf_b, x, lnf});
  TapeClassifier cl;
  cl.forward.storage = s.storage;
  cl.forward.rows = rows, cl.forward.width = C, cl.forward.vocab = vocab;
  cl.forward.vocab_chunk = in.vocab_chunk;
  cl.forward.hidden = act.lnf.data();
  cl.forward.embedding = p.lm_head.data;
  cl.forward.targets = act.targets.data();
  cl.embedding = p.lm_head;
  cl.hidden = lnf;
  cl.dhidden = dhidden;
  tape.record(cl);
}

// Records the embedding and its LayerNorm, writing value `x0`; returns x0's value.
int record_embedding(Tape& tape, const GraphShape& s, const GraphParams& p, BloomActivations& act,
                     const int32_t* ids, int64_t vocab, const void* x0) {
  const int64_t rows = s.batch * s.seq, C = s.hidden;
  if (!p.embedding_layernorm) {
    // The first block reads the embedding itself (x0 holds a copy of it).
    const int x = tape.add_value(x0, rows * C);
    tape.record(TapeEmbedding{rows, C, vocab, ids, p.embedding, x});
    return x;
  }
  const int embedded = tape.add_value(act.embedded.data(), rows * C);
  tape.record(TapeEmbedding{rows, C, vocab, ids, p.embedding, embedded});
  const int x = tape.add_value(x0, rows * C);
  tape.record(TapeLayerNorm{rows, C, s.eps, act.emb_ln_mean.f32(), act.emb_ln_rstd.f32(),
                            p.emb_ln_w, p.emb_ln_b, embedded, x});
  return x;
}

// Controlled collapse, per layer: the kernel weights w_h = W_h * gradient_scale / real rows (the
// kernel sums over rows; the loss is a mean over them), or empty when the layer has none.
struct SinkWeights {
  std::vector<std::vector<float>> kernel;  // (L)(H) or (L)(0)
  std::vector<DeviceArray<float>> device;  // kernel's layers in a device's memory (upload())
  int64_t real_rows = 0;
  // Where the attention backward reads layer l's weights: the device copy when there is one.
  const float* layer(int64_t l) const {
    if (kernel[l].empty()) return nullptr;
    return device.empty() ? kernel[l].data() : device[l].data();
  }
  // On a device the kernel reads the weights from its memory.
  absl::Status upload(Backend& backend) {
    if (backend.kind() == DeviceKind::kCpu) return absl::OkStatus();
    device.resize(kernel.size());
    for (size_t l = 0; l < kernel.size(); ++l) {
      if (kernel[l].empty()) continue;
      if (absl::Status s = device[l].upload(backend, std::span<const float>(kernel[l])); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }
};

SinkWeights sink_weights(const SinkLoss* sink, int64_t L, int64_t H, const ForwardInputs& in,
                         double gradient_scale) {
  SinkWeights w;
  w.kernel.resize(static_cast<size_t>(L));
  if (sink == nullptr || sink->weight.empty()) return w;
  w.real_rows = in.batch * in.seq;
  if (in.mask != nullptr) {
    w.real_rows = 0;
    for (int64_t r = 0; r < in.batch * in.seq; ++r) w.real_rows += in.mask[r] != 0 ? 1 : 0;
  }
  if (w.real_rows == 0) return w;
  const double per_row = gradient_scale / static_cast<double>(w.real_rows);
  for (int64_t l = 0; l < L; ++l) {
    bool any = false;
    std::vector<float> layer(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) {
      const double weight = sink->weight[l * H + h];
      layer[h] = static_cast<float>(weight * per_row);
      any = any || weight != 0.0;
    }
    if (any) w.kernel[l] = std::move(layer);
  }
  return w;
}

// sum over the heads of layer l of W_h * mean over real rows t of -log A[t, first] from the
// block's saved lse and fused QKV: -log A[t, first] = lse_t - s[t, first] with
// s[t, first] = q_t . k_first * scale (the first real key's ALiBi position is 0). The per-head row
// sums are a backend op (attention_sink_sums) reading the QKV, lse and mask where the backend
// keeps them; only the H sums come back to the host (statistics out), in double. On the CPU it is
// the loop this function ran before it was an op, so the value keeps its bits.
absl::StatusOr<double> sink_loss_on(Backend& backend, const SinkLoss& sink, int64_t l,
                                    const GraphShape& s, const BlockActivations& a,
                                    int64_t real_rows) {
  AttentionSinkParams p;
  p.batch = s.batch, p.seq = s.seq, p.heads = s.heads, p.head_dim = s.head_dim;
  p.qkv = a.qkv.f32();
  p.lse = a.lse.f32();
  p.mask = s.mask;
  absl::StatusOr<std::vector<double>> sums = backend.attention_sink_sums(p);
  if (!sums.ok()) return sums.status();
  double total = 0.0;
  for (int64_t h = 0; h < s.heads; ++h) {
    const double weight = sink.weight[l * s.heads + h];
    if (weight == 0.0) continue;
    total += weight * (*sums)[static_cast<size_t>(h)] / static_cast<double>(real_rows);
  }
  return total;
}

bool block_trainable(CompactGradients& grads, const BlockParams& b) {
  for (const TapeParameter* p : {&b.ln1_w, &b.ln1_b, &b.qkv_w, &b.qkv_b, &b.dense_w, &b.dense_b,
                                 &b.ln2_w, &b.ln2_b, &b.fc1_w, &b.fc1_b, &b.fc2_w, &b.fc2_b}) {
    if (grads.any_trainable(*p)) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<ForwardResult> bloom_forward_backward(const BloomModel& model, Backend& backend,
                                                     const ForwardInputs& in,
                                                     CompactGradients& grads, double gradient_scale,
                                                     bool recompute, SinkLoss* sink_loss) {
  if (in.targets == nullptr) {
    return absl::InvalidArgumentError("forward_backward: targets are required");
  }
  // The tape runs in the weights' storage type (its activation gradients too); the parameter
  // gradients and the compact gradient are fp32 in the backend's memory.
  const DType storage = storage_on(model, backend);
  if (grads.backend().kind() != backend.kind()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "forward_backward: the compact gradient lives on ", std::string(grads.backend().name()),
        " but the backward runs on ", std::string(backend.name())));
  }
  const BloomConfig& c = model.config;
  if (c.n_layer < 1) return absl::InvalidArgumentError("forward_backward: model has no layers");
  if (sink_loss != nullptr && !sink_loss->weight.empty() &&
      static_cast<int64_t>(sink_loss->weight.size()) != c.n_layer * c.n_head) {
    return absl::InvalidArgumentError(absl::StrCat(
        "forward_backward: sink_loss weight has ", sink_loss->weight.size(),
        " entries, expected n_layer * n_head = ", c.n_layer * c.n_head));
  }
  if (sink_loss != nullptr && !sink_loss->weight.empty() && storage != DType::kF32) {
    // The sink loss's value is read from the block's fp32 QKV and lse (attention_sink_sums).
    return absl::UnimplementedError(absl::StrCat(
        "the attention sink loss (controlled collapse) is not implemented with ",
        dtype_name(storage), " weights (run it in f32)"));
  }
  if (sink_loss != nullptr) sink_loss->value = 0.0;
  absl::StatusOr<GraphParams> params = graph_params(model, backend);
  if (!params.ok()) return params.status();
  ForwardInputs fwd = in;
  fwd.keep_activations = !recompute;
  fwd.keep_block_inputs = recompute;
  const int64_t L = c.n_layer;
  // What the backward will read (ForwardInputs::keep_from_layer, keep_ln2, keep_gelu): nothing
  // below the lowest block with a trainable element (unless the embedding trains), and a block's
  // ln2 / GELU outputs only for a trainable fc1 / fc2 weight.
  const bool embedding_trains = grads.any_trainable(params->embedding) ||
                                grads.any_trainable(params->emb_ln_w) ||
                                grads.any_trainable(params->emb_ln_b);
  int64_t lowest = L;
  for (int64_t l = L - 1; l >= 0; --l) {
    if (block_trainable(grads, params->blocks[l])) lowest = l;
  }
  fwd.keep_from_layer = embedding_trains ? 0 : lowest;
  fwd.keep_ln2.resize(static_cast<size_t>(L));
  fwd.keep_gelu.resize(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    fwd.keep_ln2[l] = grads.any_trainable(params->blocks[l].fc1_w) ? 1 : 0;
    fwd.keep_gelu[l] = grads.any_trainable(params->blocks[l].fc2_w) ? 1 : 0;
  }
  // With a frozen LM head (every surgery plan) the classifier's input gradient comes out of
  // the forward's pass over the vocabulary: the backward then never recomputes the logits, which
  // for BLOOM's 250,880-entry vocabulary are a large share of a step's work.
  int64_t scored = 0;
  for (int64_t r = 0; r < in.batch * in.seq; ++r) scored += in.targets[r] >= 0 ? 1 : 0;
  ActivationBuffer head_dhidden;
  if (scored > 0 && !grads.any_trainable(params->lm_head)) {
    if (absl::Status s = head_dhidden.resize(backend, in.batch * in.seq * c.hidden_size, storage);
        !s.ok()) {
      return s;
    }
    fwd.dhidden = head_dhidden.data();
    fwd.dhidden_scale = static_cast<float>(gradient_scale / static_cast<double>(scored));
  }
  absl::StatusOr<ForwardResult> result = bloom_forward(model, backend, fwd);
  if (!result.ok()) return result.status();
  if (result->scored == 0) {
    result->activations.reset();
    return result;
  }
  BloomActivations& act = *result->activations;
  result->kept_activation_bytes = activation_bytes(act);
  const int64_t rows = in.batch * in.seq, C = c.hidden_size;
  GraphShape shape;
  shape.storage = storage;
  shape.batch = in.batch, shape.seq = in.seq, shape.hidden = C;
  shape.heads = c.n_head, shape.head_dim = c.head_dim();
  shape.eps = static_cast<float>(c.layer_norm_epsilon);
  shape.scale = attention_scale(c);
  shape.gelu_exact = family_traits(c).gelu_exact;
  shape.clip_qkv = static_cast<float>(c.clip_qkv);
  shape.slopes = act.slopes.data();
  shape.bf16_bias_divisor = attention_bias_divisor(c);
  shape.positions = act.positions.data();
  shape.mask = act.mask.empty() ? nullptr : act.mask.data();
  const float loss_scale = static_cast<float>(gradient_scale / static_cast<double>(result->scored));
  SinkWeights sink = sink_weights(sink_loss, L, c.n_head, in, gradient_scale);
  if (absl::Status s = sink.upload(backend); !s.ok()) return s;

  if (!recompute) {
    // One tape over every kept intermediate, from the embedding when it trains, else from the
    // input of the lowest block with something trainable (nothing below it needs a gradient).
    Tape tape(storage);
    const int64_t from = fwd.keep_from_layer;
    int x = from == 0 ? record_embedding(tape, shape, *params, act, act.ids.data(), c.vocab_size,
                                         act.blocks[0].x.data())
                      : tape.add_value(from < L ? act.blocks[from].x.data() : act.final_x.data(),
                                       rows * C);
    for (int64_t l = from; l < L; ++l) {
      const void* out = l + 1 < L ? act.blocks[l + 1].x.data() : act.final_x.data();
      x = record_block(tape, shape, params->blocks[l], act.blocks[l], x, out, sink.layer(l));
      if (sink.layer(l) != nullptr) {
        absl::StatusOr<double> v =
            sink_loss_on(backend, *sink_loss, l, shape, act.blocks[l], sink.real_rows);
        if (!v.ok()) return v.status();
        sink_loss->value += *v;
      }
    }
    record_head(tape, shape, *params, act, x, in, c.vocab_size,
                head_dhidden.empty() ? nullptr : head_dhidden.data());
    if (absl::Status s = tape.backward(backend, grads, loss_scale); !s.ok()) return s;
    result->activations.reset();
    return result;
  }

  // Recomputation: one tape per segment (head, each block from the top, embedding). below[l]:
  // something at or below the input of block l (embedding, its LayerNorm, blocks < l) is
  // trainable, so the gradient of block l's input is needed.
  std::vector<uint8_t> below(static_cast<size_t>(L + 1), 0);
  below[0] = grads.any_trainable(params->embedding) || grads.any_trainable(params->emb_ln_w) ||
             grads.any_trainable(params->emb_ln_b);
  for (int64_t l = 0; l < L; ++l) {
    below[l + 1] = below[l] || block_trainable(grads, params->blocks[l]);
  }
  DeviceArray<std::byte> dx;  // gradient of the current segment's output, on the backend
  {
    Tape head(storage);
    const int x = head.add_value(act.final_x.data(), rows * C, below[L] != 0);
    record_head(head, shape, *params, act, x, in, c.vocab_size,
                head_dhidden.empty() ? nullptr : head_dhidden.data());
    if (absl::Status s = head.backward(backend, grads, loss_scale); !s.ok()) return s;
    dx = head.take_grad(x);
  }
  absl::StatusOr<BloomWeights> weights = bloom_weights(model, backend);
  if (!weights.ok()) return weights.status();
  BlockActivations a;  // one block's recomputed intermediates, reused from the top down
  ActivationBuffer out;
  if (absl::Status s = out.resize(backend, rows * C, storage); !s.ok()) return s;
  for (int64_t l = L - 1; l >= 0 && below[l + 1] != 0; --l) {
    const void* x_in = act.block_inputs.at(l * rows * C);
    if (absl::Status s = bloom_block_forward(c, weights->blocks[l], storage, backend,
                                             in.batch, in.seq,
                                             act.slopes.data(), act.positions.data(), shape.mask,
                                             x_in, out.data(), a);
        !s.ok()) {
      return s;
    }
    if (l == L - 1) result->kept_activation_bytes += activation_bytes(a);
    Tape tape(storage);
    const int x = tape.add_value(x_in, rows * C, below[l] != 0);
    const int y = record_block(tape, shape, params->blocks[l], a, x, out.data(), sink.layer(l));
    if (sink.layer(l) != nullptr) {
      absl::StatusOr<double> v =
          sink_loss_on(backend, *sink_loss, l, shape, a, sink.real_rows);
      if (!v.ok()) return v.status();
      sink_loss->value += *v;
    }
    if (absl::Status s = tape.backward_from(backend, grads, y, dx.data()); !s.ok()) return s;
    if (below[l] == 0) break;
    dx = tape.take_grad(x);
  }
  if (below[0] != 0) {
    Tape tape(storage);
    const int x0 =
        record_embedding(tape, shape, *params, act, act.ids.data(), c.vocab_size, act.block_inputs.data());
    if (absl::Status s = tape.backward_from(backend, grads, x0, dx.data()); !s.ok()) return s;
  }
  result->activations.reset();
  return result;
}

}  // namespace engine
