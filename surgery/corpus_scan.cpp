// Corpus diagnosis: data file -> sequences -> forward statistics -> DiagnosisAccumulator.
#include "surgery/corpus_scan.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "model/bloom_forward.h"
#include "model/device_model.h"

namespace engine {
namespace {

// Id written at padded positions. Padded keys are never attended and padded query rows never
// enter the statistics, so any in-vocabulary id does; 0 exists in every vocabulary.
constexpr int32_t kPaddingId = 0;

// for_each_document has no "stop" signal of its own; the sink returns this status once
// max_seqs sequences are collected and read_diagnosis_sequences turns it back into success.
absl::Status enough_sequences() { return absl::CancelledError("enough sequences"); }

}  // namespace

void append_document_sequences(std::span<const uint32_t> ids, SequenceCut cut,
                               const SequenceOptions& options, std::vector<TokenSequence>& out) {
  const size_t seq_len = static_cast<size_t>(options.seq_len);
  auto full = [&] {
    return options.max_seqs > 0 && static_cast<int64_t>(out.size()) >= options.max_seqs;
  };
  if (ids.empty() || seq_len == 0 || full()) return;
  if (cut == SequenceCut::kTruncate || ids.size() <= seq_len) {
    const size_t n = std::min(ids.size(), seq_len);
    out.emplace_back(ids.begin(), ids.begin() + n);
    return;
  }
  for (size_t start = 0; start + seq_len <= ids.size() && !full(); start += seq_len) {
    out.emplace_back(ids.begin() + start, ids.begin() + start + seq_len);
  }
}

absl::StatusOr<std::vector<TokenSequence>> read_diagnosis_sequences(
    const std::string& path, const DataReadOptions& read, const SequenceOptions& options) {
  if (options.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len must be positive, got ", options.seq_len));
  }
  if (options.max_seqs < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_seqs must be 0 (all) or positive, got ", options.max_seqs));
  }
  const SequenceCut cut =
      data_format_of(path) == DataFormat::kJsonLines ? SequenceCut::kTruncate : SequenceCut::kSplit;
  std::vector<TokenSequence> sequences;
  absl::Status s = for_each_document(path, read, [&](std::span<const uint32_t> ids) {
    append_document_sequences(ids, cut, options, sequences);
    if (options.max_seqs > 0 && static_cast<int64_t>(sequences.size()) >= options.max_seqs) {
      return enough_sequences();
    }
    return absl::OkStatus();
  });
  if (!s.ok() && !absl::IsCancelled(s)) return s;
  if (sequences.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no non-empty sequence to diagnose"));
  }
  return sequences;
}

absl::Status scan_sequences(const BloomModel& model, Backend& backend,
                            const std::vector<TokenSequence>& sequences, int64_t batch,
                            DiagnosisAccumulator& accumulator, const ScanProgress& progress) {
  const BloomConfig& c = model.config;
  const int64_t L = c.n_layer, H = c.n_head;
  if (batch <= 0) return absl::InvalidArgumentError(absl::StrCat("batch must be positive, got ", batch));
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " is empty"));
    }
    for (size_t t = 0; t < sequences[i].size(); ++t) {
      const int32_t id = sequences[i][t];
      if (id < 0 || id >= c.vocab_size) {
        return absl::OutOfRangeError(absl::StrCat("sequence ", i, " position ", t, ": id ", id,
                                                  " is outside the model's vocabulary of ",
                                                  c.vocab_size));
      }
    }
  }
  const int64_t total = static_cast<int64_t>(sequences.size());
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
  SequenceHeadStats one;
  one.bos_mass.resize(L * H);
  one.entropy.resize(L * H);
  one.local_mass.resize(L * H);
  for (int64_t first = 0; first < total; first += batch) {
    const int64_t B = std::min(batch, total - first);
    int64_t T = 0;
    for (int64_t b = 0; b < B; ++b) T = std::max<int64_t>(T, sequences[first + b].size());
    ids.assign(B * T, kPaddingId);  // (B, T)
    mask.assign(B * T, 0);          // (B, T)
    bool padded = false;
    for (int64_t b = 0; b < B; ++b) {
      const TokenSequence& seq = sequences[first + b];
      std::copy(seq.begin(), seq.end(), ids.begin() + b * T);
      std::fill_n(mask.begin() + b * T, seq.size(), uint8_t{1});
      padded = padded || static_cast<int64_t>(seq.size()) < T;
    }
    ForwardInputs in;
    in.batch = B;
    in.seq = T;
    in.ids = ids.data();
    in.mask = padded ? mask.data() : nullptr;
    in.want_stats = true;
    absl::StatusOr<ForwardResult> r = bloom_forward(model, backend, in);
    if (!r.ok()) {
      return absl::Status(r.status().code(),
                          absl::StrCat("sequences ", first, "..", first + B - 1, ": ",
                                       std::string(r.status().message())));
    }
    const HeadStats& st = r->stats;
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t h = 0; h < H; ++h) {
          one.bos_mass[l * H + h] = st.at(st.bos_mass, l, b, h);
          one.entropy[l * H + h] = st.at(st.entropy, l, b, h);
          one.local_mass[l * H + h] = st.at(st.local_mass, l, b, h);
        }
      }
      if (absl::Status s = accumulator.add(one, st.rows[b]); !s.ok()) return s;
    }
    if (progress) progress(first + B, total);
  }
  return absl::OkStatus();
}

nlohmann::json model_summary(const BloomConfig& config, const std::string& name) {
  return nlohmann::json{{"name", name},
                        {"n_layer", config.n_layer},
                        {"n_head", config.n_head},
                        {"hidden_size", config.hidden_size},
                        {"head_dim", config.head_dim()},
                        {"vocab_size", config.vocab_size}};
}

absl::StatusOr<DiagnosisReport> diagnose_sequences(const BloomModel& model, Backend& backend,
                                                   const std::vector<TokenSequence>& sequences,
                                                   const DiagnoseOptions& options,
                                                   const ScanProgress& progress) {
  if (sequences.empty()) return absl::InvalidArgumentError("no sequences to diagnose");
  if (absl::Status s = validate_thresholds(options.thresholds); !s.ok()) return s;
  DiagnosisAccumulator accumulator(model.config.n_layer, model.config.n_head);
  if (absl::Status s = scan_sequences(model, backend, sequences, options.batch, accumulator, progress);
      !s.ok()) {
    return s;
  }
  nlohmann::json summary = model_summary(model.config, options.model_name);
  summary["device"] = std::string(backend.name());  // where the statistics were computed
  summary["storage"] = dtype_name(storage_on(model, backend));  // and in which storage type
  return accumulator.finish(options.thresholds, attention_slopes(model.config), summary,
                            options.seq_len);
}

absl::Status validate_thresholds(const Thresholds& t) {
  for (auto [name, v] : {std::pair<const char*, double>{"dead", t.dead},
                         {"sink", t.sink},
                         {"low_entropy", t.low_entropy}}) {
    if (!std::isfinite(v)) return absl::InvalidArgumentError(absl::StrCat("threshold ", name, " is not finite"));
  }
  if (t.dead < 0 || t.dead > 1) {
    return absl::InvalidArgumentError(absl::StrCat("threshold dead = ", t.dead, " is outside [0, 1]"));
  }
  if (t.sink < 0) {
    return absl::InvalidArgumentError(absl::StrCat("threshold sink = ", t.sink, " is negative"));
  }
  if (t.sink > t.dead) {
    return absl::InvalidArgumentError(absl::StrCat("threshold sink = ", t.sink,
                                                   " is above dead = ", t.dead,
                                                   ": no head could be SINK"));
  }
  if (t.low_entropy < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("threshold low_entropy = ", t.low_entropy, " is negative"));
  }
  return absl::OkStatus();
}

}  // namespace engine
