// GPU kernels of the elementwise and normalisation ops against their CPU twins
// (engine/ops/cpu/ops.h): encoder, LayerNorm (and the fused residual + LayerNorm), GELU, residual.
// Inputs are random, rounded to bf16 first and fed to the CPU twin as floats; outputs are poisoned
// with NaN before each kernel; tolerances are in tests/gpu/gpu_test_util.h.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/encoder.cuh"
#include "cuda/gelu.cuh"
#include "cuda/layernorm.cuh"
#include "cuda/residual.cuh"
#include "engine/ops/cpu/ops.h"
#include "tests/gpu/gpu_test_util.h"

namespace {

using kd::cuda::bf16;
using kd::test::close_norm;
using kd::test::DeviceBuffer;
using kd::test::kBf16Tol;
using kd::test::kF32Tol;
using kd::test::random_uniform;
using kd::test::round_to_bf16;

// ---- encoder
// ---------------------------------------------------------------------------------------

struct EncoderShape {
  int B, T, C, V;
};

class GpuEncoder : public ::testing::TestWithParam<EncoderShape> {};

TEST_P(GpuEncoder, ForwardAndBackwardMatchCpu) {
  KD_REQUIRE_GPU();
  const auto [B, T, C, V] = GetParam();
  const int N = B * T;
  std::mt19937 rng(1234 + N + C);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  std::vector<int32_t> tokens(N);
  for (auto& x : tokens) x = tok(rng);
  auto wte = random_uniform(static_cast<size_t>(V) * C, rng, -1, 1);
  auto wpe = random_uniform(static_cast<size_t>(T) * C, rng, -1, 1);
  auto dout = random_uniform(static_cast<size_t>(N) * C, rng, -1, 1);
  const auto wte_h = round_to_bf16(wte), wpe_h = round_to_bf16(wpe), dout_h = round_to_bf16(dout);
  // Gradients start non-zero: the backward adds.
  const auto dwte0 = random_uniform(wte.size(), rng, -1, 1);
  const auto dwpe0 = random_uniform(wpe.size(), rng, -1, 1);

  std::vector<float> out_cpu(static_cast<size_t>(N) * C);
  kd::cpu::encoder_forward(out_cpu.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  auto dwte_cpu = dwte0, dwpe_cpu = dwpe0;
  kd::cpu::encoder_backward(dwte_cpu.data(), dwpe_cpu.data(), dout.data(), tokens.data(), B, T, C);

  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<bf16> d_wte(wte_h), d_wpe(wpe_h), d_dout(dout_h), d_out(out_cpu.size());
  DeviceBuffer<float> d_dwte(dwte0), d_dwpe(dwpe0);
  d_out.poison();
  kd::cuda::encoder_forward(d_out.get(), d_tokens.get(), d_wte.get(), d_wpe.get(), B, T, C, 0);
  kd::cuda::encoder_backward(d_dwte.get(), d_dwpe.get(), d_dout.get(), d_tokens.get(), B, T, C, 0);
  EXPECT_TRUE(close_norm(d_out.download(), out_cpu, kBf16Tol, "out"));
  // Same additions in the same order as the CPU twin: equal up to fp32 rounding (in practice
  // exact).
  EXPECT_TRUE(close_norm(d_dwte.download(), dwte_cpu, 1e-6, "dwte"));
  EXPECT_TRUE(close_norm(d_dwpe.download(), dwpe_cpu, 1e-6, "dwpe"));
}

TEST(GpuEncoder, BackwardIsDeterministic) {
  KD_REQUIRE_GPU();
  const int B = 4, T = 1000, C = 768, V = 30;  // heavy token repetition
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  std::vector<int32_t> tokens(B * T);
  for (auto& x : tokens) x = tok(rng);
  auto dout = random_uniform(static_cast<size_t>(B) * T * C, rng, -1, 1);
  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<bf16> d_dout(round_to_bf16(dout));
  std::vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    DeviceBuffer<float> dwte(std::vector<float>(static_cast<size_t>(V) * C, 0.5f));
    DeviceBuffer<float> dwpe(std::vector<float>(static_cast<size_t>(T) * C, 0.25f));
    kd::cuda::encoder_backward(dwte.get(), dwpe.get(), d_dout.get(), d_tokens.get(), B, T, C, 0);
    const auto got = dwte.download();
    if (rep == 0)
      first = got;
    else
      EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * sizeof(float)));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuEncoder,
                         ::testing::Values(EncoderShape{1, 1, 8, 3}, EncoderShape{3, 37, 100, 50},
                                           EncoderShape{2, 64, 768, 500},
                                           EncoderShape{5, 1000, 37, 20},  // N = 5000: not 2^k
                                           EncoderShape{8, 1024, 768, 50257}));

// ---- LayerNorm
// ---------------------------------------------------------------------------------------

struct NormShape {
  int N, C;
};

class GpuLayerNorm : public ::testing::TestWithParam<NormShape> {};

TEST_P(GpuLayerNorm, ForwardAndBackwardMatchCpu) {
  KD_REQUIRE_GPU();
  const auto [N, C] = GetParam();
  const size_t NC = static_cast<size_t>(N) * C;
  std::mt19937 rng(99 + N * 7 + C);
  auto x = random_uniform(NC, rng, -2, 2);
  for (int n = 0; n < N; ++n)  // a per-row offset and scale, as real activations have
    for (int c = 0; c < C; ++c)
      x[n * static_cast<size_t>(C) + c] =
          x[n * static_cast<size_t>(C) + c] * (1 + n % 3) + 0.5f * (n % 5);
  auto w = random_uniform(C, rng, 0.5f, 1.5f), b = random_uniform(C, rng, -0.5f, 0.5f);
  auto dout = random_uniform(NC, rng, -1, 1), dinp0 = random_uniform(NC, rng, -1, 1);
  const auto x_h = round_to_bf16(x), w_h = round_to_bf16(w), b_h = round_to_bf16(b);
  const auto dout_h = round_to_bf16(dout), dinp0_h = round_to_bf16(dinp0);
  const auto dw0 = random_uniform(C, rng, -1, 1), db0 = random_uniform(C, rng, -1, 1);

  std::vector<float> out(NC), mean(N), rstd(N);
  kd::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N,
                             C);
  auto dinp = dinp0;
  auto dw = dw0, db = db0;
  kd::cpu::layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                              mean.data(), rstd.data(), N, C);

  DeviceBuffer<bf16> d_x(x_h), d_w(w_h), d_b(b_h), d_out(NC), d_dout(dout_h), d_dinp(dinp0_h);
  DeviceBuffer<float> d_mean(N), d_rstd(N), d_dw(dw0), d_db(db0);
  d_out.poison();
  d_mean.poison();
  d_rstd.poison();
  kd::cuda::layernorm_forward(d_out.get(), d_mean.get(), d_rstd.get(), d_x.get(), d_w.get(),
                              d_b.get(), N, C, 0);
  EXPECT_TRUE(close_norm(d_out.download(), out, kBf16Tol, "out"));
  EXPECT_TRUE(close_norm(d_mean.download(), mean, kF32Tol, "mean"));
  EXPECT_TRUE(close_norm(d_rstd.download(), rstd, kF32Tol, "rstd"));

  // Backward from the CPU statistics, so both sides see identical inputs.
  d_mean.upload(mean);
  d_rstd.upload(rstd);
  kd::cuda::layernorm_backward(d_dinp.get(), d_dw.get(), d_db.get(), d_dout.get(), d_x.get(),
                               d_w.get(), d_mean.get(), d_rstd.get(), N, C, 0);
  EXPECT_TRUE(close_norm(d_dinp.download(), dinp, kBf16Tol, "dinp"));
  EXPECT_TRUE(close_norm(d_dw.download(), dw, kF32Tol, "dweight"));
  EXPECT_TRUE(close_norm(d_db.download(), db, kF32Tol, "dbias"));
}

TEST_P(GpuLayerNorm, FusedResidualMatchesCpu) {
  KD_REQUIRE_GPU();
  const auto [N, C] = GetParam();
  const size_t NC = static_cast<size_t>(N) * C;
  std::mt19937 rng(5 + N + C);
  auto a = random_uniform(NC, rng, -2, 2), bb = random_uniform(NC, rng, -1, 3);
  auto w = random_uniform(C, rng, 0.5f, 1.5f), b = random_uniform(C, rng, -0.5f, 0.5f);
  const auto a_h = round_to_bf16(a), bb_h = round_to_bf16(bb), w_h = round_to_bf16(w),
             b_h = round_to_bf16(b);
  std::vector<float> resid(NC), out(NC), mean(N), rstd(N);
  kd::cpu::residual_forward(resid.data(), a.data(), bb.data(), NC);
  round_to_bf16(resid);  // the GPU normalises the bf16 residual it stores
  kd::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), resid.data(), w.data(), b.data(),
                             N, C);
  DeviceBuffer<bf16> d_a(a_h), d_bb(bb_h), d_w(w_h), d_b(b_h), d_resid(NC), d_out(NC);
  DeviceBuffer<float> d_mean(N), d_rstd(N);
  d_resid.poison();
  d_out.poison();
  d_mean.poison();
  d_rstd.poison();
  kd::cuda::fused_residual_layernorm_forward(d_resid.get(), d_out.get(), d_mean.get(), d_rstd.get(),
                                             d_a.get(), d_bb.get(), d_w.get(), d_b.get(), N, C, 0);
  EXPECT_TRUE(close_norm(d_resid.download(), resid, 1e-6, "residual"));
  EXPECT_TRUE(close_norm(d_out.download(), out, kBf16Tol, "out"));
  EXPECT_TRUE(close_norm(d_mean.download(), mean, kF32Tol, "mean"));
  EXPECT_TRUE(close_norm(d_rstd.download(), rstd, kF32Tol, "rstd"));
}

INSTANTIATE_TEST_SUITE_P(Shapes, GpuLayerNorm,
                         ::testing::Values(NormShape{1, 8}, NormShape{5, 37}, NormShape{33, 100},
                                           NormShape{1000, 768}, NormShape{67, 1600},
                                           NormShape{4099, 768}));

// ---- GELU and residual
// --------------------------------------------------------------------------- Sizes include 1, odd
// counts and a misaligned start (offset 1 or 3 elements into the allocation), which exercise the
// scalar head and tail around the 16-byte vector body.

struct ElemCase {
  size_t n;
  size_t offset;
};

class GpuElementwise : public ::testing::TestWithParam<ElemCase> {};

TEST_P(GpuElementwise, GeluMatchesCpu) {
  KD_REQUIRE_GPU();
  const auto [n, off] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(n + off));
  auto x = random_uniform(n, rng, -5, 5), dout = random_uniform(n, rng, -1, 1);
  auto dinp0 = random_uniform(n, rng, -1, 1);
  const auto x_h = round_to_bf16(x), dout_h = round_to_bf16(dout), dinp0_h = round_to_bf16(dinp0);
  std::vector<float> y(n), dinp = dinp0;
  kd::cpu::gelu_forward(y.data(), x.data(), n);
  kd::cpu::gelu_backward(dinp.data(), x.data(), dout.data(), n);

  auto pad = [&](const std::vector<bf16>& v) {
    std::vector<bf16> p(v.size() + off, __float2bfloat16(0.0f));
    std::copy(v.begin(), v.end(), p.begin() + off);
    return p;
  };
  auto unpad = [&](const std::vector<bf16>& p) {
    return std::vector<bf16>(p.begin() + off, p.end());
  };
  DeviceBuffer<bf16> d_x(pad(x_h)), d_dout(pad(dout_h)), d_dinp(pad(dinp0_h)), d_y(n + off);
  d_y.poison();
  kd::cuda::gelu_forward(d_y.get() + off, d_x.get() + off, n, 0);
  kd::cuda::gelu_backward(d_dinp.get() + off, d_x.get() + off, d_dout.get() + off, n, 0);
  EXPECT_TRUE(close_norm(unpad(d_y.download()), y, kBf16Tol, "gelu out"));
  EXPECT_TRUE(close_norm(unpad(d_dinp.download()), dinp, kBf16Tol, "gelu dinp"));
}

TEST_P(GpuElementwise, ResidualMatchesCpu) {
  KD_REQUIRE_GPU();
  const auto [n, off] = GetParam();
  std::mt19937 rng(static_cast<unsigned>(3 * n + off));
  auto a = random_uniform(n, rng, -3, 3), b = random_uniform(n, rng, -3, 3);
  auto dout = random_uniform(n, rng, -1, 1), da0 = random_uniform(n, rng, -1, 1),
       db0 = random_uniform(n, rng, -1, 1);
  const auto a_h = round_to_bf16(a), b_h = round_to_bf16(b), dout_h = round_to_bf16(dout),
             da0_h = round_to_bf16(da0), db0_h = round_to_bf16(db0);
  std::vector<float> out(n), da = da0, db = db0;
  kd::cpu::residual_forward(out.data(), a.data(), b.data(), n);
  kd::cpu::residual_backward(da.data(), db.data(), dout.data(), n);

  // The output lands at a different misalignment than the inputs when off is odd: the kernel must
  // then take its all-scalar path.
  DeviceBuffer<bf16> d_a(a_h), d_b(b_h), d_dout(dout_h), d_da(da0_h), d_db(db0_h), d_out(n + off);
  d_out.poison();
  kd::cuda::residual_forward(d_out.get() + off, d_a.get(), d_b.get(), n, 0);
  kd::cuda::residual_backward(d_da.get(), d_db.get(), d_dout.get(), n, 0);
  const auto out_all = d_out.download();
  EXPECT_TRUE(close_norm(std::vector<bf16>(out_all.begin() + off, out_all.end()), out, kBf16Tol,
                         "residual out"));
  EXPECT_TRUE(close_norm(d_da.download(), da, kBf16Tol, "da"));
  EXPECT_TRUE(close_norm(d_db.download(), db, kBf16Tol, "db"));
}

INSTANTIATE_TEST_SUITE_P(Sizes, GpuElementwise,
                         ::testing::Values(ElemCase{1, 0}, ElemCase{7, 0}, ElemCase{7, 3},
                                           ElemCase{1000, 1}, ElemCase{1000003, 0},
                                           ElemCase{1000003, 3}, ElemCase{8192 * 768, 0}));

}  // namespace
