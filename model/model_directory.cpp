#include "model/model_directory.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <system_error>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "engine/io.h"
#include "model/bloom_layout.h"
#include "model/checkpoint_manifest.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace engine {

namespace fs = std::filesystem;

const char* const kTokenizerFiles[3] = {"tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json"};

namespace {

constexpr char kConfigFile[] = "config.json";
constexpr char kSingleWeightsFile[] = "model.safetensors";
constexpr char kShardIndexFile[] = "model.safetensors.index.json";
constexpr char kPickleWeightsFile[] = "pytorch_model.bin";
constexpr char kPickleShardIndexFile[] = "pytorch_model.bin.index.json";
// transformers' BloomForCausalLM nests the BLOOM body under this attribute name.
constexpr char kCausalLmPrefix[] = "transformer.";
constexpr char kTiedHeadName[] = "lm_head.weight";
// Elements per conversion task: large enough to amortise scheduling, small enough to balance.
constexpr size_t kConversionChunkElements = size_t{1} << 20;
// Loading converts and releases (MappedFile::release) a tensor's mapped bytes this many elements
// at a time: large enough to keep every thread of the conversion busy.
constexpr size_t kLoadSliceElements = size_t{1} << 24;

struct WeightSource {
  std::vector<fs::path> files;
  // For sharded checkpoints: tensor name (as spelled in the index) -> file name.
  std::optional<std::map<std::string, std::string>> weight_map;
  fs::path index;
};

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

absl::StatusOr<WeightSource> find_weights(const fs::path& dir) {
  WeightSource src;
  if (path_exists(dir / kSingleWeightsFile)) {
    src.files.push_back(dir / kSingleWeightsFile);
    return src;
  }
  if (path_exists(dir / kShardIndexFile)) {
    src.index = dir / kShardIndexFile;
    const std::string name = src.index.string();
    absl::StatusOr<MappedFile> text = MappedFile::open(src.index);
    if (!text.ok()) return text.status();
    const auto* begin = reinterpret_cast<const char*>(text->data());
    const nlohmann::json j =
        nlohmann::json::parse(begin, begin + text->size(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": not a JSON object"));
    }
    const auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": field weight_map is missing or not an object"));
    }
    std::map<std::string, std::string> weight_map;
    std::set<std::string> files;
    for (const auto& [tensor, file] : wm->items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": weight_map entry for tensor ", tensor, " is not a file name"));
      }
      const std::string f = file.get<std::string>();
      // Shards must sit next to the index: a path could otherwise point anywhere on disk.
      if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, ": weight_map entry for tensor ", tensor, " names \"", f,
                         "\", which is not a plain file name in the model directory"));
      }
      weight_map.emplace(tensor, f);
      if (files.insert(f).second) src.files.push_back(dir / f);
    }
    src.weight_map = std::move(weight_map);
    return src;
  }
  if (path_exists(dir / kPickleWeightsFile) || path_exists(dir / kPickleShardIndexFile)) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir.string(), ": only PyTorch pickle weights (", kPickleWeightsFile,
        ") found; convert them with scripts/convert_pytorch_bin.py (the engine never unpickles)"));
  }
  return absl::NotFoundError(absl::StrCat(dir.string(), ": no ", kSingleWeightsFile, " or ",
                                          kShardIndexFile, " in the model directory"));
}

// Converts n elements of a float dtype at `src` (any alignment) to f32 at `dst`, in parallel.
void convert_weights_to_f32(DType from, const uint8_t* src, float* dst, size_t n) {
  const size_t element = dtype_size(from);
  const size_t chunks = (n + kConversionChunkElements - 1) / kConversionChunkElements;
  // A data section that starts at an odd address (an unpadded header) leaves 16-bit elements
  // misaligned; reading them through uint16_t* would be undefined, so those go via a bounce copy.
  const bool aligned = reinterpret_cast<uintptr_t>(src) % element == 0;
#pragma omp parallel for schedule(static)
  for (size_t c = 0; c < chunks; ++c) {
    const size_t start = c * kConversionChunkElements;
    const size_t count = std::min(kConversionChunkElements, n - start);
    if (aligned) {
      convert_to_f32(from, src + start * element, dst + start, count);
    } else {
      // float storage is aligned for every weight dtype (4, 2 bytes).
      std::vector<float> bounce((count * element + sizeof(float) - 1) / sizeof(float));
      std::memcpy(bounce.data(), src + start * element, count * element);
      convert_to_f32(from, bounce.data(), dst + start, count);
    }
  }
}

bool is_float_weight(const SafetensorsTensorInfo& t) {
  return t.dtype == DType::kF32 || t.dtype == DType::kF16 || t.dtype == DType::kBF16;
}

// With a tied head: verifies that a lm_head.weight tensor equals the (already loaded) embedding
// bit for bit (an untied config loads it as a parameter instead).
absl::Status check_tied_head(const SafetensorsFile& file, const SafetensorsTensorInfo& head,
                             const TensorView& embedding, const BloomConfig& config) {
  const std::string kEmbeddingName = parameter_name(config, ParamRole::kEmbedding);
  const std::string family =
      config.family == ModelFamily::kBloom ? "BLOOM" : absl::AsciiStrToUpper(family_name(config.family));
  const std::string where = absl::StrCat(file.path().string(), ": tensor ", head.name, ": ");
  if (head.shape != embedding.shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "shape ", shape_string(head.shape), " differs from ", kEmbeddingName, " ",
        shape_string(embedding.shape), "; ", family, " ties the LM head to the embedding"));
  }
  if (!is_float_weight(head)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "dtype ", head.dtype_name, " is not a float weight type"));
  }
  const size_t n = static_cast<size_t>(head.numel);
  std::vector<float> converted(std::min(n, kConversionChunkElements));
  const float* emb = embedding.as<float>();
  for (size_t start = 0; start < n; start += kConversionChunkElements) {
    const size_t count = std::min(kConversionChunkElements, n - start);
    convert_weights_to_f32(*head.dtype, file.tensor_data(head) + start * head.element_size,
                           converted.data(), count);
    if (std::memcmp(converted.data(), emb + start, count * sizeof(float)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "differs from ", kEmbeddingName,
                       "; config.json ties the two (tie_word_embeddings is not false), so ",
                       family, "'s LM head is the embedding and a different one would be dropped"));
    }
  }
  return absl::OkStatus();
}

bool is_qkv_tensor(const BloomConfig& c, const std::string& name) {
  for (int64_t l = 0; l < c.n_layer; ++l) {
    if (name == parameter_name(c, ParamRole::kQkvWeight, l) ||
        name == parameter_name(c, ParamRole::kQkvBias, l)) {
      return true;
    }
  }
  return false;
}

// A fused QKV tensor (3C rows of `width` floats each, arena order) in the checkpoint's row order.
std::vector<float> qkv_rows_in_file_order(const BloomConfig& c, const TensorView& v) {
  const int64_t rows = 3 * c.hidden_size;
  const int64_t width = v.numel() / rows;
  const float* src = v.as<const float>();
  std::vector<float> out(static_cast<size_t>(v.numel()));
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(out.data() + qkv_file_row(c, r) * width, src + r * width, width * sizeof(float));
  }
  return out;
}

// Loading: turns every fused QKV tensor from the checkpoint's row order into the arena's.
void permute_qkv_rows(BloomModel& m) {
  if (!family_traits(m.config).qkv_blocks) return;
  const int64_t rows = 3 * m.config.hidden_size;
  for (const ParameterInfo& p : m.arena.parameters()) {
    if (!is_qkv_tensor(m.config, p.name)) continue;
    TensorView v = m.arena.view(p);
    const int64_t width = v.numel() / rows;
    float* data = v.as<float>();
    const std::vector<float> file(data, data + v.numel());
    for (int64_t r = 0; r < rows; ++r) {
      std::memcpy(data + r * width, file.data() + qkv_file_row(m.config, r) * width,
                  width * sizeof(float));
    }
  }
}

}  // namespace

absl::StatusOr<BloomModel> allocate_bloom_model(const BloomConfig& config) {
  BloomModel m;
  m.config = config;
  m.arena = ParameterArena(DType::kF32);
  if (absl::Status s = declare_bloom_parameters(config, m.arena); !s.ok()) return s;
  if (absl::Status s = m.arena.allocate(); !s.ok()) return s;
  return m;
}

absl::StatusOr<std::vector<fs::path>> model_weight_files(const fs::path& dir) {
  absl::StatusOr<WeightSource> src = find_weights(dir);
  if (!src.ok()) return src.status();
  return src->files;
}

absl::StatusOr<std::vector<std::string>> model_directory_read_files(const fs::path& dir) {
  absl::StatusOr<WeightSource> src = find_weights(dir);
  if (!src.ok()) return src.status();
  std::vector<std::string> names = {kConfigFile};
  if (!src->index.empty()) names.push_back(src->index.lexically_relative(dir).string());
  for (const fs::path& f : src->files) names.push_back(f.lexically_relative(dir).string());
  return names;
}

namespace {

// With a manifest, the files the loader reads must match it before any of them is parsed, so a
// flipped byte is reported as such rather than as whatever parse error it happens to cause.
// Without one there is nothing to check; a directory whose weights cannot be found is left to
// the loader's own, more specific error.
absl::Status verify_read_files(const fs::path& dir) {
  absl::StatusOr<std::optional<Manifest>> manifest = read_manifest(dir);
  if (!manifest.ok()) return manifest.status();
  if (!manifest->has_value()) return absl::OkStatus();
  absl::StatusOr<std::vector<std::string>> names = model_directory_read_files(dir);
  if (!names.ok()) return absl::OkStatus();
  return verify_manifest_files(dir, **manifest, *names);
}

}  // namespace

namespace {

// Where each parameter's data lives, after every check that needs no tensor data has passed.
struct LoadPlan {
  BloomConfig config;
  WeightSource source;
  std::vector<SafetensorsFile> files;
  struct Placement {
    std::string name;  // canonical parameter name
    size_t file;
    size_t tensor;  // index into files[file].header().tensors
  };
  std::vector<Placement> placements;
  std::vector<Placement> tied_heads;  // lm_head.weight tensors, checked once data is loaded
  DType source_dtype = DType::kF32;
};

absl::StatusOr<LoadPlan> plan_model_directory(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir.string(), ": model directory does not exist"));
  }
  if (!fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(dir.string(), ": not a directory"));
  }
  if (!path_exists(dir / kConfigFile)) {
    return absl::NotFoundError(
        absl::StrCat((dir / kConfigFile).string(), ": missing; a model directory needs one"));
  }
  LoadPlan plan;
  absl::StatusOr<BloomConfig> config = load_bloom_config(dir / kConfigFile);
  if (!config.ok()) return config.status();
  plan.config = *std::move(config);
  absl::StatusOr<WeightSource> src = find_weights(dir);
  if (!src.ok()) return src.status();
  plan.source = *std::move(src);

  std::map<std::string, std::vector<int64_t>> expected;
  for (BloomParameterSpec& spec : bloom_parameter_specs(plan.config)) {
    expected.emplace(std::move(spec.name), std::move(spec.shape));
  }
  // Canonical name -> "file tensor spelling" it was found as (to report duplicates).
  std::map<std::string, std::string> found;
  std::optional<DType> embedding_dtype;
  plan.files.reserve(plan.source.files.size());
  for (const fs::path& path : plan.source.files) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::open(path);
    if (!file.ok()) return file.status();
    plan.files.push_back(*std::move(file));
    const size_t file_index = plan.files.size() - 1;
    const std::vector<SafetensorsTensorInfo>& tensors = plan.files.back().header().tensors;
    const std::string fname = path.string();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const SafetensorsTensorInfo& t = tensors[i];
      const std::string where = absl::StrCat(fname, ": tensor ", t.name, ": ");
      if (plan.source.weight_map) {
        const auto it = plan.source.weight_map->find(t.name);
        if (it == plan.source.weight_map->end() || it->second != path.filename().string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, "not listed for this file in ", kShardIndexFile));
        }
      }
      std::string name = t.name;
      if (name.rfind(kCausalLmPrefix, 0) == 0) name.erase(0, std::strlen(kCausalLmPrefix));
      if (name == kTiedHeadName && plan.config.tie_word_embeddings) {
        plan.tied_heads.push_back({name, file_index, i});
        continue;
      }
      const auto shape = expected.find(name);
      if (shape == expected.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "unexpected: not a parameter of ",
                         plan.config.family == ModelFamily::kBloom
                             ? std::string("BLOOM")
                             : absl::AsciiStrToUpper(family_name(plan.config.family)),
                         " with the config's ",
                         plan.config.n_layer, " layers"));
      }
      if (const auto it = found.find(name); it != found.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "duplicate of ", it->second, " (both name ", name, ")"));
      }
      if (t.shape != shape->second) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "shape ", shape_string(t.shape), " does not match ",
                         shape_string(shape->second), " implied by config.json"));
      }
      if (!is_float_weight(t)) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "dtype ", t.dtype_name, " is not a float weight type (F32, F16, BF16)"));
      }
      if (name == parameter_name(plan.config, ParamRole::kEmbedding)) embedding_dtype = t.dtype;
      found.emplace(name, absl::StrCat(fname, " tensor ", t.name));
      plan.placements.push_back({name, file_index, i});
    }
  }
  if (plan.source.weight_map) {
    for (const auto& [tensor, file] : *plan.source.weight_map) {
      const auto pos = std::find(plan.source.files.begin(), plan.source.files.end(), dir / file);
      const SafetensorsFile& f = plan.files[static_cast<size_t>(pos - plan.source.files.begin())];
      if (f.header().find(tensor) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(plan.source.index.string(), ": tensor ",
                                                       tensor, " is listed in ", file,
                                                       " but that file does not contain it"));
      }
    }
  }
  size_t missing = 0;
  std::string first_missing;
  for (const BloomParameterSpec& spec : bloom_parameter_specs(plan.config)) {
    if (found.count(spec.name) != 0) continue;
    if (missing++ == 0) first_missing = absl::StrCat(spec.name, " ", shape_string(spec.shape));
  }
  if (missing != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir.string(), ": tensor ", first_missing, " is missing from the weights (",
                     missing, " of ", expected.size(), " parameters missing)"));
  }
  plan.source_dtype = embedding_dtype.value_or(DType::kF32);
  return plan;
}

uint64_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(p, ec);
  return ec ? 0 : static_cast<uint64_t>(size);
}

}  // namespace

absl::StatusOr<ModelDirectoryInfo> inspect_model_directory(const fs::path& dir) {
  absl::StatusOr<LoadPlan> plan = plan_model_directory(dir);
  if (!plan.ok()) return plan.status();
  ModelDirectoryInfo info;
  info.config = plan->config;
  info.source_dtype = plan->source_dtype;
  info.files.push_back({dir / kConfigFile, file_size_or_zero(dir / kConfigFile)});
  if (!plan->source.index.empty()) {
    info.files.push_back({plan->source.index, file_size_or_zero(plan->source.index)});
  }
  for (const SafetensorsFile& f : plan->files) info.files.push_back({f.path(), f.file_size()});
  for (const char* name : kTokenizerFiles) {
    if (path_exists(dir / name)) info.files.push_back({dir / name, file_size_or_zero(dir / name)});
  }
  return info;
}

absl::StatusOr<BloomModel> load_model_directory(const fs::path& dir) {
  if (absl::Status s = verify_read_files(dir); !s.ok()) return s;
  absl::StatusOr<LoadPlan> plan = plan_model_directory(dir);
  if (!plan.ok()) return plan.status();
  absl::StatusOr<BloomModel> model = allocate_bloom_model(plan->config);
  if (!model.ok()) return model.status();
  model->source = dir;
  model->source_dtype = plan->source_dtype;
  for (const LoadPlan::Placement& p : plan->placements) {
    const SafetensorsFile& f = plan->files[p.file];
    const SafetensorsTensorInfo& t = f.header().tensors[p.tensor];
    absl::StatusOr<TensorView> view = model->arena.view(p.name);
    if (!view.ok()) return view.status();
    // In slices, each released once copied: the embedding alone is 1 GB in bloom-560m, and
    // holding its mapped pages next to the arena copy raised the peak by that much.
    const size_t element = dtype_size(*t.dtype), n = static_cast<size_t>(t.numel);
    for (size_t start = 0; start < n; start += kLoadSliceElements) {
      const size_t count = std::min(kLoadSliceElements, n - start);
      convert_weights_to_f32(*t.dtype, f.tensor_data(t) + start * element,
                             view->as<float>() + start, count);
      f.release(t, start * element, count * element);
    }
  }
  permute_qkv_rows(*model);
  absl::StatusOr<TensorView> embedding =
      model->arena.view(parameter_name(model->config, ParamRole::kEmbedding));
  if (!embedding.ok()) return embedding.status();
  for (const LoadPlan::Placement& head : plan->tied_heads) {
    const SafetensorsFile& f = plan->files[head.file];
    if (absl::Status s = check_tied_head(f, f.header().tensors[head.tensor], *embedding,
                                         model->config);
        !s.ok()) {
      return s;
    }
    const SafetensorsTensorInfo& t = f.header().tensors[head.tensor];
    f.release(t, 0, t.end - t.begin);
  }
  return model;
}

absl::Status save_model_directory(const BloomModel& m, const fs::path& dir, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot save weights as ", dtype_name(dtype), "; use F32, F16 or BF16"));
  }
  if (!m.arena.allocated() || m.arena.dtype() != DType::kF32) {
    return absl::FailedPreconditionError("save_model_directory needs an allocated f32 arena");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir.string(),
        ": cannot create output directory: ", ec ? ec.message() : "a file is in the way"));
  }

  // A manifest left from an earlier save would condemn the files about to replace the ones it
  // lists; the new one is written last, once everything it lists is complete.
  if (fs::remove(dir / kManifestFile, ec); ec) {
    return absl::InternalError(
        absl::StrCat((dir / kManifestFile).string(), ": cannot remove: ", ec.message()));
  }

  std::vector<SafetensorsWriteEntry> entries;
  entries.reserve(m.arena.parameters().size());
  // Fused QKV tensors in the checkpoint's row order where it differs from the arena's.
  std::vector<std::vector<float>> file_order;
  file_order.reserve(2 * static_cast<size_t>(m.config.n_layer));
  for (const ParameterInfo& p : m.arena.parameters()) {
    const std::byte* data = m.arena.view(p).data;
    if (family_traits(m.config).qkv_blocks && is_qkv_tensor(m.config, p.name)) {
      file_order.push_back(qkv_rows_in_file_order(m.config, m.arena.view(p)));
      data = reinterpret_cast<const std::byte*>(file_order.back().data());
    }
    entries.push_back({p.name, p.shape, dtype, DType::kF32, data});
  }
  if (absl::Status s = write_safetensors(dir / kSingleWeightsFile, entries); !s.ok()) return s;

  nlohmann::json config = bloom_config_to_json(m.config);
  // transformers reads the stored dtype from "torch_dtype" (4.x) or "dtype" (5.x); keep whichever
  // the source had truthful about the file we just wrote.
  const char* torch_name = dtype == DType::kF32   ? "float32"
                           : dtype == DType::kF16 ? "float16"
                                                  : "bfloat16";
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (config.contains(key)) config[key] = torch_name;
  }
  if (absl::Status s = write_string_atomically(dir / kConfigFile, config.dump(2) + "\n"); !s.ok()) {
    return s;
  }

  const bool same_dir = !m.source.empty() && fs::equivalent(m.source, dir, ec) && !ec;
  if (!m.source.empty() && !same_dir) {
    for (const char* name : kTokenizerFiles) {
      const fs::path from = m.source / name;
      if (!path_exists(from)) continue;
      if (absl::Status s = copy_file_atomically(from, dir / name); !s.ok()) return s;
    }
  }
  std::vector<std::string> listed = {kSingleWeightsFile, kConfigFile};
  for (const char* name : kTokenizerFiles) {
    if (path_exists(dir / name)) listed.push_back(name);
  }
  return write_manifest(dir, listed);
}

}  // namespace engine
