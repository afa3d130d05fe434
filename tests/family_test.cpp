// The Falcon (ALiBi) and MPT families (model/config.h, model/bloom_layout.h) against transformers:
// config parsing and refusals, the slopes, loading (MPT's [Q; K; V] rows permuted into the arena's
// per-head order and back on save), the forward (logits, loss, attention statistics) and the
// backward (every parameter's gradient) on the fixtures tests/fixtures/make_family_fixtures.py
// wrote, surgery's head views per family, and one masked SGD step. falcon-h12-long-l2 (12 heads,
// 272 tokens) is where Falcon's bfloat16 ALiBi product differs from the fp32 one: its forward,
// decoding and gradients hold only because the kernel rounds the bias as transformers does
// (AlibiAttentionParams::bf16_bias_divisor).
// Tolerances: the BLOOM fixture tests' (docs/TOLERANCES.md): logits 1e-4 abs, loss 1e-5, each
// statistic 1e-5 abs, gradients 1e-3 |ref| + 1e-5 max|ref| (testing_fixtures::gradient_mismatches).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "engine/backend.h"
#include "engine/frozen_mask.h"
#include "engine/tape.h"
#include "model/bloom_backward.h"
#include "model/bloom_forward.h"
#include "model/bloom_layout.h"
#include "model/config.h"
#include "model/device_model.h"
#include "model/model_directory.h"
#include "model/safetensors.h"
#include "surgery/head_surgery.h"
#include "tests/fixture_checks.h"
#include "tests/fixture_reference.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing_fixtures::CaseData;
using testing_fixtures::compact_for;
using testing_fixtures::gradient_mismatches;
using testing_fixtures::inputs_of;
using testing_fixtures::kFixtures;
using testing_fixtures::load_case;
using testing_fixtures::Reference;
using testing_fixtures::to_arena;
using ::testing::HasSubstr;

constexpr double kLogitsTol = 1e-4;
constexpr double kLossTol = 1e-5;
constexpr double kStatsTol = 1e-5;
// clip_qkv finite differences (docs/TOLERANCES.md, "clip_qkv finite differences"): the loss is
// a mean of fp32 row losses of size ~5.5, each evaluation off by at most ~kClipFdLossNoise, so a
// central difference errs by kClipFdLossNoise / step, plus a relative kClipFdRel for the
// curvature over the step.
constexpr double kClipFdLossNoise = 4e-6;
constexpr double kClipFdRel = 1e-2;
constexpr double kClipFdMaxStep = 1e-2;
constexpr double kClipFdMinStep = 1e-3;

const char* const kModels[] = {"falcon-h4-l2", "falcon-h6-l2", "mpt-h4-l2", "mpt-h6-l2",
                               "mpt-h5-clip-l2", "mpt-h4-clip-l2", "falcon-h4-untied-l2"};
// mpt-h4-clip-l2: clip_qkv clamps about 40% of its QKV values (make_family_fixtures.py).
// falcon-h4-untied-l2: tie_word_embeddings false, lm_head.weight its own parameter.
const char* const kGradModels[] = {"falcon-h4-l2", "falcon-h6-l2", "mpt-h4-l2", "mpt-h6-l2",
                                   "mpt-h4-clip-l2", "falcon-h4-untied-l2"};
const char* const kCases[] = {"single", "batch", "right_pad", "left_pad"};
// One 272-token sequence (its only case, gradients included).
const char* const kLongFalcon = "falcon-h12-long-l2";

std::string released(const std::string& name) {
  const std::string prefix = "transformer.";
  return name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
}

fs::path scratch_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() /
                       ("engine_family_test_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

json config_of(const std::string& model) {
  return json::parse(testing_fixtures::read_bytes(kFixtures / "models" / model / "config.json"));
}

json config_of_dir(const fs::path& dir) {
  return json::parse(testing_fixtures::read_bytes(dir / "config.json"));
}

std::string error_of(const json& j) {
  absl::StatusOr<BloomConfig> c = parse_bloom_config(j, "dir/config.json");
  EXPECT_FALSE(c.ok());
  return c.ok() ? "" : std::string(c.status().message());
}

// ---- config ----

TEST(FamilyConfig, ParsesTheFixtureConfigs) {
  absl::StatusOr<BloomConfig> f = parse_bloom_config(config_of("falcon-h6-l2"), "f");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->family, ModelFamily::kFalcon);
  EXPECT_EQ(f->n_head, 6);
  EXPECT_EQ(f->hidden_size, 36);
  EXPECT_FALSE(f->linear_bias);
  absl::StatusOr<BloomConfig> m = parse_bloom_config(config_of("mpt-h6-l2"), "m");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->family, ModelFamily::kMpt);
  EXPECT_EQ(m->n_layer, 2);
  EXPECT_DOUBLE_EQ(m->softmax_scale, 0.3);
  EXPECT_EQ(m->clip_qkv, 0.0);
  EXPECT_EQ(m->max_seq_len, 32);
  absl::StatusOr<BloomConfig> clip = parse_bloom_config(config_of("mpt-h5-clip-l2"), "m");
  ASSERT_TRUE(clip.ok()) << clip.status();
  EXPECT_DOUBLE_EQ(clip->clip_qkv, 0.25);
}

// Each Falcon variant the engine does not run is refused naming its field; so is an absent field
// whose transformers default is such a variant.
TEST(FamilyConfig, RefusesFalconVariantsNamingTheField) {
  const json ok = config_of("falcon-h4-l2");
  struct Case {
    const char* field;
    json value;
  };
  for (const Case& c : {Case{"alibi", false}, Case{"multi_query", true},
                        Case{"new_decoder_architecture", true}, Case{"parallel_attn", true},
                        Case{"activation", "relu"}, Case{"ffn_hidden_size", 100},
                        Case{"num_kv_heads", 1}, Case{"tie_word_embeddings", "no"}}) {
    json j = ok;
    j[c.field] = c.value;
    EXPECT_THAT(error_of(j), HasSubstr(std::string("field ") + c.field)) << c.field;
  }
  for (const char* absent : {"alibi", "multi_query", "parallel_attn"}) {
    json j = ok;
    j.erase(absent);
    EXPECT_THAT(error_of(j), HasSubstr(std::string("field ") + absent + " is"));
  }
}

TEST(FamilyConfig, RefusesMptVariantsNamingTheField) {
  const json ok = config_of("mpt-h4-l2");
  for (auto [field, value] : {std::pair<const char*, json>{"no_bias", false},
                              {"expansion_ratio", 2}, {"logit_scale", 0.5},
                              {"tie_word_embeddings", false}}) {
    json j = ok;
    j[field] = value;
    EXPECT_THAT(error_of(j), HasSubstr(std::string("field ") + field)) << field;
  }
  for (auto [field, value] : {std::pair<const char*, json>{"qk_ln", true}, {"prefix_lm", true},
                              {"alibi", false}, {"attn_type", "multiquery_attention"},
                              {"clip_qkv", -1.0}, {"softmax_scale", "x"},
                              {"alibi_bias_max", 0}}) {
    json j = ok;
    j["attn_config"][field] = value;
    EXPECT_THAT(error_of(j), HasSubstr(std::string("attn_config.") + field)) << field;
  }
  json j = ok;
  j["model_type"] = "gpt2";
  EXPECT_THAT(error_of(j), HasSubstr("field model_type"));
}

// The written config loads back as the same family with the same values, and names the family
// so transformers' Auto classes pick it.
TEST(FamilyConfig, WritesBackTheFamily) {
  for (const char* name : {"falcon-h6-l2", "mpt-h6-l2"}) {
    absl::StatusOr<BloomConfig> c = parse_bloom_config(config_of(name), name);
    ASSERT_TRUE(c.ok());
    const json out = bloom_config_to_json(*c);
    absl::StatusOr<BloomConfig> again = parse_bloom_config(out, name);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->family, c->family);
    EXPECT_EQ(again->hidden_size, c->hidden_size);
    EXPECT_EQ(again->n_head, c->n_head);
    EXPECT_EQ(again->softmax_scale, c->softmax_scale);
    EXPECT_EQ(out["model_type"], family_name(c->family));
  }
}

// MPT's slopes from its closed form, written out independently: P = 8 for 6 heads with
// alibi_bias_max 8 gives 2^-1 .. 2^-8, reordered odd-first; alibi_bias_max 16 doubles every
// exponent.
TEST(FamilyConfig, MptSlopesClosedForm) {
  const std::vector<float> s6 = mpt_alibi_slopes(6, 8.0);
  const float want6[] = {0x1p-2f, 0x1p-4f, 0x1p-6f, 0x1p-8f, 0x1p-1f, 0x1p-3f};
  ASSERT_EQ(s6.size(), 6u);
  for (int h = 0; h < 6; ++h) EXPECT_EQ(s6[h], want6[h]) << h;
  const std::vector<float> s4 = mpt_alibi_slopes(4, 16.0);  // 2^(-16k/4)
  for (int k = 1; k <= 4; ++k) EXPECT_EQ(s4[k - 1], std::ldexp(1.0f, -4 * k)) << k;
  const std::vector<float> s3 = mpt_alibi_slopes(3, 8.0);  // P = 4: 2^-2k, odd first
  EXPECT_EQ(s3, (std::vector<float>{0x1p-4f, 0x1p-8f, 0x1p-2f}));
}

// The slope each head's score sees equals what transformers' ALiBi builders give.
TEST(FamilyConfig, AttentionSlopesMatchTransformers) {
  std::vector<const char*> names(std::begin(kModels), std::end(kModels));
  names.push_back(kLongFalcon);
  for (const char* name : names) {
    absl::StatusOr<BloomConfig> c = parse_bloom_config(config_of(name), name);
    ASSERT_TRUE(c.ok());
    const Reference ref(name);
    const std::vector<float> theirs = ref.get<float>("alibi_slopes");
    const std::vector<float> ours = attention_slopes(*c);
    ASSERT_EQ(ours.size(), theirs.size()) << name;
    for (size_t h = 0; h < ours.size(); ++h) {
      EXPECT_NEAR(ours[h], theirs[h], 1e-7 * std::abs(theirs[h])) << name << " head " << h;
    }
  }
}

// What the attention kernel is given: BLOOM and MPT their slopes and the fp32 product (divisor
// 0); Falcon the unscaled bfloat16 slopes and sqrt(D), which at position 1 give its
// per-position slope (bf16(s * 1) = s).
TEST(FamilyConfig, KernelBiasInputsPerFamily) {
  for (const char* name : {"falcon-h6-l2", "mpt-h6-l2", "falcon-h12-long-l2"}) {
    absl::StatusOr<BloomConfig> c = parse_bloom_config(config_of(name), name);
    ASSERT_TRUE(c.ok());
    const std::vector<float> kernel = kernel_slopes(*c);
    const std::vector<float> effective = attention_slopes(*c);
    const float divisor = attention_bias_divisor(*c);
    ASSERT_EQ(kernel.size(), effective.size());
    if (c->family != ModelFamily::kFalcon) {
      EXPECT_EQ(divisor, 0.0f) << name;
      EXPECT_EQ(kernel, effective) << name;
      continue;
    }
    EXPECT_EQ(divisor, static_cast<float>(std::sqrt(static_cast<double>(c->head_dim())))) << name;
    for (size_t h = 0; h < kernel.size(); ++h) {
      EXPECT_EQ(bf16_to_f32(f32_to_bf16(kernel[h])), kernel[h]) << name << " head " << h;
      EXPECT_NEAR(kernel[h] / divisor, effective[h], 1e-7 * effective[h]) << name << " head " << h;
    }
  }
  BloomConfig bloom;
  bloom.n_head = 12, bloom.hidden_size = 24;
  EXPECT_EQ(attention_bias_divisor(bloom), 0.0f);
  EXPECT_EQ(kernel_slopes(bloom), alibi_slopes(12));
}

// ---- loading and saving ----

class FamilyModel : public ::testing::TestWithParam<const char*> {};

// Every file tensor lands in the arena: as is, except MPT's fused QKV, whose arena row r holds
// file row qkv_file_row(r).
TEST_P(FamilyModel, LoadsTheValuesInItsFilesInTheArenaOrder) {
  const fs::path dir = kFixtures / "models" / GetParam();
  absl::StatusOr<BloomModel> model = load_model_directory(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok());
  const BloomConfig& c = model->config;
  int64_t checked = 0;
  bool permuted = false;
  for (const SafetensorsTensorInfo& t : file->header().tensors) {
    // A tied model's files hold no lm_head.weight; an untied one's is a parameter like any other.
    if (t.name == "lm_head.weight" && c.tie_word_embeddings) continue;
    absl::StatusOr<TensorView> view = model->arena.view(released(t.name));
    ASSERT_TRUE(view.ok()) << view.status();
    const float* in_file = reinterpret_cast<const float*>(file->tensor_data(t));
    const float* in_arena = view->as<const float>();
    const bool qkv = t.name.find("Wqkv") != std::string::npos ||
                     t.name.find("query_key_value") != std::string::npos;
    const int64_t rows = qkv ? 3 * c.hidden_size : 1;
    const int64_t width = t.numel / rows;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t fr = qkv ? qkv_file_row(c, r) : r;
      permuted = permuted || fr != r;
      ASSERT_EQ(std::memcmp(in_arena + r * width, in_file + fr * width, width * sizeof(float)), 0)
          << t.name << " row " << r;
    }
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int64_t>(model->arena.parameters().size()));
  EXPECT_EQ(permuted, c.family == ModelFamily::kMpt);
}

// Saving writes the file's own row order back: the written tensors equal the fixture's bytes.
TEST_P(FamilyModel, SaveWritesTheCheckpointBytesBack) {
  const fs::path dir = kFixtures / "models" / GetParam();
  absl::StatusOr<BloomModel> model = load_model_directory(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const fs::path out = scratch_dir(GetParam());
  ASSERT_TRUE(save_model_directory(*model, out, DType::kF32).ok());
  absl::StatusOr<SafetensorsFile> original = SafetensorsFile::open(dir / "model.safetensors");
  absl::StatusOr<SafetensorsFile> written = SafetensorsFile::open(out / "model.safetensors");
  ASSERT_TRUE(original.ok() && written.ok());
  int64_t compared = 0;
  for (const SafetensorsTensorInfo& t : original->header().tensors) {
    if (t.name == "lm_head.weight" && model->config.tie_word_embeddings) continue;
    const SafetensorsTensorInfo* w = written->header().find(released(t.name));
    ASSERT_NE(w, nullptr) << t.name;
    ASSERT_EQ(w->end - w->begin, t.end - t.begin);
    EXPECT_EQ(std::memcmp(written->tensor_data(*w), original->tensor_data(t), t.end - t.begin), 0)
        << t.name;
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int64_t>(written->header().tensors.size()));
  absl::StatusOr<BloomModel> again = load_model_directory(out);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->config.family, model->config.family);
  EXPECT_EQ(again->config.tie_word_embeddings, model->config.tie_word_embeddings);
  fs::remove_all(out);
}

// ---- forward ----

// Logits (real positions), loss and the three statistics of each case against the reference.
void expect_forward_matches(const std::string& name, const std::vector<const char*>& cases) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref(name);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  const int64_t L = model->config.n_layer, H = model->config.n_head;
  for (const char* c : cases) {
    SCOPED_TRACE(name + " case " + c);
    const CaseData d = load_case(ref, c);
    ForwardInputs in = inputs_of(d);
    in.want_logits = true, in.want_stats = true;
    absl::StatusOr<ForwardResult> got = bloom_forward(*model, *backend, in);
    ASSERT_TRUE(got.ok()) << got.status();
    const std::vector<float> logits = ref.get<float>(std::string(c) + ".logits");
    ASSERT_EQ(got->logits.size(), logits.size());
    // Real positions only: transformers' values at padded positions differ per family (MPT's
    // fully masked rows) and carry no meaning.
    double worst = 0.0;
    const int64_t V = model->config.vocab_size;
    for (int64_t r = 0; r < d.batch * d.seq; ++r) {
      if (d.mask[r] == 0) continue;
      for (int64_t v = 0; v < V; ++v) {
        worst = std::max(worst, std::abs(double{got->logits[r * V + v]} - logits[r * V + v]));
      }
    }
    EXPECT_LE(worst, kLogitsTol) << "logits max abs error";
    ::testing::Test::RecordProperty(std::string(c) + "_logits_max_abs_err", std::to_string(worst));
    EXPECT_NEAR(got->loss, ref.get<float>(std::string(c) + ".loss")[0], kLossTol);
    testing_fixtures::expect_stats_near(ref, c, got->stats, d.batch, L, H, kStatsTol);
  }
}

TEST_P(FamilyModel, ForwardMatchesTransformersInEveryCase) {
  expect_forward_matches(GetParam(), {std::begin(kCases), std::end(kCases)});
}

// Past 256 tokens with 12 heads: every bias the kernel adds is transformers' bf16 product.
TEST(FamilyLongFalcon, ForwardMatchesTransformers) {
  expect_forward_matches(kLongFalcon, {"long"});
}

// Cached decoding gives the full forward's logits from position 4 on.
void expect_decode_matches_forward(const std::string& name, const char* case_name) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref(name);
  const CaseData d = load_case(ref, case_name);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  ForwardInputs in;
  in.batch = 1, in.seq = d.seq, in.ids = d.ids.data(), in.want_logits = true;
  absl::StatusOr<ForwardResult> full = bloom_forward(*model, *backend, in);
  ASSERT_TRUE(full.ok()) << full.status();
  KvCache cache(model->config, d.seq);
  const int64_t V = model->config.vocab_size;
  absl::StatusOr<std::vector<float>> step = bloom_decode_step(*model, *backend, cache, d.ids.data(), 4);
  ASSERT_TRUE(step.ok()) << step.status();
  for (int64_t t = 4; t < d.seq; ++t) {
    step = bloom_decode_step(*model, *backend, cache, d.ids.data() + t, 1);
    ASSERT_TRUE(step.ok()) << step.status();
    for (int64_t v = 0; v < V; ++v) {
      ASSERT_NEAR((*step)[v], full->logits[t * V + v], 1e-5) << "t=" << t << " v=" << v;
    }
  }
}

TEST_P(FamilyModel, DecodeStepsMatchTheFullForward) {
  expect_decode_matches_forward(GetParam(), "single");
}

TEST(FamilyLongFalcon, DecodeStepsMatchTheFullForward) {
  expect_decode_matches_forward(kLongFalcon, "long");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FamilyModel, ::testing::ValuesIn(kModels),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

// An untied head is required and loaded as it is (it need not equal the embedding); without it
// the load names the missing tensor.
TEST(FamilyUntiedHead, LoadsItsOwnHeadAndRequiresIt) {
  const fs::path dir = kFixtures / "models" / "falcon-h4-untied-l2";
  absl::StatusOr<BloomModel> model = load_model_directory(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE(model->config.tie_word_embeddings);
  absl::StatusOr<TensorView> head = model->arena.view("lm_head.weight");
  absl::StatusOr<TensorView> embedding = model->arena.view("word_embeddings.weight");
  ASSERT_TRUE(head.ok() && embedding.ok());
  EXPECT_EQ(head->shape, embedding->shape);
  EXPECT_NE(std::memcmp(head->data, embedding->data, head->numel() * sizeof(float)), 0);
  // The same directory without lm_head.weight.
  const fs::path out = scratch_dir("untied_missing");
  fs::copy_file(dir / "config.json", out / "config.json");
  absl::StatusOr<SafetensorsFile> file = SafetensorsFile::open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok());
  std::vector<SafetensorsWriteEntry> entries;
  for (const SafetensorsTensorInfo& t : file->header().tensors) {
    if (t.name == "lm_head.weight") continue;
    entries.push_back({t.name, t.shape, DType::kF32, DType::kF32,
                       file->tensor_data(t)});
  }
  ASSERT_TRUE(write_safetensors(out / "model.safetensors", entries).ok());
  absl::StatusOr<BloomModel> missing = load_model_directory(out);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("tensor lm_head.weight"));
  fs::remove_all(out);
}

// BLOOM with tie_word_embeddings false (BloomForCausalLM then keeps lm_head.weight apart): a copy
// of bloom-h4-l2 whose untied head equals the embedding gives the tied model's logits bit for bit;
// changing only the head changes them; saving and loading keeps the head and the config's flag.
TEST(FamilyUntiedHead, BloomReadsSavesAndLoadsItsUntiedHead) {
  absl::StatusOr<BloomModel> tied = load_model_directory(kFixtures / "models" / "bloom-h4-l2");
  ASSERT_TRUE(tied.ok()) << tied.status();
  BloomConfig c = tied->config;
  c.tie_word_embeddings = false;
  c.raw["tie_word_embeddings"] = false;
  absl::StatusOr<BloomModel> untied = allocate_bloom_model(c);
  ASSERT_TRUE(untied.ok()) << untied.status();
  for (const ParameterInfo& p : tied->arena.parameters()) {
    absl::StatusOr<TensorView> to = untied->arena.view(p.name);
    ASSERT_TRUE(to.ok()) << to.status();
    std::memcpy(to->data, tied->arena.view(p).data, p.numel * sizeof(float));
  }
  absl::StatusOr<TensorView> head = untied->arena.view("lm_head.weight");
  ASSERT_TRUE(head.ok()) << head.status();
  std::memcpy(head->data, tied->arena.view("word_embeddings.weight")->data,
              head->numel() * sizeof(float));
  const CaseData d = load_case(Reference("bloom-h4-l2"), "right_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  ForwardInputs in = inputs_of(d);
  in.want_logits = true;
  absl::StatusOr<ForwardResult> a = bloom_forward(*tied, *backend, in);
  absl::StatusOr<ForwardResult> b = bloom_forward(*untied, *backend, in);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->logits.size(), b->logits.size());
  EXPECT_EQ(std::memcmp(a->logits.data(), b->logits.data(), a->logits.size() * sizeof(float)), 0);
  float* h = head->as<float>();
  for (int64_t i = 0; i < head->numel(); ++i) h[i] *= 2.0f;
  absl::StatusOr<ForwardResult> doubled = bloom_forward(*untied, *backend, in);
  ASSERT_TRUE(doubled.ok());
  EXPECT_NE(doubled->loss, b->loss);
  const fs::path out = scratch_dir("bloom_untied");
  ASSERT_TRUE(save_model_directory(*untied, out, DType::kF32).ok());
  EXPECT_EQ(config_of_dir(out).value("tie_word_embeddings", true), false);
  absl::StatusOr<BloomModel> again = load_model_directory(out);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->config.tie_word_embeddings);
  absl::StatusOr<TensorView> loaded = again->arena.view("lm_head.weight");
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(std::memcmp(loaded->data, head->data, head->numel() * sizeof(float)), 0);
  fs::remove_all(out);
}

// ---- backward ----

// The reference gradient of an arena tensor in the arena's row order.
std::vector<float> reference_grad(const Reference& ref, const BloomConfig& c,
                                  const ParameterInfo& p, const std::string& case_name = "right_pad") {
  std::vector<float> file = ref.get<float>(case_name + ".grad." + p.name);
  const bool qkv = p.name.find("Wqkv") != std::string::npos;
  if (!qkv) return file;
  const int64_t rows = 3 * c.hidden_size, width = p.numel / rows;
  std::vector<float> arena(file.size());
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(file.data() + qkv_file_row(c, r) * width, width, arena.data() + r * width);
  }
  return arena;
}

class FamilyGradients : public ::testing::TestWithParam<const char*> {};

void expect_gradients_match(const std::string& name, const std::string& case_name) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref(name);
  const CaseData d = load_case(ref, case_name);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  CompactGradients grads = compact_for(FrozenMask::all_trainable(model->arena));
  absl::StatusOr<ForwardResult> r = bloom_forward_backward(*model, *backend, inputs_of(d), grads);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->loss, ref.get<float>(case_name + ".loss")[0], kLossTol);
  const std::vector<float> g = to_arena(grads, model->arena.size_elements());
  int checked = 0;
  for (const ParameterInfo& p : model->arena.parameters()) {
    const std::vector<float> want = reference_grad(ref, model->config, p, case_name);
    ASSERT_EQ(static_cast<int64_t>(want.size()), p.numel) << p.name;
    EXPECT_EQ(gradient_mismatches(p.name, g.data() + p.offset, want.data(), p.numel), 0);
    ++checked;
  }
  EXPECT_EQ(checked, static_cast<int>(model->arena.parameters().size()));
}

TEST_P(FamilyGradients, EveryParameterMatchesTransformers) {
  expect_gradients_match(GetParam(), "right_pad");
}

// The backward rounds the bias as the forward does: every gradient of the 272-token case.
TEST(FamilyLongFalcon, EveryGradientMatchesTransformers) {
  expect_gradients_match(kLongFalcon, "long");
}

// Activation recomputation (each block re-run from its input, the embedding's own segment with no
// embedding LayerNorm) gives the kept-activations gradients bit for bit.
TEST_P(FamilyGradients, RecomputeGivesBitIdenticalGradients) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / GetParam());
  ASSERT_TRUE(model.ok()) << model.status();
  const CaseData d = load_case(Reference(GetParam()), "right_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  const FrozenMask mask = FrozenMask::all_trainable(model->arena);
  CompactGradients kept = compact_for(mask), recomputed = compact_for(mask);
  absl::StatusOr<ForwardResult> a = bloom_forward_backward(*model, *backend, inputs_of(d), kept);
  absl::StatusOr<ForwardResult> b =
      bloom_forward_backward(*model, *backend, inputs_of(d), recomputed, 1.0, true);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->loss, b->loss);
  ASSERT_EQ(kept.size(), recomputed.size());
  EXPECT_EQ(std::memcmp(kept.data(), recomputed.data(), kept.size() * sizeof(float)), 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FamilyGradients, ::testing::ValuesIn(kGradModels),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

// clip_qkv's clamp by central differences of the fp32 loss, for one QKV weight element per
// sampled row (column row % C) of both layers. W[row, col] moves the pre-clamp values of column
// `row` by step * ln1[t, col]: the step is chosen so that no value crosses the bound
// (step * max_t |ln1[t, col]| <= half the row's least distance from it), which keeps the loss
// smooth on [w - step, w + step]. In rows clamped at many positions a backward that passed the
// gradient everywhere would add those positions' terms.
TEST(FamilyGradients, ClipQkvGradientMatchesFiniteDifferences) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "mpt-h4-clip-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  const Reference ref("mpt-h4-clip-l2");
  const CaseData d = load_case(ref, "right_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  CompactGradients grads = compact_for(FrozenMask::all_trainable(model->arena));
  ForwardInputs in = inputs_of(d);
  absl::StatusOr<ForwardResult> base = bloom_forward_backward(*model, *backend, in, grads);
  ASSERT_TRUE(base.ok()) << base.status();
  const std::vector<float> g = to_arena(grads, model->arena.size_elements());
  ForwardInputs keep = in;
  keep.keep_activations = true;
  absl::StatusOr<ForwardResult> kept = bloom_forward(*model, *backend, keep);
  ASSERT_TRUE(kept.ok()) << kept.status();
  auto loss_at = [&]() {
    absl::StatusOr<ForwardResult> r = bloom_forward(*model, *backend, in);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->loss : 0.0;
  };
  const BloomConfig& c = model->config;
  const int64_t C = c.hidden_size, rows = d.batch * d.seq;
  const double clip = c.clip_qkv;
  int checked = 0, clamped_rows = 0, passing_rows = 0;
  for (int64_t layer = 0; layer < c.n_layer; ++layer) {
    const BlockActivations& a = kept->activations->blocks[layer];
    absl::StatusOr<TensorView> w = model->arena.view(parameter_name(c, ParamRole::kQkvWeight, layer));
    ASSERT_TRUE(w.ok());
    float* data = w->as<float>();
    for (int64_t row = 0; row < 3 * C; row += 3) {
      const int64_t col = row % C, i = row * C + col;
      double margin = 1e30, reach = 0.0;
      int64_t clamped = 0;
      for (int64_t t = 0; t < rows; ++t) {
        const double pre = a.qkv_pre.f32()[t * 3 * C + row];
        margin = std::min(margin, std::abs(std::abs(pre) - clip));
        clamped += std::abs(pre) > clip ? 1 : 0;
        reach = std::max(reach, static_cast<double>(std::abs(a.ln1.f32()[t * C + col])));
      }
      const float step = static_cast<float>(std::min(kClipFdMaxStep, 0.5 * margin / reach));
      if (step < kClipFdMinStep) continue;
      const float analytic = g[static_cast<size_t>(w->arena_offset + i)];
      const float saved = data[i];
      data[i] = saved + step;
      const double up = loss_at();
      data[i] = saved - step;
      const double down = loss_at();
      data[i] = saved;
      const double numeric = (up - down) / (2.0 * static_cast<double>(step));
      const double tol = kClipFdLossNoise / step + kClipFdRel * std::abs(analytic);
      EXPECT_NEAR(numeric, analytic, tol) << "layer " << layer << " row " << row << " step " << step;
      ++checked;
      // Rows clamped at a third or more of the positions: where ignoring the clamp shows.
      (3 * clamped >= rows ? clamped_rows : passing_rows) += 1;
    }
  }
  EXPECT_GT(clamped_rows, 3);
  EXPECT_GT(passing_rows, 3);
}

// The clamp's gradient at its bounds, as torch 2.15 gives it for clamp with scalar bounds
// (x.clamp(-0.5, 0.5) on [-0.5, 0.25, 0.5, 0.75] -> gradients [0, 1, 0, 0]): zero at the bounds
// themselves, passed strictly inside.
TEST(FamilyGradients, ClampGradientIsZeroAtTheBoundsAsTorchs) {
  const std::vector<float> x = {-0.75f, -0.5f, 0.25f, 0.5f, 0.75f, -0.25f};
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = std::clamp(x[i], -0.5f, 0.5f);
  const std::vector<float> seed = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  Tape tape;
  const int in = tape.add_value(x.data(), static_cast<int64_t>(x.size()), true);
  const int out = tape.add_value(y.data(), static_cast<int64_t>(y.size()));
  tape.record(TapeClamp{static_cast<int64_t>(x.size()), -0.5f, 0.5f, in, out});
  std::unique_ptr<Backend> backend = make_cpu_backend();
  CompactGradients none(std::vector<uint64_t>{}, 0);
  ASSERT_TRUE(tape.backward_from(*backend, none, out, seed.data()).ok());
  const DeviceArray<std::byte>& g = tape.grad(in);
  ASSERT_EQ(g.size(), static_cast<int64_t>(x.size() * sizeof(float)));
  std::vector<float> dx(x.size());
  std::memcpy(dx.data(), g.data(), g.size());
  EXPECT_EQ(dx, (std::vector<float>{0.0f, 0.0f, 3.0f, 0.0f, 0.0f, 6.0f}));
}

// clip_qkv is defined on fp32 projections only: with 16-bit weights (the CPU's bf16 storage
// twin) the forward, and so training, is refused naming the field.
TEST(FamilyGradients, ClipQkvWith16BitWeightsIsRefusedNamingTheField) {
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / "mpt-h4-clip-l2");
  ASSERT_TRUE(model.ok()) << model.status();
  const CaseData d = load_case(Reference("mpt-h4-clip-l2"), "right_pad");
  std::unique_ptr<Backend> backend = make_cpu_backend();
  ASSERT_TRUE(make_resident(*model, *backend, DType::kBF16).ok());
  CompactGradients grads = compact_for(FrozenMask::all_trainable(model->arena));
  absl::StatusOr<ForwardResult> r = bloom_forward_backward(*model, *backend, inputs_of(d), grads);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("attn_config.clip_qkv needs f32"));
}

// ---- surgery head views ----

// Re-initialising head h and zeroing its output columns, saved back to the checkpoint layout,
// changes exactly: the head's D rows in each of Q, K and V (MPT: three blocks C apart; Falcon:
// one run of 3D rows), its QKV bias rows where the family has a bias, and columns [hD, (h+1)D)
// of the output projection; every other element of the file is bit-identical.
class FamilySurgery : public ::testing::TestWithParam<const char*> {};

TEST_P(FamilySurgery, TouchesExactlyTheHeadsRowsAndColumnsInTheCheckpoint) {
  const std::string name = GetParam();
  const fs::path dir = kFixtures / "models" / name;
  absl::StatusOr<BloomModel> model = load_model_directory(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const BloomConfig& c = model->config;
  const int64_t C = c.hidden_size, D = c.head_dim(), head = 1, layer = 1;
  SurgeryPlan plan;
  plan.targets = {{layer, head}};
  plan.qkv_weight = QkvWeightInit::kXavierUniform;
  plan.qkv_bias = QkvBiasInit::kZero;
  plan.dense_columns = DenseColumnsInit::kZero;
  absl::StatusOr<FrozenMask> mask = apply_surgery(model->arena, HeadGeometry::of(c), plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  const fs::path out = scratch_dir("surgery_" + name);
  ASSERT_TRUE(save_model_directory(*model, out, DType::kF32).ok());
  absl::StatusOr<SafetensorsFile> before = SafetensorsFile::open(dir / "model.safetensors");
  absl::StatusOr<SafetensorsFile> after = SafetensorsFile::open(out / "model.safetensors");
  ASSERT_TRUE(before.ok() && after.ok());
  const bool mpt = c.family == ModelFamily::kMpt;
  const std::string qkv_w = mpt ? "blocks.1.attn.Wqkv.weight"
                                : "h.1.self_attention.query_key_value.weight";
  const std::string qkv_b = mpt ? "" : "h.1.self_attention.query_key_value.bias";
  const std::string dense = mpt ? "blocks.1.attn.out_proj.weight" : "h.1.self_attention.dense.weight";
  auto head_row = [&](int64_t row) {  // a checkpoint row of the fused QKV belongs to the head
    if (mpt) return (row % C) / D == head;
    return row / (3 * D) == head;
  };
  int64_t changed_rows = 0, tensors = 0;
  for (const SafetensorsTensorInfo& t : before->header().tensors) {
    if (t.name == "lm_head.weight" && c.tie_word_embeddings) continue;
    const std::string n = released(t.name);
    const SafetensorsTensorInfo* w = after->header().find(n);
    ASSERT_NE(w, nullptr) << n;
    const float* a = reinterpret_cast<const float*>(before->tensor_data(t));
    const float* b = reinterpret_cast<const float*>(after->tensor_data(*w));
    ++tensors;
    for (int64_t i = 0; i < t.numel; ++i) {
      bool may_change = false;
      if (n == qkv_w) may_change = head_row(i / C);
      if (n == qkv_b && !qkv_b.empty()) may_change = head_row(i);
      if (n == dense) may_change = (i % C) / D == head;
      if (!may_change) {
        ASSERT_EQ(std::memcmp(a + i, b + i, sizeof(float)), 0) << n << " element " << i;
      } else if (n == dense || n == qkv_b) {
        ASSERT_EQ(b[i], 0.0f) << n << " element " << i;
      } else if (i % C == 0) {
        ++changed_rows;
        ASSERT_NE(a[i], b[i]) << n << " element " << i;  // re-initialised (not kept)
      }
    }
  }
  EXPECT_EQ(changed_rows, 3 * D);
  EXPECT_GT(tensors, 5);
  // The mask marks the same elements (in arena order) and nothing else.
  const int64_t per_head = 3 * D * C + (family_traits(c).linear_bias ? 3 * D : 0) + C * D;
  EXPECT_EQ(mask->trainable_count(), per_head);
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FamilySurgery,
                         ::testing::Values("falcon-h4-l2", "falcon-h6-l2", "mpt-h4-l2",
                                           "mpt-h6-l2", "mpt-h4-clip-l2", "falcon-h4-untied-l2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = (c == '-') ? '_' : c;
                           return n;
                         });

// One masked SGD step after surgery ("keep" init, so the fixture's gradients apply): every
// frozen element is bit-identical, every trainable one moved by -lr * the reference gradient.
TEST_P(FamilySurgery, OneMaskedSgdStepLeavesFrozenElementsBitIdentical) {
  const std::string name = GetParam();
  absl::StatusOr<BloomModel> model = load_model_directory(kFixtures / "models" / name);
  ASSERT_TRUE(model.ok()) << model.status();
  const BloomConfig& c = model->config;
  const Reference ref(name);
  const CaseData d = load_case(ref, "right_pad");
  SurgeryPlan plan;
  plan.targets = {{0, 1}, {1, c.n_head - 1}};
  plan.qkv_weight = QkvWeightInit::kKeep;
  plan.qkv_bias = QkvBiasInit::kKeep;
  plan.dense_columns = DenseColumnsInit::kKeep;
  absl::StatusOr<FrozenMask> mask = apply_surgery(model->arena, HeadGeometry::of(c), plan);
  ASSERT_TRUE(mask.ok()) << mask.status();
  const std::vector<float> before(reinterpret_cast<float*>(model->arena.base()),
                                  reinterpret_cast<float*>(model->arena.base()) + model->arena.size_elements());
  std::unique_ptr<Backend> backend = make_cpu_backend();
  CompactGradients grads = compact_for(*mask);
  ASSERT_TRUE(bloom_forward_backward(*model, *backend, inputs_of(d), grads).ok());
  std::vector<int64_t> index(static_cast<size_t>(grads.size()));
  grads.arena_indices(0, grads.size(), index.data());
  constexpr float kLr = 0.5f;
  MaskedAdamWParams p;
  p.n = grads.size();
  p.index = index.data();
  p.params = model->arena.base();
  p.grad = grads.data();
  p.lr = kLr;
  ASSERT_TRUE(backend->masked_sgd(p).ok());
  const float* now = reinterpret_cast<const float*>(model->arena.base());
  int64_t moved = 0;
  for (const ParameterInfo& info : model->arena.parameters()) {
    const std::vector<float> want = reference_grad(ref, c, info);
    std::vector<float> got(static_cast<size_t>(info.numel)), masked(got.size(), 0.0f);
    for (int64_t i = 0; i < info.numel; ++i) {
      const int64_t k = info.offset + i;
      if (!mask->trainable(k)) {
        ASSERT_EQ(std::memcmp(&now[k], &before[k], sizeof(float)), 0) << info.name << " " << i;
        continue;
      }
      got[i] = (before[k] - now[k]) / kLr;  // the applied gradient
      masked[i] = want[i];
      moved += now[k] != before[k] ? 1 : 0;
    }
    // The step's own rounding (w - lr g, |w| up to ~1) adds at most 2^-24 |w| / lr per element
    // to the recovered gradient: within the 1e-5 max|ref| term for these weights.
    EXPECT_EQ(gradient_mismatches(info.name, got.data(), masked.data(), info.numel), 0);
  }
  EXPECT_GT(moved, 0);
}

}  // namespace
}  // namespace engine
