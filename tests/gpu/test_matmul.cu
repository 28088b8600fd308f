// The cuBLASLt matmul against its CPU twin: forward with and without bias and GELU (fused epilogue
// and the fallback for OC not a multiple of 8), backward with ADD semantics for dinp, dweight
// (fp32) and dbias, both weight layouts, awkward shapes. Inputs are random and rounded to bf16;
// outputs are poisoned (NaN) before the GPU writes them.
#include <random>
#include <string>
#include <vector>

#include "cuda/matmul.cuh"
#include "engine/ops/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::Layout;
using kd::cuda::bf16;
using kd::test::close_norm;
using kd::test::DeviceBuffer;
using kd::test::kBf16Tol;
using kd::test::random_uniform;
using kd::test::round_to_bf16;

// fp32 gradients from identical bf16 inputs: only the summation order (and the tensor cores'
// internal accumulation) differ.
constexpr double kGradF32Tol = 1e-4;

struct Case {
  int N, C, OC;
  Layout layout;
  bool bias, gelu;
};

std::string name_of(const Case& c) {
  return "N" + std::to_string(c.N) + "_C" + std::to_string(c.C) + "_OC" + std::to_string(c.OC) +
         (c.layout == Layout::InOut ? "_InOut" : "_OutIn") + (c.bias ? "_bias" : "") +
         (c.gelu ? "_gelu" : "");
}

class MatmulTest : public ::testing::TestWithParam<Case> {};

TEST_P(MatmulTest, ForwardMatchesCpu) {
  KD_REQUIRE_GPU();
  const Case c = GetParam();
  const size_t n_in = static_cast<size_t>(c.N) * c.C, n_w = static_cast<size_t>(c.C) * c.OC;
  const size_t n_out = static_cast<size_t>(c.N) * c.OC;
  std::mt19937 rng(11 + c.N + c.C + c.OC);
  std::vector<float> inp = random_uniform(n_in, rng, -1.0f, 1.0f);
  std::vector<float> w = random_uniform(n_w, rng, -0.3f, 0.3f);
  std::vector<float> bias = random_uniform(c.OC, rng, -0.5f, 0.5f);
  const auto inp_b = round_to_bf16(inp), w_b = round_to_bf16(w), bias_b = round_to_bf16(bias);

  std::vector<float> pre(n_out), act(n_out);
  kd::cpu::matmul_forward(pre.data(), inp.data(), w.data(), c.bias ? bias.data() : nullptr, c.N,
                          c.C, c.OC, c.layout);
  if (c.gelu) kd::cpu::gelu_forward(act.data(), pre.data(), n_out);

  DeviceBuffer<bf16> d_inp(inp_b), d_w(w_b), d_bias(bias_b), d_out(n_out), d_pre(n_out);
  d_out.poison();
  d_pre.poison();
  kd::cuda::matmul_forward(d_out.get(), d_inp.get(), d_w.get(), c.bias ? d_bias.get() : nullptr,
                           c.N, c.C, c.OC, c.layout, c.gelu, c.gelu ? d_pre.get() : nullptr,
                           nullptr);
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  if (c.gelu) {
    EXPECT_TRUE(close_norm(d_pre.download(), pre, kBf16Tol, "pre_gelu"));
    EXPECT_TRUE(close_norm(d_out.download(), act, kBf16Tol, "out (gelu)"));
  } else {
    EXPECT_TRUE(close_norm(d_out.download(), pre, kBf16Tol, "out"));
  }
}

TEST_P(MatmulTest, BackwardAddsLikeCpu) {
  KD_REQUIRE_GPU();
  const Case c = GetParam();
  const size_t n_in = static_cast<size_t>(c.N) * c.C, n_w = static_cast<size_t>(c.C) * c.OC;
  const size_t n_out = static_cast<size_t>(c.N) * c.OC;
  std::mt19937 rng(17 + c.N * 3 + c.C + c.OC);
  std::vector<float> inp = random_uniform(n_in, rng, -1.0f, 1.0f);
  std::vector<float> w = random_uniform(n_w, rng, -0.3f, 0.3f);
  std::vector<float> dout = random_uniform(n_out, rng, -1.0f, 1.0f);
  // Existing gradient contents: the backward must add to them.
  std::vector<float> dinp = random_uniform(n_in, rng, -1.0f, 1.0f);
  std::vector<float> dw = random_uniform(n_w, rng, -1.0f, 1.0f);
  std::vector<float> db = random_uniform(c.OC, rng, -1.0f, 1.0f);
  const auto inp_b = round_to_bf16(inp), w_b = round_to_bf16(w), dout_b = round_to_bf16(dout);
  const auto dinp_b = round_to_bf16(dinp);  // the GPU's dinp is bf16: both start from these values

  DeviceBuffer<bf16> d_inp(inp_b), d_w(w_b), d_dout(dout_b), d_dinp(dinp_b);
  DeviceBuffer<float> d_dw(dw), d_db(db);

  std::vector<float> dinp_cpu = dinp, dw_cpu = dw, db_cpu = db;
  kd::cpu::matmul_backward(dinp_cpu.data(), dw_cpu.data(), db_cpu.data(), dout.data(), inp.data(),
                           w.data(), c.N, c.C, c.OC, c.layout);
  kd::cuda::matmul_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_inp.get(),
                            d_w.get(), c.N, c.C, c.OC, c.layout, nullptr);
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(close_norm(d_dinp.download(), dinp_cpu, kBf16Tol, "dinp (+=)"));
  EXPECT_TRUE(close_norm(d_dw.download(), dw_cpu, kGradF32Tol, "dweight (+=)"));
  EXPECT_TRUE(close_norm(d_db.download(), db_cpu, kGradF32Tol, "dbias (+=)"));

  // Overwrite mode for dinp (poisoned first), and a call with only dweight wanted.
  std::vector<float> dinp_fresh(n_in, 0.0f), dw2 = dw_cpu;
  kd::cpu::matmul_backward(dinp_fresh.data(), dw2.data(), nullptr, dout.data(), inp.data(),
                           w.data(), c.N, c.C, c.OC, c.layout);
  d_dinp.poison();
  kd::cuda::matmul_backward(d_dinp.get(), nullptr, nullptr, d_dout.get(), d_inp.get(), d_w.get(),
                            c.N, c.C, c.OC, c.layout, nullptr, /*accumulate_dinp=*/false);
  kd::cuda::matmul_backward(nullptr, d_dw.get(), nullptr, d_dout.get(), d_inp.get(), d_w.get(), c.N,
                            c.C, c.OC, c.layout, nullptr);
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_TRUE(close_norm(d_dinp.download(), dinp_fresh, kBf16Tol, "dinp (=)"));
  EXPECT_TRUE(close_norm(d_dw.download(), dw2, kGradF32Tol, "dweight (+= twice)"));
}

std::vector<Case> cases() {
  std::vector<Case> v;
  const int shapes[][3] = {{100, 72, 200}, {64, 128, 256}, {37, 64, 100}, {256, 768, 96}};
  for (const auto& s : shapes)
    for (Layout l : {Layout::InOut, Layout::OutIn})
      for (int variant = 0; variant < 3; ++variant)  // plain, bias, bias + gelu
        v.push_back({s[0], s[1], s[2], l, variant >= 1, variant == 2});
  v.push_back({100, 72, 200, Layout::InOut, false, true});  // GELU without bias
  v.push_back({1, 40, 24, Layout::OutIn, true, false});     // one row
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulTest, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return name_of(info.param);
                         });

TEST(MatmulContext, PlansAreCachedAndReused) {
  KD_REQUIRE_GPU();
  const int N = 48, C = 64, OC = 80;
  std::mt19937 rng(5);
  std::vector<float> inp = random_uniform(static_cast<size_t>(N) * C, rng, -1.0f, 1.0f);
  std::vector<float> w = random_uniform(static_cast<size_t>(C) * OC, rng, -1.0f, 1.0f);
  DeviceBuffer<bf16> d_inp(round_to_bf16(inp)), d_w(round_to_bf16(w)),
      d_out(static_cast<size_t>(N) * OC);
  kd::cuda::matmul_forward(d_out.get(), d_inp.get(), d_w.get(), nullptr, N, C, OC, Layout::InOut,
                           false, nullptr, nullptr);
  const kd::cuda::MatmulStats first = kd::cuda::matmul_stats();
  for (int i = 0; i < 3; ++i)
    kd::cuda::matmul_forward(d_out.get(), d_inp.get(), d_w.get(), nullptr, N, C, OC, Layout::InOut,
                             false, nullptr, nullptr);
  KD_CUDA_CHECK(cudaDeviceSynchronize());
  const kd::cuda::MatmulStats after = kd::cuda::matmul_stats();
  EXPECT_EQ(after.plans, first.plans);
  EXPECT_EQ(after.calls, first.calls + 3);
  EXPECT_EQ(after.workspace_bytes, size_t{32} << 20);
}

}  // namespace
