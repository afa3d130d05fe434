// head_doctor: a small program embedding the engine.
//   head_doctor MODEL_DIR
// Loads the model, diagnoses every head over a few sequences, prints the collapsed ones (SINK or
// DEAD), applies a surgery plan to them (or to one healthy head when none is collapsed) and
// trains 10 steps, printing each step from a callback.
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

  // A small corpus of token ids (a real program would tokenize text).
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < 8; ++d) {
    std::vector<int32_t> doc;
    for (int i = 0; i < 48; ++i) {
      doc.push_back(4 + (d * 53 + i * 37) % (static_cast<int>(info.vocab_size) - 4));
    }
    docs.push_back(doc);
  }

  auto diagnosis = model->diagnose(docs);
  if (!diagnosis.ok()) {
    std::fprintf(stderr, "head_doctor: %s\n", diagnosis.error().c_str());
    return 1;
  }
  std::vector<engine::api::PlanTarget> collapsed;
  for (const engine::api::HeadDiagnosis& h : diagnosis->heads) {
    if (h.cls == "SINK" || h.cls == "DEAD") {
      collapsed.push_back({h.layer, h.head});
      std::printf("collapsed: layer %lld head %lld %s bos_mass %.3f (std %.3f)\n",
                  static_cast<long long>(h.layer), static_cast<long long>(h.head), h.cls.c_str(),
                  h.bos_mass, h.bos_mass_std);
    }
  }
  std::printf("%lld collapsed of %zu heads over %lld sequences\n",
              static_cast<long long>(diagnosis->collapsed()), diagnosis->heads.size(),
              static_cast<long long>(diagnosis->sequences));
  if (collapsed.empty()) {  // nothing collapsed: operate on one healthy head, as a demonstration
    collapsed.push_back({info.n_layer - 1, 0});
    std::printf("no collapsed head; operating on layer %lld head 0 instead\n",
                static_cast<long long>(info.n_layer - 1));
  }

  auto summary = model->apply_plan(engine::api::Plan::for_targets(collapsed, /*seed=*/1));
  if (!summary.ok()) {
    std::fprintf(stderr, "head_doctor: %s\n", summary.error().c_str());
    return 1;
  }
  std::printf("surgery on %lld heads: %lld of %lld parameters trainable\n",
              static_cast<long long>(summary->targets),
              static_cast<long long>(summary->trainable_elements),
              static_cast<long long>(summary->total_parameters));

  engine::api::TrainOptions options;
  options.steps = 10;
  options.seq_len = 32;
  options.lr = 1e-3;
  auto trained = model->train(docs, options, [](const engine::api::TrainProgress& p) {
    std::printf("step %lld/%lld loss %.4f grad_norm %.4f lr %.2e\n",
                static_cast<long long>(p.step), static_cast<long long>(p.total_steps), p.loss,
                p.grad_norm, p.lr);
  });
  if (!trained.ok()) {
    std::fprintf(stderr, "head_doctor: %s\n", trained.error().c_str());
    return 1;
  }
  std::printf("trained %lld steps: loss %.4f -> %.4f\n", static_cast<long long>(trained->steps),
              trained->first_loss, trained->last_loss);
  return 0;
}
