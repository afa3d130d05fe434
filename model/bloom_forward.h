// The BLOOM forward pass over the Backend ops, as transformers computes it (METHOD.md section 1):
// embedding -> word_embeddings_layernorm -> blocks -> ln_f -> LM head (the embedding when tied,
// else lm_head.weight) + cross-entropy.
// Contract:
// - One Backend op call per graph node (layernorm, linear = bias broadcast + gemm, fused ALiBi
//   attention, gelu, classifier); every intermediate lives in a BloomActivations workspace, one
//   set per layer when `keep_activations` (what a backward pass / tape needs), else one set reused
//   by every layer (inference).
// - Padding follows transformers: key positions are cumsum(mask) - 1, padded keys are never
//   attended; outputs at padded positions are computed but carry no meaning (see the attention
//   kernel's Note [fully padded query rows]); the statistics cover real query rows only.
// - Loss: targets (B, T) give, per position, the id it should predict (already shifted), -1 = not
//   scored; loss = mean of -log p(target) over scored positions.
// - Errors (bad shapes, ids outside the vocabulary, mask values other than 0/1, missing tensors)
//   are one line naming the input or tensor; nothing is printed.
// - Incremental decoding (KvCache, batch 1): the fused QKV rows of every past position are kept
//   per layer, so each step only runs the new tokens (ALiBi needs no position re-encoding).
// - Devices: everything runs on the given backend. Token ids, mask and targets come from the
//   host and are copied in once per call; the weights are read from where the backend holds them
//   (model/device_model.h: make_resident first for a device); activations, the KV cache and the
//   statistics' sums live in the backend's memory; only the loss per row, the logits asked for
//   and the statistics (per call, never per head) come back to the host.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/device_array.h"
#include "model/model_directory.h"

namespace engine {

// Pointers to one block's parameters inside the arena, in the memory of the backend they were
// looked up for and in its storage type (BloomWeights::storage).
struct BloomBlockWeights {
  const void* ln1_weight; const void* ln1_bias;   // (C)
  const void* qkv_weight; const void* qkv_bias;   // (3C, C), (3C), per-head interleaved
  const void* dense_weight; const void* dense_bias;  // (C, C), (C)
  const void* ln2_weight; const void* ln2_bias;   // (C)
  const void* fc1_weight; const void* fc1_bias;   // dense_h_to_4h (4C, C), (4C)
  const void* fc2_weight; const void* fc2_bias;   // dense_4h_to_h (C, 4C), (C)
};

struct BloomWeights {
  DType storage = DType::kF32;
  // Families without some tensors (config.h, FamilyTraits): an absent Linear bias is null; an
  // absent LayerNorm bias points at `zeros` (C zero elements in any storage); an absent embedding
  // LayerNorm leaves emb_ln_weight null and the embedding feeds the first block directly.
  std::vector<float> zeros;
  const void* embedding;                          // (V, C)
  const void* lm_head;                            // (V, C): the embedding when tied
  const void* emb_ln_weight; const void* emb_ln_bias;  // (C)
  std::vector<BloomBlockWeights> blocks;           // (L)
  const void* lnf_weight; const void* lnf_bias;  // (C)
};

// Looks up every tensor by its released-checkpoint name; NotFound names the missing one. The
// pointers are into the host arena, or with a backend, into the arena as that backend reads it
// (FailedPrecondition when the model is not resident there). Families other than BLOOM run on the
// CPU backend only (Unimplemented on another, naming the family).
absl::StatusOr<BloomWeights> bloom_weights(const BloomModel& model);
absl::StatusOr<BloomWeights> bloom_weights(const BloomModel& model, const Backend& backend);

// Fails on the first parameter holding NaN or Inf, naming the tensor and the element index.
absl::Status check_finite_parameters(const BloomModel& model);

// An activation tensor in the backend's memory (on the CPU: large buffers on transparent huge
// pages, engine/large_pages.h): size() elements of a storage type, the forward's (the type the
// weights are resident in, model/device_model.h) for activations, F32 for the LayerNorm moments
// and the attention's lse. Move-only; resize discards the contents and zeroes.
class ActivationBuffer {
 public:
  absl::Status resize(Backend& backend, int64_t n, DType storage = DType::kF32) {
    if (absl::Status s = bytes_.resize(backend, n * static_cast<int64_t>(dtype_size(storage)));
        !s.ok()) {
      return s;
    }
    size_ = n;
    storage_ = storage;
    return absl::OkStatus();
  }
  void* data() { return bytes_.data(); }
  const void* data() const { return bytes_.data(); }
  // The address of element `offset`.
  void* at(int64_t offset) { return bytes_.data() + offset * element_bytes(); }
  const void* at(int64_t offset) const { return bytes_.data() + offset * element_bytes(); }
  // The fp32 view; null unless the storage is F32 (what the host-side tape reads).
  float* f32() { return storage_ == DType::kF32 ? reinterpret_cast<float*>(bytes_.data()) : nullptr; }
  const float* f32() const {
    return storage_ == DType::kF32 ? reinterpret_cast<const float*>(bytes_.data()) : nullptr;
  }
  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t bytes() const { return bytes_.bytes(); }
  DType storage() const { return storage_; }
  Backend* backend() const { return bytes_.backend(); }

 private:
  int64_t element_bytes() const { return static_cast<int64_t>(dtype_size(storage_)); }
  DeviceArray<std::byte> bytes_;
  int64_t size_ = 0;
  DType storage_ = DType::kF32;
};

// One block's intermediates, rows = B * T.
struct BlockActivations {
  ActivationBuffer x;           // (rows, C) block input (residual stream)
  ActivationBuffer ln1, ln1_mean, ln1_rstd;  // (rows, C), (rows), (rows)
  ActivationBuffer qkv;         // (rows, 3C) = (B, T, H, 3, D)
  ActivationBuffer qkv_pre;     // (rows, 3C) the projection before MPT's clip_qkv clamp (the
                                // clamp's backward reads it); empty when clip_qkv is not set
  ActivationBuffer attn;        // (rows, C) attention output before `dense`
  ActivationBuffer lse;         // (B, H, T)
  ActivationBuffer x_mid;       // (rows, C) residual after attention
  ActivationBuffer ln2, ln2_mean, ln2_rstd;
  ActivationBuffer fc1;         // (rows, 4C) before GELU
  ActivationBuffer gelu;        // (rows, 4C)
};

struct BloomActivations {
  int64_t batch = 0, seq = 0;
  DeviceArray<int32_t> positions;     // (B, T) ALiBi key positions
  // The call's inputs in the backend's memory (what the backward reads again): ids (B, T),
  // mask (B, T) (empty = all real), targets (B, T) (empty = none), ALiBi slopes (H) as the
  // attention kernel takes them (kernel_slopes, config.h).
  DeviceArray<int32_t> ids, targets;
  DeviceArray<uint8_t> mask;
  DeviceArray<float> slopes;
  ActivationBuffer embedded;          // (rows, C) word embeddings
  ActivationBuffer emb_ln_mean, emb_ln_rstd;  // (rows)
  std::vector<BlockActivations> blocks;  // (L) when kept, else (1) shared by every layer
  ActivationBuffer block_inputs;       // (L, rows, C) when keep_block_inputs
  // keep_activations with a KeepPolicy: the intermediates nobody will read share this block
  // (blocks below keep_from_layer run in it entirely; unkept ln2 / gelu outputs land in it).
  BlockActivations scratch;
  ActivationBuffer final_x;           // (rows, C) residual stream after the last block
  ActivationBuffer lnf, lnf_mean, lnf_rstd;  // ln_f output (rows, C) and its moments
};

// Bytes held by the buffers of a block's / a forward's intermediates (sizes, not capacities).
int64_t activation_bytes(const BlockActivations& a);
int64_t activation_bytes(const BloomActivations& a);

struct ForwardInputs {
  int64_t batch = 0, seq = 0;
  const int32_t* ids = nullptr;      // (B, T)
  const uint8_t* mask = nullptr;     // (B, T) 1 = real token, 0 = padding; null = all real
  const int32_t* targets = nullptr;  // (B, T) next-token ids, -1 = not scored; null = no loss
  bool want_logits = false;          // return (B, T, V) logits
  bool want_stats = false;           // return per-(layer, batch row, head) statistics
  bool keep_activations = false;     // keep every layer's intermediates (for a backward pass)
  // Keep only each block's input (and the embedding/final intermediates): for a backward that
  // recomputes each block's intermediates from its input (activation recomputation).
  bool keep_block_inputs = false;
  // With keep_activations: what a backward with frozen parts will read. Blocks below
  // keep_from_layer are never visited by it (nothing trainable at or below them), so their
  // intermediates are not kept; above, a block's ln2 output is read only for the fc1 weight
  // gradient and its GELU output only for the fc2 weight gradient (the activation gradients need
  // the weights, the LayerNorm input and the pre-GELU values), so frozen MLP weights let those go.
  // Empty vectors: keep every layer's ln2 / gelu.
  int64_t keep_from_layer = 0;
  std::vector<uint8_t> keep_ln2, keep_gelu;  // (L)
  int64_t vocab_chunk = 8192;        // classifier chunk width
  // Training: when set (with targets), the classifier also writes the gradient of
  // dhidden_scale * (sum of scored row losses) with respect to its input (the ln_f output),
  // (B * T, C), in the same pass over the vocabulary, so the backward need not recompute logits.
  // In the backend's memory (ids, mask and targets above are host arrays), elements of the
  // weights' storage type (the classifier's dhidden).
  void* dhidden = nullptr;
  float dhidden_scale = 0.0f;
};

// Means over the real query rows of each batch row (METHOD.md section 2).
struct HeadStats {
  int64_t n_layer = 0, batch = 0, n_head = 0;
  std::vector<double> bos_mass, entropy, local_mass;  // (L, B, H)
  std::vector<int64_t> rows;                          // (B) real query rows
  double at(const std::vector<double>& v, int64_t l, int64_t b, int64_t h) const {
    return v[(l * batch + b) * n_head + h];
  }
};

struct ForwardResult {
  double loss = 0.0;                // mean over scored positions; 0 when none are scored
  int64_t scored = 0;               // number of scored positions
  std::vector<float> row_loss;      // (B, T) -log p(target), 0 where not scored
  std::vector<float> logits;        // (B, T, V) when want_logits
  HeadStats stats;                  // filled when want_stats
  std::unique_ptr<BloomActivations> activations;  // when keep_activations or keep_block_inputs
  // bloom_forward_backward: bytes of the intermediates it held for the backward (the forward's
  // kept activations, plus the recomputed block's with recomputation); see memory_estimate.h.
  int64_t kept_activation_bytes = 0;
};

absl::StatusOr<ForwardResult> bloom_forward(const BloomModel& model, Backend& backend,
                                            const ForwardInputs& in);

// One block over full sequences (no cache), as bloom_forward runs it: reads x_in (B * T, C),
// writes every intermediate into `a` (sized here) and the block output into x_out (B * T, C).
// For activation recomputation in the backward. Every pointer is in the backend's memory
// (slopes (H): kernel_slopes, positions (B, T), mask (B, T) or null); x_in, x_out and the
// weights hold `storage` elements.
absl::Status bloom_block_forward(const BloomConfig& config, const BloomBlockWeights& weights,
                                 DType storage, Backend& backend, int64_t batch, int64_t seq,
                                 const float* slopes, const int32_t* positions,
                                 const uint8_t* mask, const void* x_in, void* x_out,
                                 BlockActivations& a);

// targets[b, t] = ids[b, t + 1] when positions t and t + 1 are both real, else -1: the standard
// causal-LM labelling (transformers' labels = input_ids with padding ignored, shifted by one).
std::vector<int32_t> next_token_targets(const int32_t* ids, const uint8_t* mask, int64_t batch,
                                        int64_t seq);

// Fused QKV rows of every position decoded so far, per layer, for one sequence (batch 1), in
// the memory of the backend that decodes (allocated, zeroed, by the first decode step; a cache
// is bound to that backend from then on).
class KvCache {
 public:
  KvCache(const BloomConfig& config, int64_t capacity);
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // (capacity, 3C) in the backend's memory and storage type; null before the first step.
  void* layer(int64_t l) { return qkv_.empty() ? nullptr : qkv_.at(l * capacity_ * row_width_); }

 private:
  friend absl::StatusOr<std::vector<float>> bloom_decode_step(const BloomModel&, Backend&,
                                                              KvCache&, const int32_t*, int64_t);
  int64_t layers_ = 0, capacity_ = 0, row_width_ = 0, length_ = 0;
  ActivationBuffer qkv_;  // (L, capacity, 3C)
};

// Runs `count` new tokens of a batch-1 sequence after the cached ones, appends their QKV rows to
// the cache and returns the logits (V) of the last new token. Fails when the cache is full.
absl::StatusOr<std::vector<float>> bloom_decode_step(const BloomModel& model, Backend& backend,
                                                     KvCache& cache, const int32_t* ids,
                                                     int64_t count);

}  // namespace engine
