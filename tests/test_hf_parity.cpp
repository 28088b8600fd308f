// Parity with PyTorch + HF transformers (fixtures from tools/make_reference.py): a tiny GPT-2 saved
// by transformers is loaded, run forward, through the cross-entropy loss and backward, its
// gradients clipped, and stepped twice with AdamW; every quantity is compared with torch's float64
// values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/json.h"
#include "engine/io/safetensors.h"
#include "engine/ops/cpu/ops.h"
#include "model/checkpoint.h"
#include "tests/fixture_util.h"

namespace {

using kd::test::kFixtures;
using kd::test::read_json;
using kd::test::rel_err;

std::vector<int32_t> ints(const kd::Json& arr) {
  std::vector<int32_t> v;
  for (const auto& x : arr.items()) v.push_back(static_cast<int32_t>(x.as_int()));
  return v;
}

}  // namespace

TEST(HFParity, ForwardLossBackwardClipAndAdamWMatchTorch) {
  const kd::Json ref = read_json(kFixtures + "/gpt2_tiny_expected.json");
  const kd::SafetensorsFile expected(kFixtures + "/gpt2_tiny_expected.safetensors");
  kd::GPT2 m = kd::load_model(kFixtures + "/gpt2_tiny");
  const int B = static_cast<int>(ref.at("B").as_int());
  const int T = static_cast<int>(ref.at("T").as_int());
  const int V = m.config().vocab_size;
  const int N = B * T;
  const std::vector<int32_t> tokens = ints(ref.at("tokens"));
  const std::vector<int32_t> targets = ints(ref.at("targets"));
  ASSERT_EQ(tokens.size(), size_t(N));
  ASSERT_EQ(targets.size(), size_t(N));
  const int rows = static_cast<int>(
      std::count_if(targets.begin(), targets.end(), [](int32_t t) { return t >= 0; }));
  ASSERT_LT(rows, N);  // some targets are masked

  kd::AdamWConfig opt;
  opt.lr = static_cast<float>(ref.at("lr").as_number());
  opt.beta1 = static_cast<float>(ref.at("beta1").as_number());
  opt.beta2 = static_cast<float>(ref.at("beta2").as_number());
  opt.eps = static_cast<float>(ref.at("eps").as_number());
  opt.weight_decay = static_cast<float>(ref.at("weight_decay").as_number());
  const double max_norm = ref.at("max_norm").as_number();
  std::vector<kd::ParamSpan> spans;
  for (const auto& p : m.table()) spans.push_back({p.offset, p.numel, p.decay});
  std::vector<float> adam_m(m.params.size(), 0.0f), adam_v(m.params.size(), 0.0f);

  m.enable_training();
  std::vector<float> dlogits(size_t(N) * V);
  const auto& steps = ref.at("steps").items();
  for (int step = 1; step <= static_cast<int>(steps.size()); ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const std::string s = "step" + std::to_string(step);
    m.zero_grad();
    m.forward(tokens.data(), B, T);
    if (step == 1) {
      std::vector<float> want = expected.read_f32("step1.logits");
      ASSERT_EQ(want.size(), dlogits.size());
      const double err = rel_err(m.logits(), want.data(), want.size());
      std::printf("logits rel err %.3g\n", err);
      EXPECT_LT(err, 1e-5);
    }

    kd::LossConfig loss_cfg;  // cross-entropy only
    kd::LossSums sums;
    kd::cpu::kd_loss(dlogits.data(), &sums, m.logits(), nullptr, V, targets.data(), N, V, loss_cfg,
                     1.0f / rows);
    EXPECT_EQ(sums.rows, rows);
    const double loss = sums.loss / rows;
    const double want_loss = steps[step - 1].at("loss").as_number();
    EXPECT_LT(std::fabs(loss - want_loss) / want_loss, 1e-5) << loss << " vs " << want_loss;

    m.backward(dlogits.data());
    if (step == 1) {
      double worst = 0;
      std::string worst_name;
      for (const auto& p : m.table()) {
        std::vector<float> want = expected.read_f32("step1.grad." + p.name);
        ASSERT_EQ(want.size(), p.numel) << p.name;
        const double err = rel_err(m.grads.data() + p.offset, want.data(), p.numel);
        EXPECT_LT(err, 1e-4) << p.name;
        if (err > worst) worst = err, worst_name = p.name;
      }
      std::printf("worst gradient rel err %.3g (%s)\n", worst, worst_name.c_str());
    }

    const double norm = kd::cpu::global_norm(m.grads.data(), m.grads.size());
    const double want_norm = steps[step - 1].at("pre_clip_norm").as_number();
    EXPECT_LT(std::fabs(norm - want_norm) / want_norm, 1e-5) << norm << " vs " << want_norm;
    ASSERT_GT(norm, max_norm);  // clipping is active
    const float scale = static_cast<float>(std::min(1.0, max_norm / norm));

    const std::vector<float> before = m.params;
    kd::cpu::adamw_update(m.params.data(), m.grads.data(), adam_m.data(), adam_v.data(), spans, opt,
                          step, scale);
    // Compare the step itself (after - before), not the parameters, whose size would hide it.
    std::vector<float> got_delta(before.size()), want_delta(before.size());
    for (const auto& p : m.table()) {
      std::vector<float> want = expected.read_f32(s + ".delta." + p.name);
      ASSERT_EQ(want.size(), p.numel) << p.name;
      std::copy(want.begin(), want.end(), want_delta.begin() + p.offset);
      for (size_t i = p.offset; i < p.offset + p.numel; ++i) got_delta[i] = m.params[i] - before[i];
    }
    // The key bias (the middle third of c_attn.bias) has a gradient of exactly zero in exact
    // arithmetic: it adds q.b to every score of a query, which the softmax cancels. Its fp32
    // gradient is rounding noise, which Adam's g / (|g| + eps) amplifies to an arbitrary step, so
    // the step is compared without it; the gradient itself must be noise-sized.
    const int C = m.config().n_embd;
    for (int l = 0; l < m.config().n_layer; ++l) {
      const auto& bias = m.info("h." + std::to_string(l) + ".attn.c_attn.bias");
      double key_max = 0, query_max = 0;
      for (int i = 0; i < C; ++i) {
        key_max = std::max(key_max, double(std::fabs(m.grads[bias.offset + C + i])));
        query_max = std::max(query_max, double(std::fabs(m.grads[bias.offset + 2 * C + i])));
        got_delta[bias.offset + C + i] = want_delta[bias.offset + C + i] = 0.0f;
      }
      EXPECT_LT(key_max, 1e-4 * query_max) << "layer " << l;
    }
    double worst = 0;
    std::string worst_name;
    for (const auto& p : m.table()) {
      const double e = rel_err(got_delta.data() + p.offset, want_delta.data() + p.offset, p.numel);
      if (e > worst) worst = e, worst_name = p.name;
    }
    std::printf("step %d: worst AdamW step rel err %.3g (%s)\n", step, worst, worst_name.c_str());
    const double err = rel_err(got_delta.data(), want_delta.data(), got_delta.size());
    std::printf("step %d: loss %.9g, pre-clip norm %.9g, AdamW step rel err %.3g\n", step, loss,
                norm, err);
    EXPECT_LT(err, 1e-5);
  }
}
