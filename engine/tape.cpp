// Tape autograd; contract in tape.h.
#include "engine/tape.h"

#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"

namespace engine {
namespace {

// The address `elements` elements of `storage` after p.
const void* advance(const void* p, int64_t elements, DType storage) {
  return static_cast<const std::byte*>(p) + elements * static_cast<int64_t>(dtype_size(storage));
}

// Where a CompactGradients made without a backend keeps its values: host memory.
Backend& host_backend() {
  static Backend* const cpu = make_cpu_backend().release();
  return *cpu;
}

}  // namespace

CompactGradients::CompactGradients(std::vector<uint64_t> words, int64_t elements)
    : CompactGradients(std::move(words), elements, host_backend()) {}

CompactGradients::CompactGradients(std::vector<uint64_t> words, int64_t elements,
                                   Backend& backend)
    : words_(std::move(words)), elements_(elements), backend_(&backend) {
  // Whole words of zeros or ones are skipped or taken at once; only mixed words go bit by bit.
  auto extend = [&](int64_t begin, int64_t length) {
    if (!runs_.empty() && runs_.back().arena_begin + runs_.back().length == begin) {
      runs_.back().length += length;
    } else {
      runs_.push_back({begin, size_, length});
    }
    size_ += length;
  };
  for (size_t w = 0; w < words_.size(); ++w) {
    const int64_t base = static_cast<int64_t>(w) * 64;
    const int64_t bits = std::min<int64_t>(64, elements_ - base);
    if (bits <= 0) break;
    const uint64_t word = words_[w];
    if (word == 0) continue;
    if (bits == 64 && word == ~uint64_t{0}) {
      extend(base, 64);
      continue;
    }
    for (int64_t b = 0; b < bits; ++b) {
      if ((word >> b) & 1u) extend(base + b, 1);
    }
  }
  status_ = values_.resize(backend, size_);
}

int64_t CompactGradients::arena_index(int64_t i) const {
  // The last run starting at or before compact position i.
  auto it = std::upper_bound(runs_.begin(), runs_.end(), i,
                             [](int64_t pos, const Run& r) { return pos < r.compact_begin; });
  --it;
  return it->arena_begin + (i - it->compact_begin);
}

void CompactGradients::arena_indices(int64_t first, int64_t count, int64_t* out) const {
  if (count <= 0) return;
  auto it = std::upper_bound(runs_.begin(), runs_.end(), first,
                             [](int64_t pos, const Run& r) { return pos < r.compact_begin; });
  --it;
  int64_t i = first;
  for (int64_t k = 0; k < count; ++it) {
    const int64_t end = std::min(it->compact_begin + it->length, first + count);
    for (; i < end; ++i, ++k) *out++ = it->arena_begin + (i - it->compact_begin);
  }
}

int64_t CompactGradients::compact_position(int64_t element) const {
  // The first run ending after `element`: either it contains `element` or starts after it.
  auto it = std::upper_bound(runs_.begin(), runs_.end(), element, [](int64_t e, const Run& r) {
    return e < r.arena_begin + r.length;
  });
  if (it == runs_.end()) return size_;
  return it->compact_begin + std::max<int64_t>(0, element - it->arena_begin);
}

const CompactGradients::Regions& CompactGradients::regions(const TapeParameter& p) {
  auto it = regions_.find(p.arena_offset);
  if (it != regions_.end()) return it->second;
  Regions r;
  std::vector<uint8_t> col_any(static_cast<size_t>(std::max<int64_t>(p.cols, 0)), 0);
  auto push = [](std::vector<IndexRun>& runs, int64_t i) {
    if (!runs.empty() && runs.back().end == i) {
      ++runs.back().end;
    } else {
      runs.push_back({i, i + 1});
    }
  };
  for (int64_t row = 0; row < p.rows; ++row) {
    bool row_any = false;
    const int64_t base = p.arena_offset + row * p.cols;
    for (int64_t c = 0; c < p.cols; ++c) {
      if (trainable(base + c)) {
        row_any = true;
        col_any[static_cast<size_t>(c)] = 1;
      }
    }
    if (row_any) push(r.rows, row);
  }
  for (int64_t c = 0; c < p.cols; ++c) {
    if (col_any[static_cast<size_t>(c)] != 0) push(r.cols, c);
  }
  return regions_.emplace(p.arena_offset, std::move(r)).first->second;
}

absl::StatusOr<const CompactGradients::Segments*> CompactGradients::segments(
    const TapeParameter& p, int64_t r0, int64_t c0, int64_t nr, int64_t nc) {
  const BlockKey key{p.arena_offset, r0, c0, nr, nc};
  auto found = segments_.find(key);
  if (found != segments_.end()) return &found->second;
  // Per row of the block, the runs it intersects, each clipped to the block's columns.
  std::vector<int64_t> table;
  for (int64_t r = 0; r < nr; ++r) {
    const int64_t base = p.arena_offset + (r0 + r) * p.cols + c0;
    auto it = std::upper_bound(runs_.begin(), runs_.end(), base, [](int64_t e, const Run& run) {
      return e < run.arena_begin + run.length;
    });
    for (; it != runs_.end() && it->arena_begin < base + nc; ++it) {
      const int64_t begin = std::max(it->arena_begin, base);
      const int64_t end = std::min(it->arena_begin + it->length, base + nc);
      if (end <= begin) continue;
      table.insert(table.end(),
                   {r, begin - base, it->compact_begin + (begin - it->arena_begin), end - begin});
    }
  }
  Segments seg;
  seg.count = static_cast<int64_t>(table.size() / 4);
  if (absl::Status s = seg.table.upload(*backend_, std::span<const int64_t>(table)); !s.ok()) {
    return s;
  }
  return &segments_.emplace(key, std::move(seg)).first->second;
}

int64_t CompactGradients::segment_table_bytes() const {
  int64_t bytes = 0;
  for (const auto& [key, seg] : segments_) bytes += static_cast<int64_t>(seg.table.bytes());
  return bytes;
}

absl::Status CompactGradients::accumulate(const TapeParameter& p, int64_t r0, int64_t c0,
                                          int64_t nr, int64_t nc, const float* g, int64_t ld) {
  if (!status_.ok()) return status_;
  absl::StatusOr<const Segments*> seg = segments(p, r0, c0, nr, nc);
  if (!seg.ok()) return seg.status();
  CompactScatterParams sp;
  sp.segments = (*seg)->count;
  sp.segment = (*seg)->table.data();
  sp.g = g, sp.ld = ld;
  sp.compact = values_.data();
  return backend_->compact_scatter_add(sp);
}

int Tape::add_value(const void* data, int64_t size, bool requires_grad) {
  values_.push_back({data, size, -1, requires_grad});
  return static_cast<int>(values_.size()) - 1;
}

void Tape::record(TapeEntry entry) {
  const int index = static_cast<int>(entries_.size());
  std::visit(
      [&](auto& e) {
        using E = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<E, TapeEmbedding>) values_[e.out].producer = index;
        if constexpr (std::is_same_v<E, TapeLayerNorm> || std::is_same_v<E, TapeLinear> ||
                      std::is_same_v<E, TapeGelu> || std::is_same_v<E, TapeClamp>) {
          values_[e.y].producer = index;
        }
        if constexpr (std::is_same_v<E, TapeAttention>) values_[e.out].producer = index;
      },
      entry);
  entries_.push_back(std::move(entry));
}

class Tape::Backward {
 public:
  Backward(Tape& tape, Backend& backend, CompactGradients& grads, float loss_scale)
      : tape_(tape), backend_(backend), grads_(grads), loss_scale_(loss_scale),
        st_(tape.storage_) {}

  // The entries in reverse, down to the last one with something trainable at or before it.
  absl::Status run();

 private:
  // prefix[i]: some entry in [0, i] has a trainable parameter, or an input of the segment needs
  // a gradient.
  std::vector<uint8_t> trainable_prefix();
  bool has_trainable(const TapeEntry& entry);

  // One function per op. Each reads its output's gradient (none: nobody needed the output, and
  // nothing is done) and frees it once fully consumed.
  absl::Status op(const TapeClassifier& e);
  absl::Status op(const TapeEmbedding& e);
  absl::Status op(const TapeLayerNorm& e);
  absl::Status op(const TapeLinear& e);
  absl::Status op(const TapeAttention& e);
  absl::Status op(const TapeGelu& e);
  absl::Status op(const TapeClamp& e);

  // The gradient of value `out`, or null when nobody needed it.
  const void* output_grad(int out) const {
    const Grad& go = tape_.grads_[out];
    return go.data.empty() ? nullptr : go.data.data();
  }
  // Bytes of `elements` elements of the tape's storage type.
  size_t bytes(int64_t elements) const {
    return static_cast<size_t>(elements) * dtype_size(st_);
  }
  // The output's gradient is fully consumed: free it.
  absl::Status release(int out) {
    tape_.grads_[out].data = DeviceArray<std::byte>();
    return absl::OkStatus();
  }
  bool needs(int v) const {
    if (v < 0) return false;
    const Value& value = tape_.values_[v];
    return value.producer >= 0 ? prefix_[value.producer] != 0 : value.requires_grad;
  }
  // The gradient buffer of value v, zero-filled on first use.
  absl::StatusOr<Grad*> grad_of(int v) {
    Grad& gv = tape_.grads_[v];
    if (gv.data.empty()) {
      if (absl::Status s =
              gv.data.resize(backend_, static_cast<int64_t>(bytes(tape_.values_[v].size)));
          !s.ok()) {
        return s;
      }
    }
    return &gv;
  }
  // For kernels that overwrite their output gradient: writes straight into an untouched buffer,
  // otherwise into scratch that is then added.
  absl::StatusOr<void*> overwrite_target(int v) {
    absl::StatusOr<Grad*> gv = grad_of(v);
    if (!gv.ok()) return gv.status();
    if (!(*gv)->written) return static_cast<void*>((*gv)->data.data());
    absl::StatusOr<std::byte*> scratch =
        reuse(scratch_, static_cast<int64_t>(bytes(tape_.values_[v].size)));
    if (!scratch.ok()) return scratch.status();
    return static_cast<void*>(*scratch);
  }
  absl::Status finish_overwrite(int v) {
    Grad& gv = tape_.grads_[v];
    if (gv.written) {
      if (absl::Status s = add(gv.data.data(), scratch_.data(), tape_.values_[v].size); !s.ok()) {
        return s;
      }
    }
    gv.written = true;
    return absl::OkStatus();
  }
  // The first `count` floats of `buffer`, zeroed; the buffer grows when too small and is kept
  // between uses (fresh memory would cost page faults on every block of every step).
  template <typename T>
  absl::StatusOr<T*> reuse(DeviceArray<T>& buffer, int64_t count) {
    if (buffer.size() < count) {
      if (absl::Status s = buffer.resize(backend_, count); !s.ok()) return s;
      return buffer.data();
    }
    if (absl::Status s = backend_.fill_zero(buffer.data(), static_cast<size_t>(count) * sizeof(T));
        !s.ok()) {
      return s;
    }
    return buffer.data();
  }
  // y += x over n elements of the tape's storage type (the fp32 add for F32).
  absl::Status add(void* y, const void* x, int64_t n) {
    if (st_ == DType::kF32) {
      return backend_.add(static_cast<float*>(y), static_cast<const float*>(x), n);
    }
    return backend_.add_stored(st_, y, x, n);
  }
  // A zeroed buffer of `count` floats for one parameter block's dense gradient.
  absl::StatusOr<float*> zeroed(int64_t count) { return reuse(pgrad_, count); }

  Tape& tape_;
  Backend& backend_;
  CompactGradients& grads_;
  const float loss_scale_;
  const DType st_;  // the tape's storage type
  std::vector<uint8_t> prefix_;
  DeviceArray<std::byte> scratch_;  // storage_ elements
  DeviceArray<float> pgrad_;  // dense gradient of one parameter block
};

bool Tape::Backward::has_trainable(const TapeEntry& entry) {
  bool trainable = false;
  std::visit(
      [&](const auto& e) {
        using E = std::decay_t<decltype(e)>;
        if constexpr (std::is_same_v<E, TapeEmbedding>) trainable = grads_.any_trainable(e.table);
        if constexpr (std::is_same_v<E, TapeLayerNorm>) {
          trainable = grads_.any_trainable(e.weight) || grads_.any_trainable(e.bias);
        }
        if constexpr (std::is_same_v<E, TapeLinear>) {
          trainable = grads_.any_trainable(e.weight) || grads_.any_trainable(e.bias);
        }
        if constexpr (std::is_same_v<E, TapeClassifier>) {
          trainable = grads_.any_trainable(e.embedding);
        }
      },
      entry);
  return trainable;
}

std::vector<uint8_t> Tape::Backward::trainable_prefix() {
  const int n = static_cast<int>(tape_.entries_.size());
  bool external_grad = false;
  for (const Value& v : tape_.values_)
    external_grad = external_grad || (v.producer < 0 && v.requires_grad);
  std::vector<uint8_t> prefix(n, 0);
  for (int i = 0; i < n; ++i) {
    const bool trainable = has_trainable(tape_.entries_[i]);
    prefix[i] = (trainable || external_grad || (i > 0 && prefix[i - 1] != 0)) ? 1 : 0;
  }
  return prefix;
}

absl::Status Tape::Backward::run() {
  prefix_ = trainable_prefix();
  for (int i = static_cast<int>(tape_.entries_.size()) - 1; i >= 0; --i) {
    if (!prefix_[i]) break;  // nothing at or before this entry is trainable
    const absl::Status status =
        std::visit([&](const auto& e) { return op(e); }, tape_.entries_[i]);
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("tape entry ", i, ": ", std::string(status.message())));
    }
  }
  return absl::OkStatus();
}

#define TAPE_ASSIGN_OR_RETURN(lhs, expr) \
  auto lhs##_or = (expr);                 \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = *lhs##_or

#define TAPE_RETURN_IF_ERROR(expr)          \
  if (absl::Status s_ = (expr); !s_.ok()) { \
    return s_;                              \
  }

absl::Status Tape::Backward::op(const TapeClassifier& e) {
  ClassifierParams p = e.forward;
  p.loss_scale = loss_scale_;
  p.logits = nullptr;
  p.row_loss = nullptr;
  const bool want_table = grads_.any_trainable(e.embedding);
  if (!want_table && e.dhidden != nullptr) {
    if (needs(e.hidden)) {
      TAPE_ASSIGN_OR_RETURN(dst, overwrite_target(e.hidden));
      TAPE_RETURN_IF_ERROR(
          backend_.copy_on_device(dst, e.dhidden, bytes(tape_.values_[e.hidden].size)));
      TAPE_RETURN_IF_ERROR(finish_overwrite(e.hidden));
    }
    return absl::OkStatus();
  }
  if (needs(e.hidden)) {
    TAPE_ASSIGN_OR_RETURN(dst, overwrite_target(e.hidden));
    p.dhidden = dst;
  } else {
    p.dhidden = nullptr;
  }
  if (want_table) {
    TAPE_ASSIGN_OR_RETURN(dtable, zeroed(e.embedding.numel()));
    p.dembedding = dtable;
  } else {
    p.dembedding = nullptr;
  }
  if (p.dhidden == nullptr && p.dembedding == nullptr) return absl::OkStatus();
  TAPE_RETURN_IF_ERROR(backend_.classifier_cross_entropy(p));
  if (p.dhidden != nullptr) TAPE_RETURN_IF_ERROR(finish_overwrite(e.hidden));
  if (want_table) {
    TAPE_RETURN_IF_ERROR(grads_.accumulate(e.embedding, 0, 0, e.embedding.rows, e.embedding.cols,
                                           pgrad_.data(), e.embedding.cols));
  }
  return absl::OkStatus();
}

absl::Status Tape::Backward::op(const TapeEmbedding& e) {
  const void* dy = output_grad(e.out);
  if (dy == nullptr) return absl::OkStatus();
  if (!grads_.any_trainable(e.table)) return absl::OkStatus();
  EmbeddingParams p;
  p.storage = st_;
  p.rows = e.rows, p.width = e.width, p.vocab = e.vocab;
  p.ids = e.ids, p.table = e.table.data;
  TAPE_ASSIGN_OR_RETURN(dtable, zeroed(e.table.numel()));
  p.dout = dy, p.dtable = dtable;
  TAPE_RETURN_IF_ERROR(backend_.embedding_backward(p));
  TAPE_RETURN_IF_ERROR(
      grads_.accumulate(e.table, 0, 0, e.table.rows, e.table.cols, pgrad_.data(), e.table.cols));
  return release(e.out);
}

absl::Status Tape::Backward::op(const TapeLayerNorm& e) {
  const void* dy = output_grad(e.y);
  if (dy == nullptr) return absl::OkStatus();
  const bool want_w = grads_.any_trainable(e.weight);
  const bool want_b = grads_.any_trainable(e.bias);
  LayerNormParams p;
  p.storage = st_;
  p.rows = e.rows, p.width = e.width, p.eps = e.eps;
  p.x = tape_.values_[e.x].data, p.weight = e.weight.data, p.bias = e.bias.data;
  p.mean = const_cast<float*>(e.mean), p.rstd = const_cast<float*>(e.rstd);
  p.dy = dy;
  if (needs(e.x)) {
    TAPE_ASSIGN_OR_RETURN(gx, grad_of(e.x));
    p.dx = gx->data.data();
    p.accumulate_dx = gx->written;
  }
  DeviceArray<float> dw, db;
  if (want_w) {
    TAPE_RETURN_IF_ERROR(dw.resize(backend_, e.width));
    p.dweight = dw.data();
  }
  if (want_b) {
    TAPE_RETURN_IF_ERROR(db.resize(backend_, e.width));
    p.dbias = db.data();
  }
  if (p.dx == nullptr && !want_w && !want_b) return absl::OkStatus();
  TAPE_RETURN_IF_ERROR(backend_.layernorm_backward(p));
  if (p.dx != nullptr) tape_.grads_[e.x].written = true;
  if (want_w) TAPE_RETURN_IF_ERROR(grads_.accumulate(e.weight, 0, 0, 1, e.width, dw.data(), e.width));
  if (want_b) TAPE_RETURN_IF_ERROR(grads_.accumulate(e.bias, 0, 0, 1, e.width, db.data(), e.width));
  return release(e.y);
}

absl::Status Tape::Backward::op(const TapeLinear& e) {
  const void* dy = output_grad(e.y);
  if (dy == nullptr) return absl::OkStatus();
  const void* x = tape_.values_[e.x].data;
  // dW[rows r, cols c] = dY[:, r]^T X[:, c], only over runs holding trainable elements.
  for (const IndexRun& rr : grads_.row_runs(e.weight)) {
    for (const IndexRun& cr : grads_.col_runs(e.weight)) {
      const int64_t nr = rr.end - rr.begin, nc = cr.end - cr.begin;
      GemmParams gp;  // 16-bit operands, the fp32 parameter gradient
      gp.input_type = st_;
      gp.transpose_a = true;
      gp.m = nr, gp.n = nc, gp.k = e.rows;
      gp.a = advance(dy, rr.begin, st_), gp.lda = e.out;
      gp.b = advance(x, cr.begin, st_), gp.ldb = e.in;
      TAPE_ASSIGN_OR_RETURN(c, zeroed(nr * nc));
      gp.c = c, gp.ldc = nc;
      TAPE_RETURN_IF_ERROR(backend_.gemm(gp));
      TAPE_RETURN_IF_ERROR(
          grads_.accumulate(e.weight, rr.begin, cr.begin, nr, nc, pgrad_.data(), nc));
    }
  }
  for (const IndexRun& cr : grads_.col_runs(e.bias)) {
    const int64_t nc = cr.end - cr.begin;
    TAPE_ASSIGN_OR_RETURN(db, zeroed(nc));
    TAPE_RETURN_IF_ERROR(
        backend_.column_sums_stored(st_, advance(dy, cr.begin, st_), e.rows, nc, e.out, db));
    TAPE_RETURN_IF_ERROR(grads_.accumulate(e.bias, 0, cr.begin, 1, nc, db, nc));
  }
  if (needs(e.x)) {
    TAPE_ASSIGN_OR_RETURN(gx, grad_of(e.x));
    GemmParams gp;  // dX (rows, in) = dY (rows, out) . W (out, in)
    gp.input_type = gp.output_type = st_;
    gp.m = e.rows, gp.n = e.in, gp.k = e.out;
    gp.a = dy, gp.lda = e.out;
    gp.b = e.weight.data, gp.ldb = e.in;
    gp.c = gx->data.data(), gp.ldc = e.in;
    gp.beta = gx->written ? 1.0f : 0.0f;
    TAPE_RETURN_IF_ERROR(backend_.gemm(gp));
    gx->written = true;
  }
  if (needs(e.residual)) {
    TAPE_ASSIGN_OR_RETURN(gr, grad_of(e.residual));
    if (gr->written) {
      TAPE_RETURN_IF_ERROR(add(gr->data.data(), dy, e.rows * e.out));
    } else {
      TAPE_RETURN_IF_ERROR(backend_.copy_on_device(gr->data.data(), dy, bytes(e.rows * e.out)));
    }
    gr->written = true;
  }
  return release(e.y);
}

absl::Status Tape::Backward::op(const TapeAttention& e) {
  const void* dy = output_grad(e.out);
  if (dy == nullptr) return absl::OkStatus();
  if (!needs(e.qkv)) return absl::OkStatus();
  AlibiAttentionParams p = e.forward;
  p.stats = HeadStatsAccumulator{};
  p.dout = dy;
  TAPE_ASSIGN_OR_RETURN(dqkv, overwrite_target(e.qkv));
  p.dqkv = dqkv;
  TAPE_RETURN_IF_ERROR(backend_.alibi_attention_backward(p));
  TAPE_RETURN_IF_ERROR(finish_overwrite(e.qkv));
  return release(e.out);
}

absl::Status Tape::Backward::op(const TapeGelu& e) {
  const void* dy = output_grad(e.y);
  if (dy == nullptr) return absl::OkStatus();
  if (!needs(e.x)) return absl::OkStatus();
  GeluParams p;
  p.storage = st_;
  p.n = e.n;
  p.exact = e.exact;
  p.x = tape_.values_[e.x].data;
  p.dy = dy;
  TAPE_ASSIGN_OR_RETURN(dx, overwrite_target(e.x));
  p.dx = dx;
  TAPE_RETURN_IF_ERROR(backend_.gelu_backward(p));
  TAPE_RETURN_IF_ERROR(finish_overwrite(e.x));
  return release(e.y);
}

absl::Status Tape::Backward::op(const TapeClamp& e) {
  const void* dy = output_grad(e.y);
  if (dy == nullptr) return absl::OkStatus();
  if (!needs(e.x)) return absl::OkStatus();
  if (st_ != DType::kF32 || backend_.kind() != DeviceKind::kCpu) {
    return absl::UnimplementedError("clamp backward: runs on the CPU with f32 storage only");
  }
  TAPE_ASSIGN_OR_RETURN(target, overwrite_target(e.x));
  const float* x = static_cast<const float*>(tape_.values_[e.x].data);
  const float* g = static_cast<const float*>(dy);
  float* dx = static_cast<float*>(target);
  const float lo = e.lo, hi = e.hi;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < e.n; ++i) dx[i] = (x[i] > lo && x[i] < hi) ? g[i] : 0.0f;
  TAPE_RETURN_IF_ERROR(finish_overwrite(e.x));
  return release(e.y);
}

#undef TAPE_ASSIGN_OR_RETURN
#undef TAPE_RETURN_IF_ERROR

namespace {

// The compact gradient must live where the backward runs (host memory counts as the CPU's).
absl::Status check_backend(const Backend& backend, const CompactGradients& grads) {
  if (!grads.status().ok()) return grads.status();
  if (grads.backend().kind() != backend.kind()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tape: the compact gradient lives on ", std::string(grads.backend().name()),
        " but the backward runs on ", std::string(backend.name())));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Tape::backward(Backend& backend, CompactGradients& grads, float loss_scale) {
  if (entries_.empty() || !std::holds_alternative<TapeClassifier>(entries_.back())) {
    return absl::FailedPreconditionError("tape: the last entry must be the classifier (the loss)");
  }
  if (absl::Status s = check_backend(backend, grads); !s.ok()) return s;
  grads_.clear();
  grads_.resize(values_.size());
  return Backward(*this, backend, grads, loss_scale).run();
}

absl::Status Tape::backward_from(Backend& backend, CompactGradients& grads, int value,
                                 const void* seed) {
  if (value < 0 || value >= static_cast<int>(values_.size()) || values_[value].producer < 0) {
    return absl::FailedPreconditionError("tape: backward_from needs a produced value");
  }
  if (absl::Status s = check_backend(backend, grads); !s.ok()) return s;
  grads_.clear();
  grads_.resize(values_.size());
  const size_t seed_bytes = static_cast<size_t>(values_[value].size) * dtype_size(storage_);
  if (absl::Status s = grads_[value].data.resize(backend, static_cast<int64_t>(seed_bytes));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = backend.copy_on_device(grads_[value].data.data(), seed, seed_bytes);
      !s.ok()) {
    return s;
  }
  grads_[value].written = true;
  return Backward(*this, backend, grads, 1.0f).run();
}

}  // namespace engine
