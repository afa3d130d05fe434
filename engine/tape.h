// Tape autograd for a fixed, small set of ops (embedding, LayerNorm, linear with optional fused
// residual, fused ALiBi attention, GELU, clamp, classifier + cross-entropy). It knows nothing of any
// model: a caller registers activation buffers as values and records one entry per op in forward
// order, with what that op's backward needs (attention keeps its row log-sum-exp, never
// probabilities). `backward` walks the entries in reverse.
//
// Contract:
// - A tape has one storage type (F32 by default; BF16 / F16 for a forward over 16-bit weights):
//   its values, its parameters' data and the gradients of its values hold elements of that
//   type, as the ops take them (engine/backend.h, "Storage"); the parameter gradients (dense
//   blocks and the compact buffer) and the saved LayerNorm moments are fp32 whatever it is. So
//   with 16-bit storage every activation gradient is rounded once per op that writes it, and
//   the F32 tape is the tape it was before, op for op.
// - Values are caller-owned buffers (the forward's kept activations) in the memory of the
//   backend the backward runs on; the tape never writes them. Gradient buffers for values are
//   tape-owned DeviceArrays on that backend, allocated when first written and freed as soon as
//   the entry that produced the value has been processed. Every gradient operation is a backend
//   op (GEMMs, the op backwards, and the bookkeeping ops add, column_sums and
//   compact_scatter_add), so the backward runs wholly on the device; on the CPU the bookkeeping
//   ops are the host loops they replaced, in the same order, so results are the same bits.
// - Which gradients are computed is decided like PyTorch's should_compute_output, from the
//   trainable bitmask in CompactGradients: an entry is "trainable" when one of its parameters has
//   a trainable element; the gradient of a value is computed only when some trainable entry lies
//   at or before the value's producer (everything earlier on this tape flows into everything
//   later), so the backward stops below the lowest trainable entry. Parameter gradients are
//   computed only over the row runs x column runs of a parameter that hold trainable elements
//   (a head's row block of a fused QKV weight, a head's column block of a dense weight) and only
//   trainable elements reach the compact buffer.
// - Parameter gradients are ADDED to CompactGradients (so micro-batches accumulate) in a fixed
//   order: results are deterministic for a fixed thread count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "engine/device_array.h"

namespace engine {

// A parameter as the tape sees it: a dense row-major (rows, cols) block of the parameter arena
// (rows = 1 for vectors).
struct TapeParameter {
  const void* data = nullptr;  // elements of the tape's storage type
  int64_t arena_offset = -1;
  int64_t rows = 0, cols = 0;
  int64_t numel() const { return rows * cols; }
};

// Half-open index range [begin, end).
struct IndexRun {
  int64_t begin = 0, end = 0;
};

// The compact gradient buffer: element i is d(loss)/d(arena element arena_index(i)), the i-th
// trainable element in ascending arena order. The mapping is held on the host as runs of
// consecutive trainable elements (a surgery plan's slices are a few thousand runs), not as one
// 8-byte offset per element, which for a bloom-1b7 pass-1 plan would be 1.1 GB. The values live
// in the memory of a backend (host memory by default, the CPU backend's): data() is a pointer the
// backend's ops take, readable on the host only for the CPU (download() works for both).
class CompactGradients {
 public:
  // `words`: one bit per arena element, 1 = trainable (FrozenMask::words()). Values in host
  // memory (a process-wide CPU backend); the backward must then run on the CPU.
  CompactGradients(std::vector<uint64_t> words, int64_t elements);
  // Values in `backend`'s memory (zeroed); the backend must outlive this object. Allocation
  // failure (a full device) is reported by status().
  CompactGradients(std::vector<uint64_t> words, int64_t elements, Backend& backend);
  // Whether the values were allocated.
  const absl::Status& status() const { return status_; }
  Backend& backend() const { return *backend_; }
  // The trainable bitmask and the arena size it covers (as given).
  const std::vector<uint64_t>& words() const { return words_; }
  int64_t elements() const { return elements_; }

  int64_t size() const { return size_; }
  // Arena offset of compact element i (0 <= i < size()).
  int64_t arena_index(int64_t i) const;
  // Arena offsets of compact elements [first, first + count) into out (for the optimizer, which
  // takes an index array: callers go through the buffer in bounded chunks).
  void arena_indices(int64_t first, int64_t count, int64_t* out) const;
  float* data() { return values_.data(); }
  const float* data() const { return values_.data(); }
  absl::Status zero() { return values_.zero(); }
  // The values into `host` (resized to size()).
  absl::Status download(std::vector<float>& host) const { return values_.download(host); }

  bool trainable(int64_t element) const {
    return element >= 0 && element < elements_ &&
           ((words_[static_cast<size_t>(element >> 6)] >> (element & 63)) & 1u);
  }
  // Whether any element of p is trainable, and the maximal runs of rows (columns) of p that hold
  // at least one trainable element. Computed once per parameter and cached.
  bool any_trainable(const TapeParameter& p) { return !regions(p).rows.empty(); }
  const std::vector<IndexRun>& row_runs(const TapeParameter& p) { return regions(p).rows; }
  const std::vector<IndexRun>& col_runs(const TapeParameter& p) { return regions(p).cols; }

  // Adds g (nr, nc; row stride ld; in the backend's memory) to the gradients of elements
  // [r0, r0 + nr) x [c0, c0 + nc) of p; frozen elements are skipped. One compact_scatter_add
  // over the block's trainable segments, which are computed and uploaded once per block and
  // cached.
  absl::Status accumulate(const TapeParameter& p, int64_t r0, int64_t c0, int64_t nr, int64_t nc,
                          const float* g, int64_t ld);
  // Bytes of the cached segment tables (in the backend's memory).
  int64_t segment_table_bytes() const;

 private:
  struct Regions {
    std::vector<IndexRun> rows, cols;
  };
  const Regions& regions(const TapeParameter& p);

  // A run of consecutive trainable arena elements [arena_begin, arena_begin + length) holding
  // compact elements [compact_begin, compact_begin + length).
  struct Run {
    int64_t arena_begin = 0, compact_begin = 0, length = 0;
  };
  // Compact position of the first trainable element at or after arena offset `element`.
  int64_t compact_position(int64_t element) const;

  // The (row, col, dst, length) segments of a parameter block, in the backend's memory.
  struct BlockKey {
    int64_t offset, r0, c0, nr, nc;
    bool operator==(const BlockKey&) const = default;
  };
  struct BlockKeyHash {
    size_t operator()(const BlockKey& k) const {
      size_t h = 0;
      for (int64_t v : {k.offset, k.r0, k.c0, k.nr, k.nc}) h = h * 1000003u ^ std::hash<int64_t>()(v);
      return h;
    }
  };
  struct Segments {
    int64_t count = 0;
    DeviceArray<int64_t> table;
  };
  absl::StatusOr<const Segments*> segments(const TapeParameter& p, int64_t r0, int64_t c0,
                                           int64_t nr, int64_t nc);

  std::vector<uint64_t> words_;
  int64_t elements_ = 0;
  std::vector<Run> runs_;
  int64_t size_ = 0;
  Backend* backend_ = nullptr;
  absl::Status status_;
  DeviceArray<float> values_;
  std::unordered_map<int64_t, Regions> regions_;  // by arena offset
  std::unordered_map<BlockKey, Segments, BlockKeyHash> segments_;
};

// Op records. Shapes as in engine/backend.h.
struct TapeEmbedding {
  int64_t rows = 0, width = 0, vocab = 0;
  const int32_t* ids = nullptr;
  TapeParameter table;  // (vocab, width)
  int out = -1;         // (rows, width)
};
struct TapeLayerNorm {
  int64_t rows = 0, width = 0;
  float eps = 1e-5f;
  const float* mean = nullptr;
  const float* rstd = nullptr;  // saved moments (rows)
  TapeParameter weight, bias;
  int x = -1, y = -1;
};
// y = x W^T + bias (+ residual).
struct TapeLinear {
  int64_t rows = 0, in = 0, out = 0;
  TapeParameter weight;  // (out, in)
  TapeParameter bias;    // (1, out)
  int x = -1, residual = -1, y = -1;
};
struct TapeAttention {
  AlibiAttentionParams forward;  // as the forward ran it (qkv, out, lse, positions, mask, ...)
  int qkv = -1, out = -1;
};
struct TapeGelu {
  int64_t n = 0;
  int x = -1, y = -1;
  bool exact = false;  // GeluParams::exact
};
// y = clamp(x, lo, hi) elementwise (MPT's clip_qkv). Its gradient passes where lo < x < hi and
// is zero elsewhere, at the bounds too: what torch 2.15's backward of clamp with scalar bounds
// (MPT's `clamp(min=-clip, max=clip)`) gives, checked on exact values (x == hi gets 0). So x must
// be the pre-clamp values. The backward is a host loop: CPU backend and F32 storage only.
struct TapeClamp {
  int64_t n = 0;
  float lo = 0.0f, hi = 0.0f;
  int x = -1, y = -1;
};
// The loss root: gradient of loss_scale * (sum of scored row losses).
struct TapeClassifier {
  ClassifierParams forward;  // rows, width, vocab, chunk, hidden, embedding, targets
  TapeParameter embedding;
  int hidden = -1;
  // The gradient of the hidden input when the forward already computed it (rows * width elements
  // of the storage type, for the backward's loss_scale); used when the embedding needs no
  // gradient.
  const void* dhidden = nullptr;
};
using TapeEntry =
    std::variant<TapeEmbedding, TapeLayerNorm, TapeLinear, TapeAttention, TapeGelu, TapeClamp,
                 TapeClassifier>;

// A tape may also hold one segment of a larger graph (activation recomputation): its inputs are
// external values that may require a gradient (then every entry of the segment counts as having
// something trainable before it), and its backward starts from a seeded output gradient.
class Tape {
 public:
  // Registers a caller-owned activation buffer of `size` floats; returns its value id.
  // `requires_grad` only matters for external inputs (values no entry produces): their gradient
  // is computed and kept for `grad()`.
  explicit Tape(DType storage = DType::kF32) : storage_(storage) {}
  DType storage() const { return storage_; }
  int add_value(const void* data, int64_t size, bool requires_grad = false);
  // Records an op; the entry's output value (if any) becomes produced by it. Values must be
  // produced before they are read.
  void record(TapeEntry entry);
  size_t size() const { return entries_.size(); }

  // Runs the backward from the last entry, which must be a TapeClassifier; its loss_scale
  // scales every gradient. Parameter gradients are added to `grads`.
  absl::Status backward(Backend& backend, CompactGradients& grads, float loss_scale);
  // Runs the backward of a segment whose output `value` has gradient `seed` (value's size).
  absl::Status backward_from(Backend& backend, CompactGradients& grads, int value,
                             const void* seed);
  // The gradient of an external input after a backward (empty when none was computed), in the
  // backend's memory, as bytes of the tape's storage type; take_grad moves it out.
  const DeviceArray<std::byte>& grad(int value) const { return grads_[value].data; }
  DeviceArray<std::byte> take_grad(int value) { return std::move(grads_[value].data); }

 private:
  struct Value {
    const void* data = nullptr;
    int64_t size = 0;
    int producer = -1;  // entry index, -1 = external input
    bool requires_grad = false;
  };
  struct Grad {
    DeviceArray<std::byte> data;  // storage_ elements on the backend (the CPU's: huge pages)
    bool written = false;
  };

  // One backward pass over the entries, one member function per op (tape.cpp).
  class Backward;

  DType storage_ = DType::kF32;
  std::vector<Value> values_;
  std::vector<TapeEntry> entries_;
  std::vector<Grad> grads_;  // per value, during and after a backward
};

}  // namespace engine
