// BLOOM forward + tape backward; contract in bloom_backward.h.
#include "model/bloom_backward.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace engine {
namespace {

absl::StatusOr<TapeParameter> parameter(const BloomModel& model, const std::string& name) {
  absl::StatusOr<TensorView> v = model.arena.view(name);
  if (!v.ok()) return v.status();
  TapeParameter p;
  p.data = v->as<const float>();
  p.arena_offset = v->arena_offset;
  p.rows = v->rank() == 2 ? v->shape[0] : 1;
  p.cols = v->shape.back();
  return p;
}

}  // namespace

absl::StatusOr<ForwardResult> bloom_forward_backward(const BloomModel& model, Backend& backend,
                                                     const ForwardInputs& in,
                                                     CompactGradients& grads,
                                                     double gradient_scale) {
  if (in.targets == nullptr) {
    return absl::InvalidArgumentError("forward_backward: targets are required");
  }
  const BloomConfig& c = model.config;
  if (c.n_layer < 1) return absl::InvalidArgumentError("forward_backward: model has no layers");
  ForwardInputs fwd = in;
  fwd.keep_activations = true;
  absl::StatusOr<ForwardResult> result = bloom_forward(model, backend, fwd);
  if (!result.ok()) return result.status();
  if (result->scored == 0) {
    result->activations.reset();
    return result;
  }
  BloomActivations& act = *result->activations;
  const int64_t B = in.batch, T = in.seq, C = c.hidden_size, H = c.n_head, L = c.n_layer;
  const int64_t rows = B * T;
  const float eps = static_cast<float>(c.layer_norm_epsilon);
  const std::vector<float> slopes = alibi_slopes(H);

  // Parameters by name, failing on the first missing one.
  absl::Status missing = absl::OkStatus();
  auto param = [&](const std::string& name) {
    absl::StatusOr<TapeParameter> p = parameter(model, name);
    if (!p.ok()) {
      if (missing.ok()) missing = p.status();
      return TapeParameter{};
    }
    return *p;
  };

  Tape tape;
  const TapeParameter embedding = param("word_embeddings.weight");
  const int embedded = tape.add_value(act.embedded.data(), rows * C);
  tape.record(TapeEmbedding{rows, C, c.vocab_size, in.ids, embedding, embedded});
  int x = tape.add_value(act.blocks[0].x.data(), rows * C);
  tape.record(TapeLayerNorm{rows, C, eps, act.emb_ln_mean.data(), act.emb_ln_rstd.data(),
                            param("word_embeddings_layernorm.weight"),
                            param("word_embeddings_layernorm.bias"), embedded, x});
  for (int64_t l = 0; l < L; ++l) {
    BlockActivations& a = act.blocks[l];
    const std::string h = absl::StrCat("h.", l, ".");
    const int ln1 = tape.add_value(a.ln1.data(), rows * C);
    tape.record(TapeLayerNorm{rows, C, eps, a.ln1_mean.data(), a.ln1_rstd.data(),
                              param(h + "input_layernorm.weight"), param(h + "input_layernorm.bias"),
                              x, ln1});
    const int qkv = tape.add_value(a.qkv.data(), rows * 3 * C);
    tape.record(TapeLinear{rows, C, 3 * C, param(h + "self_attention.query_key_value.weight"),
                           param(h + "self_attention.query_key_value.bias"), ln1, -1, qkv});
    const int attn = tape.add_value(a.attn.data(), rows * C);
    TapeAttention at;
    AlibiAttentionParams& ap = at.forward;
    ap.batch = B, ap.seq = T, ap.heads = H, ap.head_dim = c.head_dim();
    ap.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.head_dim())));
    ap.qkv = a.qkv.data();
    ap.slopes = slopes.data();
    ap.positions = act.positions.data();
    ap.mask = in.mask;
    ap.out = a.attn.data();
    ap.lse = a.lse.data();
    at.qkv = qkv, at.out = attn;
    tape.record(at);
    const int x_mid = tape.add_value(a.x_mid.data(), rows * C);
    tape.record(TapeLinear{rows, C, C, param(h + "self_attention.dense.weight"),
                           param(h + "self_attention.dense.bias"), attn, x, x_mid});
    const int ln2 = tape.add_value(a.ln2.data(), rows * C);
    tape.record(TapeLayerNorm{rows, C, eps, a.ln2_mean.data(), a.ln2_rstd.data(),
                              param(h + "post_attention_layernorm.weight"),
                              param(h + "post_attention_layernorm.bias"), x_mid, ln2});
    const int fc1 = tape.add_value(a.fc1.data(), rows * 4 * C);
    tape.record(TapeLinear{rows, C, 4 * C, param(h + "mlp.dense_h_to_4h.weight"),
                           param(h + "mlp.dense_h_to_4h.bias"), ln2, -1, fc1});
    const int gelu = tape.add_value(a.gelu.data(), rows * 4 * C);
    tape.record(TapeGelu{rows * 4 * C, fc1, gelu});
    const float* next = l + 1 < L ? act.blocks[l + 1].x.data() : act.final_x.data();
    const int x_next = tape.add_value(next, rows * C);
    tape.record(TapeLinear{rows, 4 * C, C, param(h + "mlp.dense_4h_to_h.weight"),
                           param(h + "mlp.dense_4h_to_h.bias"), gelu, x_mid, x_next});
    x = x_next;
  }
  const int lnf = tape.add_value(act.lnf.data(), rows * C);
  tape.record(TapeLayerNorm{rows, C, eps, act.lnf_mean.data(), act.lnf_rstd.data(),
                            param("ln_f.weight"), param("ln_f.bias"), x, lnf});
  TapeClassifier cl;
  cl.forward.rows = rows, cl.forward.width = C, cl.forward.vocab = c.vocab_size;
  cl.forward.vocab_chunk = in.vocab_chunk;
  cl.forward.hidden = act.lnf.data();
  cl.forward.embedding = embedding.data;
  cl.forward.targets = in.targets;
  cl.embedding = embedding;
  cl.hidden = lnf;
  tape.record(cl);
  if (!missing.ok()) return missing;

  const float loss_scale =
      static_cast<float>(gradient_scale / static_cast<double>(result->scored));
  if (absl::Status s = tape.backward(backend, grads, loss_scale); !s.ok()) return s;
  result->activations.reset();
  return result;
}

}  // namespace engine
