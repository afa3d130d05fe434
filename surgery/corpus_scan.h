// Corpus diagnosis: turns a data file (or one prompt) into sequences, runs the BLOOM forward pass
// over them with per-head statistics, and feeds each sequence's (L, H) statistics into a
// DiagnosisAccumulator (surgery/diagnosis.h), which yields the report.
// Contract:
// - Sequences (docs/DIAGNOSE.md, "Which sequences"): a .jsonl line is one sequence, truncated to
//   seq_len; a .txt document or a token-file document is cut into consecutive sequences of
//   seq_len tokens, and a final piece shorter than seq_len is kept only when it is the whole
//   document (a fragment would weigh as much as a full sequence in the unweighted mean). Empty
//   documents give no sequence. `max_seqs` > 0 stops after that many sequences, in file order.
// - Each sequence is one batch row, right-padded to the longest row of its batch; its statistics
//   are means over its own real query rows (padding never enters them), so the report does not
//   depend on the batch size beyond float rounding.
// - The statistics come from the fused attention kernel; no (T, T) matrix is materialised, so the
//   memory a scan needs grows with batch x heads x seq_len (plus the activations, rows x hidden),
//   never with seq_len squared. No logits are computed.
// - Errors are one line naming the file, sequence or position at fault.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend.h"
#include "model/dataset.h"
#include "model/model_directory.h"
#include "nlohmann/json.hpp"
#include "surgery/diagnosis.h"

namespace engine {

using TokenSequence = std::vector<int32_t>;

struct SequenceOptions {
  int64_t seq_len = 512;
  int64_t max_seqs = 0;  // 0 = every sequence of the file
};

// How one document becomes sequences.
enum class SequenceCut {
  kTruncate,  // the document's first seq_len tokens (.jsonl lines, a prompt)
  kSplit,     // consecutive seq_len pieces, tail kept only if it is the whole document
};

// Appends the sequences of one document to `out`, never growing `out` past `max_seqs` (> 0).
void append_document_sequences(std::span<const uint32_t> ids, SequenceCut cut,
                               const SequenceOptions& options, std::vector<TokenSequence>& out);

// The sequences of a data file (.txt, .jsonl or token file, as model/dataset.h reads them).
absl::StatusOr<std::vector<TokenSequence>> read_diagnosis_sequences(
    const std::string& path, const DataReadOptions& read, const SequenceOptions& options);

// Called after each batch with (sequences done, sequences total).
using ScanProgress = std::function<void(int64_t, int64_t)>;

// Runs the forward pass over `sequences`, `batch` at a time, and adds every sequence's statistics
// to `accumulator` (which must have the model's layer and head counts).
absl::Status scan_sequences(const BloomModel& model, Backend& backend,
                            const std::vector<TokenSequence>& sequences, int64_t batch,
                            DiagnosisAccumulator& accumulator,
                            const ScanProgress& progress = nullptr);

// The report's "model" object: name, n_layer, n_head, hidden_size, head_dim, vocab_size.
nlohmann::json model_summary(const BloomConfig& config, const std::string& name);

struct DiagnoseOptions {
  int64_t seq_len = 512;  // recorded in the report's "data" (the cut length)
  int64_t batch = 1;
  Thresholds thresholds;
  std::string model_name;
};

// scan_sequences + finish: the whole report. Fails when `sequences` is empty.
absl::StatusOr<DiagnosisReport> diagnose_sequences(const BloomModel& model, Backend& backend,
                                                   const std::vector<TokenSequence>& sequences,
                                                   const DiagnoseOptions& options,
                                                   const ScanProgress& progress = nullptr);

// Thresholds must be finite, 0 <= sink <= dead <= 1 and low_entropy >= 0; the error names the
// offending one.
absl::Status validate_thresholds(const Thresholds& t);

}  // namespace engine
