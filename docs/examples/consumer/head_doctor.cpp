// head_doctor: a small program embedding the engine.
//   head_doctor MODEL_DIR
// Loads the model, measures every head on a probe sequence, prints the heads whose attention
// mass on the first token is above 0.5 (SINK or DEAD in the method's terms), then operates on
// them (or on head 0 of the last layer when none is collapsed) and reports the perplexity of the
// probe before and after.
#include <engine/engine.h>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: head_doctor MODEL_DIR\n");
    return 2;
  }
  auto model = engine::api::Model::load(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "head_doctor: %s\n", model.error().c_str());
    return 1;
  }
  const engine::api::ModelInfo info = model->info();
  std::printf("engine %s: %lld layers x %lld heads, %lld parameters\n", engine::api::version(),
              static_cast<long long>(info.n_layer), static_cast<long long>(info.n_head),
              static_cast<long long>(info.parameters));

  std::vector<int32_t> probe;
  for (int i = 0; i < 48; ++i) probe.push_back(4 + (i * 37) % (static_cast<int>(info.vocab_size) - 4));
  engine::api::ForwardOptions options;
  options.head_statistics = true;
  auto out = model->forward({probe}, options);
  if (!out.ok()) {
    std::fprintf(stderr, "head_doctor: %s\n", out.error().c_str());
    return 1;
  }
  std::vector<engine::api::PlanTarget> collapsed;
  for (const engine::api::HeadValues& h : out->stats[0]) {
    if (h.bos_mass > 0.5) {
      collapsed.push_back({h.layer, h.head});
      std::printf("collapsed: layer %lld head %lld bos_mass %.3f entropy %.3f\n",
                  static_cast<long long>(h.layer), static_cast<long long>(h.head), h.bos_mass,
                  h.entropy);
    }
  }
  std::printf("%zu collapsed heads\n", collapsed.size());
  if (collapsed.empty()) collapsed.push_back({info.n_layer - 1, 0});

  auto before = model->perplexity({probe}, {static_cast<int64_t>(probe.size()), 16});
  auto summary = model->apply_plan(engine::api::Plan::for_targets(collapsed, /*seed=*/1));
  auto after = model->perplexity({probe}, {static_cast<int64_t>(probe.size()), 16});
  if (!before.ok() || !summary.ok() || !after.ok()) {
    std::fprintf(stderr, "head_doctor: %s%s%s\n", before.error().c_str(), summary.error().c_str(),
                 after.error().c_str());
    return 1;
  }
  std::printf("surgery on %lld heads: %lld of %lld parameters trainable\n",
              static_cast<long long>(summary->targets),
              static_cast<long long>(summary->trainable_elements),
              static_cast<long long>(summary->total_parameters));
  std::printf("probe perplexity %.4f before, %.4f after surgery (before any training)\n",
              before->ppl, after->ppl);
  return 0;
}
