// `engine generate --model DIR (--prompt TEXT | --prompt_ids ID,ID,...) [--max_new_tokens N]
//   [--temperature T] [--top_p P] [--seed S] [--json]`:
// incremental decoding with a KV cache (model/bloom_forward.h), greedy (argmax, lowest id on
// ties) when the temperature is 0, otherwise sampling from softmax(logits / T) restricted to the
// smallest set of most likely tokens whose mass reaches top_p. Each new token's text is written
// to stdout as soon as it is produced; decoding stops after N tokens or at </s>. --json instead
// prints one object {"prompt_ids": [...], "output_ids": [...], "text": "...", "device": "cpu"}
// at the end. --device cuda keeps the weights and the KV cache on the GPU.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/model_loading.h"
#include "model/bloom_forward.h"
#include "model/device_model.h"
#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_DECLARE_FLAG(std::string, tokenizer);
ABSL_FLAG(std::string, prompt, "", "generate: prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "generate: prompt as comma-separated token ids");
ABSL_FLAG(int, max_new_tokens, 32, "generate: tokens to produce");
ABSL_FLAG(double, temperature, 0.0, "generate: sampling temperature (0 = greedy)");
ABSL_FLAG(double, top_p, 1.0, "generate: nucleus sampling mass in (0, 1]");

namespace engine::cli {
namespace {

int32_t greedy(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t sample(const std::vector<float>& logits, double temperature, double top_p,
               std::mt19937_64& rng) {
  const float mx = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0.0;
  for (size_t i = 0; i < p.size(); ++i) sum += p[i] = std::exp((logits[i] - mx) / temperature);
  std::vector<int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  double kept = 0.0;
  size_t n = 0;
  while (n < order.size() && (n == 0 || kept < top_p * sum)) kept += p[order[n++]];
  std::uniform_real_distribution<double> u(0.0, kept);
  double x = u(rng);
  for (size_t i = 0; i < n; ++i) {
    x -= p[order[i]];
    if (x <= 0.0) return order[i];
  }
  return order[n - 1];
}

}  // namespace

int run_generate(const std::vector<std::string>& args) {
  apply_thread_flag();
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  absl::StatusOr<BloomModel> model = load_checked_model(model_dir);
  if (!model.ok()) return fail(std::string(model.status().message()));
  const int max_new = absl::GetFlag(FLAGS_max_new_tokens);
  const double temperature = absl::GetFlag(FLAGS_temperature);
  const double top_p = absl::GetFlag(FLAGS_top_p);
  if (max_new < 0) return fail("generate: --max_new_tokens must be >= 0");
  if (temperature < 0.0) return fail("generate: --temperature must be >= 0");
  if (!(top_p > 0.0 && top_p <= 1.0)) return fail("generate: --top_p must be in (0, 1]");

  std::string tok_path = absl::GetFlag(FLAGS_tokenizer);
  if (tok_path.empty()) tok_path = (std::filesystem::path(model_dir) / "tokenizer.json").string();
  absl::StatusOr<Tokenizer> tokenizer = Tokenizer::load(tok_path);
  if (!tokenizer.ok()) return fail(std::string(tokenizer.status().message()));

  std::vector<int32_t> ids;
  const std::string prompt_ids = absl::GetFlag(FLAGS_prompt_ids);
  if (!prompt_ids.empty()) {
    for (absl::string_view piece : absl::StrSplit(prompt_ids, ',')) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(piece, &id)) {
        return fail(absl::StrCat("generate: --prompt_ids: '", std::string(piece), "' is not an id"));
      }
      ids.push_back(id);
    }
  } else {
    absl::StatusOr<std::vector<uint32_t>> enc = tokenizer->encode(absl::GetFlag(FLAGS_prompt));
    if (!enc.ok()) return fail(std::string(enc.status().message()));
    ids.assign(enc->begin(), enc->end());
  }
  if (ids.empty()) return fail("generate: the prompt is empty (give --prompt or --prompt_ids)");
  const std::vector<int32_t> prompt = ids;
  const std::optional<uint32_t> eos = tokenizer->token_to_id("</s>");
  const bool json = absl::GetFlag(FLAGS_json);

  // ALiBi has no position table, so BLOOM takes any context length; the bound is memory. The KV
  // cache holds (L, context, 3C) floats and is allocated up front, so a context whose cache
  // exceeds this machine's physical memory is refused here rather than inside the allocator.
  const int64_t context = static_cast<int64_t>(prompt.size()) + max_new;
  const double cache_bytes = static_cast<double>(model->config.n_layer) * context * 3 *
                             model->config.hidden_size * sizeof(float);
  const double memory_bytes =
      static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  if (cache_bytes > memory_bytes) {
    return fail(absl::StrFormat(
        "generate: a context of %d tokens (prompt %d + --max_new_tokens %d) needs a %.1f GiB KV "
        "cache, more than this machine's %.1f GiB of memory",
        context, prompt.size(), max_new, cache_bytes / kGiB, memory_bytes / kGiB));
  }

  absl::StatusOr<std::unique_ptr<Backend>> device = command_backend_for("generate", *model);
  if (!device.ok()) return fail(std::string(device.status().message()));
  std::unique_ptr<Backend> backend = *std::move(device);
  KvCache cache(model->config, context);
  std::mt19937_64 rng(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  std::string text;
  const int32_t* step_ids = ids.data();
  int64_t step_count = static_cast<int64_t>(ids.size());
  for (int i = 0; i < max_new; ++i) {
    absl::StatusOr<std::vector<float>> logits =
        bloom_decode_step(*model, *backend, cache, step_ids, step_count);
    if (!logits.ok()) return fail(std::string(logits.status().message()));
    const int32_t next =
        temperature == 0.0 ? greedy(*logits) : sample(*logits, temperature, top_p, rng);
    ids.push_back(next);
    if (eos.has_value() && static_cast<uint32_t>(next) == *eos) break;
    const uint32_t id = static_cast<uint32_t>(next);
    absl::StatusOr<std::string> piece = tokenizer->decode(std::span<const uint32_t>(&id, 1));
    if (!piece.ok()) return fail(std::string(piece.status().message()));
    text += *piece;
    if (!json) {
      std::fwrite(piece->data(), 1, piece->size(), stdout);
      std::fflush(stdout);
    }
    step_ids = &ids.back();
    step_count = 1;
  }
  if (json) {
    nlohmann::json j = {{"prompt_ids", prompt},
                        {"output_ids", ids},
                        {"text", text},
                        {"device", std::string(backend->name())},
                        {"dtype", dtype_name(storage_on(*model, *backend))}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("\n");
  }
  return 0;
}

}  // namespace engine::cli
