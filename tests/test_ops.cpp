// CPU twins of the model's core ops (engine/ops/cpu/ops.h) against independent double-precision
// references: the fp32 forward against a double forward, and the fp32 analytic backward against
// central finite differences of L = sum(w ∘ out) computed in double.
//
// Tolerances (measured errors are ~1e-8..3e-7 for every op and shape here):
// - kForwardTol = 1e-5: an fp32 forward rounds each value at ~6e-8 relative and sums at most a few
//   hundred terms, so its norm-wise relative error stays below ~1e-6; any wrong term (index, scale,
//   missing bias) gives errors of order 1e-2 or more.
// - kGradTol = 1e-5: the finite differences are exact to ~1e-9 (double, h = 1e-5), so the error
// left
//   is the fp32 rounding of the backward itself, ~1e-7..1e-6 norm-wise. A wrong or missing term in
//   a gradient shows up as an error of order 1e-2..1.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "engine/base/error.h"
#include "engine/ops/cpu/ops.h"
#include "tests/grad_check.h"

namespace {

using kd::test::all_finite;
using kd::test::fd_gradient;
using kd::test::project;
using kd::test::random_floats;
using kd::test::rel_err;
using kd::test::to_double;

constexpr double kForwardTol = 1e-5;
constexpr double kGradTol = 1e-5;
constexpr double kAddTol = 1e-6;  // second backward call vs twice the first (BLAS may re-block)
const float kNaN = std::numeric_limits<float>::quiet_NaN();

std::vector<double> twice(const std::vector<float>& v) {
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = 2.0 * v[i];
  return out;
}

// ---- double-precision references, written independently of engine/ops/cpu
// ------------------------------

std::vector<double> ref_encoder(const std::vector<int32_t>& tokens, const std::vector<double>& wte,
                                const std::vector<double>& wpe, int B, int T, int C) {
  std::vector<double> out(static_cast<size_t>(B) * T * C);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c)
        out[(b * T + t) * C + c] = wte[tokens[b * T + t] * C + c] + wpe[t * C + c];
  return out;
}

struct RefNorm {
  std::vector<double> out, mean, rstd;
};

RefNorm ref_layernorm(const std::vector<double>& x, const std::vector<double>& w,
                      const std::vector<double>& bias, int N, int C) {
  RefNorm r{std::vector<double>(x.size()), std::vector<double>(N), std::vector<double>(N)};
  for (int n = 0; n < N; ++n) {
    double m = 0.0;
    for (int c = 0; c < C; ++c) m += x[n * C + c];
    m /= C;
    double var = 0.0;
    for (int c = 0; c < C; ++c) var += (x[n * C + c] - m) * (x[n * C + c] - m);
    var /= C;
    const double s = 1.0 / std::sqrt(var + 1e-5);
    for (int c = 0; c < C; ++c) r.out[n * C + c] = (x[n * C + c] - m) * s * w[c] + bias[c];
    r.mean[n] = m;
    r.rstd[n] = s;
  }
  return r;
}

// W is [C,OC] for InOut and [OC,C] for OutIn; bias may be empty.
std::vector<double> ref_matmul(const std::vector<double>& inp, const std::vector<double>& W,
                               const std::vector<double>& bias, int N, int C, int OC,
                               kd::Layout layout) {
  std::vector<double> out(static_cast<size_t>(N) * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = bias.empty() ? 0.0 : bias[o];
      for (int c = 0; c < C; ++c) {
        const double w = layout == kd::Layout::InOut ? W[c * OC + o] : W[o * C + c];
        s += inp[n * C + c] * w;
      }
      out[n * OC + o] = s;
    }
  return out;
}

struct RefAttn {
  std::vector<double> out, lse;
};

// Plain softmax attention with a full score row per query and an explicit causal mask.
RefAttn ref_attention(const std::vector<double>& qkv, int B, int T, int C, int NH) {
  const int hs = C / NH;
  RefAttn r{std::vector<double>(static_cast<size_t>(B) * T * C),
            std::vector<double>(static_cast<size_t>(B) * NH * T)};
  auto at = [&](int b, int t, int part, int h, int d) {
    return qkv[(static_cast<size_t>(b) * T + t) * 3 * C + part * C + h * hs + d];
  };
  std::vector<double> w(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T; ++t) {
        double z = 0.0;
        for (int j = 0; j < T; ++j) {
          if (j > t) {
            w[j] = 0.0;  // masked: a query never sees a later key
            continue;
          }
          double s = 0.0;
          for (int d = 0; d < hs; ++d) s += at(b, t, 0, h, d) * at(b, j, 1, h, d);
          w[j] = std::exp(s / std::sqrt(static_cast<double>(hs)));
          z += w[j];
        }
        for (int d = 0; d < hs; ++d) {
          double o = 0.0;
          for (int j = 0; j < T; ++j) o += w[j] / z * at(b, j, 2, h, d);
          r.out[(static_cast<size_t>(b) * T + t) * C + h * hs + d] = o;
        }
        r.lse[(static_cast<size_t>(b) * NH + h) * T + t] = std::log(z);
      }
  return r;
}

std::vector<double> ref_gelu(const std::vector<double>& x) {
  const double pi = std::acos(-1.0);
  std::vector<double> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] =
        0.5 * x[i] * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (x[i] + 0.044715 * std::pow(x[i], 3))));
  return out;
}

std::vector<double> ref_residual(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] + b[i];
  return out;
}

// ---- encoder
// ---------------------------------------------------------------------------------------

struct EncoderShape {
  int B, T, C, V, maxT;
};

TEST(Encoder, ForwardAndBackwardMatchDoubleReference) {
  const EncoderShape shapes[] = {{2, 7, 12, 5, 9}, {1, 17, 20, 50, 17}, {3, 4, 3, 2, 6}};
  std::mt19937 rng(11);
  for (const auto& s : shapes) {
    SCOPED_TRACE(testing::Message() << "B=" << s.B << " T=" << s.T << " C=" << s.C << " V=" << s.V);
    std::vector<int32_t> tokens(s.B * s.T);
    std::uniform_int_distribution<int32_t> tok(0, s.V - 1);
    for (auto& t : tokens) t = tok(rng);  // small vocabularies make repeated tokens certain
    auto wte = random_floats(static_cast<size_t>(s.V) * s.C, rng);
    auto wpe = random_floats(static_cast<size_t>(s.maxT) * s.C, rng);
    const size_t n_out = static_cast<size_t>(s.B) * s.T * s.C;

    std::vector<float> out(n_out, kNaN);
    kd::cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), s.B, s.T, s.C);
    ASSERT_TRUE(all_finite(out));
    auto wte_d = to_double(wte), wpe_d = to_double(wpe);
    EXPECT_LT(rel_err(out, ref_encoder(tokens, wte_d, wpe_d, s.B, s.T, s.C)), kForwardTol);

    auto w = random_floats(n_out, rng);
    const auto w_d = to_double(w);
    std::vector<float> dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
    kd::cpu::encoder_backward(dwte.data(), dwpe.data(), w.data(), tokens.data(), s.B, s.T, s.C);
    auto loss = [&] { return project(w_d, ref_encoder(tokens, wte_d, wpe_d, s.B, s.T, s.C)); };
    EXPECT_LT(rel_err(dwte, fd_gradient(loss, wte_d)), kGradTol);
    EXPECT_LT(rel_err(dwpe, fd_gradient(loss, wpe_d)), kGradTol);

    // Backward adds: a second call doubles the gradients.
    auto dwte2 = dwte, dwpe2 = dwpe;
    kd::cpu::encoder_backward(dwte2.data(), dwpe2.data(), w.data(), tokens.data(), s.B, s.T, s.C);
    EXPECT_LT(rel_err(dwte2, twice(dwte)), kAddTol);
    EXPECT_LT(rel_err(dwpe2, twice(dwpe)), kAddTol);
  }
}

TEST(Encoder, BackwardIsIndependentOfThreadCount) {
  const int B = 3, T = 11, C = 70, V = 4;
  std::mt19937 rng(12);
  std::vector<int32_t> tokens(B * T);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % V);
  auto dout = random_floats(static_cast<size_t>(B) * T * C, rng);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> dwte(V * C, 0.0f), dwpe(T * C, 0.0f);
    kd::cpu::encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
    omp_set_num_threads(saved);
    dwte.insert(dwte.end(), dwpe.begin(), dwpe.end());
    return dwte;
  };
  EXPECT_EQ(run(1), run(3));
}

TEST(Encoder, RejectsNegativeToken) {
  const int B = 1, T = 3, C = 4;
  std::vector<int32_t> tokens = {0, -1, 1};
  std::vector<float> wte(2 * C, 1.0f), wpe(T * C, 1.0f), out(B * T * C);
  EXPECT_THROW(kd::cpu::encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C),
               kd::ContractError);
  EXPECT_THROW(
      kd::cpu::encoder_backward(wte.data(), wpe.data(), out.data(), tokens.data(), B, T, C),
      kd::ContractError);
}

// ---- layernorm
// -------------------------------------------------------------------------------------

TEST(LayerNorm, ForwardAndBackwardMatchDoubleReference) {
  const int shapes[][2] = {{7, 12}, {17, 20}, {3, 64}, {5, 3}, {2, 77}};
  std::mt19937 rng(21);
  for (const auto& sh : shapes) {
    const int N = sh[0], C = sh[1];
    SCOPED_TRACE(testing::Message() << "N=" << N << " C=" << C);
    // An offset and a spread per row, so the normalisation has real work to do.
    auto x = random_floats(static_cast<size_t>(N) * C, rng, -2.0f, 3.0f);
    auto weight = random_floats(C, rng, 0.5f, 1.5f);
    auto bias = random_floats(C, rng);
    std::vector<float> out(x.size(), kNaN), mean(N, kNaN), rstd(N, kNaN);
    kd::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(),
                               bias.data(), N, C);
    ASSERT_TRUE(all_finite(out) && all_finite(mean) && all_finite(rstd));
    auto x_d = to_double(x), w_d = to_double(weight), b_d = to_double(bias);
    const RefNorm ref = ref_layernorm(x_d, w_d, b_d, N, C);
    EXPECT_LT(rel_err(out, ref.out), kForwardTol);
    EXPECT_LT(rel_err(mean, ref.mean), kForwardTol);
    EXPECT_LT(rel_err(rstd, ref.rstd), kForwardTol);

    auto proj = random_floats(x.size(), rng);
    const auto proj_d = to_double(proj);
    std::vector<float> dx(x.size(), 0.0f), dw(C, 0.0f), db(C, 0.0f);
    kd::cpu::layernorm_backward(dx.data(), dw.data(), db.data(), proj.data(), x.data(),
                                weight.data(), mean.data(), rstd.data(), N, C);
    auto loss = [&] { return project(proj_d, ref_layernorm(x_d, w_d, b_d, N, C).out); };
    EXPECT_LT(rel_err(dx, fd_gradient(loss, x_d)), kGradTol);
    EXPECT_LT(rel_err(dw, fd_gradient(loss, w_d)), kGradTol);
    EXPECT_LT(rel_err(db, fd_gradient(loss, b_d)), kGradTol);

    auto dx2 = dx, dw2 = dw, db2 = db;
    kd::cpu::layernorm_backward(dx2.data(), dw2.data(), db2.data(), proj.data(), x.data(),
                                weight.data(), mean.data(), rstd.data(), N, C);
    EXPECT_LT(rel_err(dx2, twice(dx)), kAddTol);
    EXPECT_LT(rel_err(dw2, twice(dw)), kAddTol);
    EXPECT_LT(rel_err(db2, twice(db)), kAddTol);
  }
}

TEST(LayerNorm, ParameterGradientsAreIndependentOfThreadCount) {
  const int N = 37, C = 100;
  std::mt19937 rng(22);
  auto x = random_floats(static_cast<size_t>(N) * C, rng);
  auto weight = random_floats(C, rng), bias = random_floats(C, rng);
  auto dout = random_floats(x.size(), rng);
  std::vector<float> out(x.size()), mean(N), rstd(N);
  kd::cpu::layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), weight.data(),
                             bias.data(), N, C);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> dx(x.size(), 0.0f), dw(C, 0.0f), db(C, 0.0f);
    kd::cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(),
                                weight.data(), mean.data(), rstd.data(), N, C);
    omp_set_num_threads(saved);
    dx.insert(dx.end(), dw.begin(), dw.end());
    dx.insert(dx.end(), db.begin(), db.end());
    return dx;
  };
  EXPECT_EQ(run(1), run(3));
}

// ---- matmul
// ----------------------------------------------------------------------------------------

struct MatmulShape {
  int N, C, OC;
};

class MatmulTest : public testing::TestWithParam<kd::Layout> {};

TEST_P(MatmulTest, ForwardAndBackwardMatchDoubleReference) {
  const auto layout = GetParam();
  const MatmulShape shapes[] = {{5, 7, 11}, {13, 16, 3}, {1, 1, 1}, {33, 24, 40}, {70, 9, 130}};
  std::mt19937 rng(31);
  for (const auto& s : shapes) {
    SCOPED_TRACE(testing::Message() << "N=" << s.N << " C=" << s.C << " OC=" << s.OC);
    auto inp = random_floats(static_cast<size_t>(s.N) * s.C, rng);
    auto W = random_floats(static_cast<size_t>(s.C) * s.OC, rng);
    auto bias = random_floats(s.OC, rng);
    std::vector<float> out(static_cast<size_t>(s.N) * s.OC, kNaN);
    kd::cpu::matmul_forward(out.data(), inp.data(), W.data(), bias.data(), s.N, s.C, s.OC, layout);
    ASSERT_TRUE(all_finite(out));
    auto inp_d = to_double(inp), W_d = to_double(W), bias_d = to_double(bias);
    EXPECT_LT(rel_err(out, ref_matmul(inp_d, W_d, bias_d, s.N, s.C, s.OC, layout)), kForwardTol);

    auto proj = random_floats(out.size(), rng);
    const auto proj_d = to_double(proj);
    std::vector<float> dinp(inp.size(), 0.0f), dW(W.size(), 0.0f), db(s.OC, 0.0f);
    kd::cpu::matmul_backward(dinp.data(), dW.data(), db.data(), proj.data(), inp.data(), W.data(),
                             s.N, s.C, s.OC, layout);
    auto loss = [&] {
      return project(proj_d, ref_matmul(inp_d, W_d, bias_d, s.N, s.C, s.OC, layout));
    };
    EXPECT_LT(rel_err(dinp, fd_gradient(loss, inp_d)), kGradTol);
    EXPECT_LT(rel_err(dW, fd_gradient(loss, W_d)), kGradTol);
    EXPECT_LT(rel_err(db, fd_gradient(loss, bias_d)), kGradTol);

    auto dinp2 = dinp, dW2 = dW, db2 = db;
    kd::cpu::matmul_backward(dinp2.data(), dW2.data(), db2.data(), proj.data(), inp.data(),
                             W.data(), s.N, s.C, s.OC, layout);
    EXPECT_LT(rel_err(dinp2, twice(dinp)), kAddTol);
    EXPECT_LT(rel_err(dW2, twice(dW)), kAddTol);
    EXPECT_LT(rel_err(db2, twice(db)), kAddTol);
  }
}

TEST_P(MatmulTest, NullBiasAndNullGradientsAreSkipped) {
  const auto layout = GetParam();
  const int N = 9, C = 6, OC = 14;
  std::mt19937 rng(32);
  auto inp = random_floats(static_cast<size_t>(N) * C, rng);
  auto W = random_floats(static_cast<size_t>(C) * OC, rng);
  std::vector<float> out(static_cast<size_t>(N) * OC, kNaN);
  kd::cpu::matmul_forward(out.data(), inp.data(), W.data(), nullptr, N, C, OC, layout);
  ASSERT_TRUE(all_finite(out));
  EXPECT_LT(rel_err(out, ref_matmul(to_double(inp), to_double(W), {}, N, C, OC, layout)),
            kForwardTol);

  // Each gradient alone equals the same gradient computed alongside the others.
  auto dout = random_floats(out.size(), rng);
  std::vector<float> dinp(inp.size(), 0.0f), dW(W.size(), 0.0f), db(OC, 0.0f);
  kd::cpu::matmul_backward(dinp.data(), dW.data(), db.data(), dout.data(), inp.data(), W.data(), N,
                           C, OC, layout);
  std::vector<float> dinp_only(inp.size(), 0.0f), dW_only(W.size(), 0.0f), db_only(OC, 0.0f);
  kd::cpu::matmul_backward(dinp_only.data(), nullptr, nullptr, dout.data(), inp.data(), W.data(), N,
                           C, OC, layout);
  kd::cpu::matmul_backward(nullptr, dW_only.data(), nullptr, dout.data(), inp.data(), W.data(), N,
                           C, OC, layout);
  kd::cpu::matmul_backward(nullptr, nullptr, db_only.data(), dout.data(), inp.data(), W.data(), N,
                           C, OC, layout);
  EXPECT_EQ(dinp_only, dinp);
  EXPECT_EQ(dW_only, dW);
  EXPECT_EQ(db_only, db);
}

INSTANTIATE_TEST_SUITE_P(Layouts, MatmulTest, testing::Values(kd::Layout::InOut, kd::Layout::OutIn),
                         [](const testing::TestParamInfo<kd::Layout>& info) {
                           return info.param == kd::Layout::InOut ? "InOut" : "OutIn";
                         });

// ---- attention
// -------------------------------------------------------------------------------------

struct AttnShape {
  int B, T, C, NH;
};

TEST(Attention, ForwardAndBackwardMatchDoubleReference) {
  const AttnShape shapes[] = {
      {2, 7, 12, 3}, {1, 17, 20, 4}, {3, 5, 8, 1}, {1, 1, 6, 2}, {2, 33, 16, 2}};
  std::mt19937 rng(41);
  for (const auto& s : shapes) {
    SCOPED_TRACE(testing::Message()
                 << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH);
    // Spread of [-2, 2] gives peaked as well as flat softmax rows.
    auto qkv = random_floats(static_cast<size_t>(s.B) * s.T * 3 * s.C, rng, -2.0f, 2.0f);
    std::vector<float> out(static_cast<size_t>(s.B) * s.T * s.C, kNaN);
    std::vector<float> lse(static_cast<size_t>(s.B) * s.NH * s.T, kNaN);
    kd::cpu::attention_forward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH);
    ASSERT_TRUE(all_finite(out) && all_finite(lse));
    auto qkv_d = to_double(qkv);
    const RefAttn ref = ref_attention(qkv_d, s.B, s.T, s.C, s.NH);
    EXPECT_LT(rel_err(out, ref.out), kForwardTol);
    EXPECT_LT(rel_err(lse, ref.lse), kForwardTol);

    auto proj = random_floats(out.size(), rng);
    const auto proj_d = to_double(proj);
    std::vector<float> dqkv(qkv.size(), 0.0f);
    kd::cpu::attention_backward(dqkv.data(), proj.data(), qkv.data(), out.data(), lse.data(), s.B,
                                s.T, s.C, s.NH);
    auto loss = [&] { return project(proj_d, ref_attention(qkv_d, s.B, s.T, s.C, s.NH).out); };
    EXPECT_LT(rel_err(dqkv, fd_gradient(loss, qkv_d)), kGradTol);

    auto dqkv2 = dqkv;
    kd::cpu::attention_backward(dqkv2.data(), proj.data(), qkv.data(), out.data(), lse.data(), s.B,
                                s.T, s.C, s.NH);
    EXPECT_LT(rel_err(dqkv2, twice(dqkv)), kAddTol);
  }
}

TEST(Attention, IsCausal) {
  const int B = 2, T = 9, C = 12, NH = 3, t0 = 5;
  std::mt19937 rng(42);
  auto qkv = random_floats(static_cast<size_t>(B) * T * 3 * C, rng);
  std::vector<float> out(static_cast<size_t>(B) * T * C), lse(static_cast<size_t>(B) * NH * T);
  kd::cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);

  // Change the key and value of token t0 in batch 1 (all heads).
  auto changed = qkv;
  for (int c = C; c < 3 * C; ++c) changed[(static_cast<size_t>(1) * T + t0) * 3 * C + c] += 0.5f;
  std::vector<float> out2(out.size()), lse2(lse.size());
  kd::cpu::attention_forward(out2.data(), lse2.data(), changed.data(), B, T, C, NH);

  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t) {
      double diff = 0.0;
      for (int c = 0; c < C; ++c) {
        const size_t i = (static_cast<size_t>(b) * T + t) * C + c;
        diff = std::max(diff, static_cast<double>(std::fabs(out[i] - out2[i])));
      }
      if (b == 1 && t >= t0) {
        EXPECT_GT(diff, 1e-4) << "b=" << b << " t=" << t << " should see the changed token";
      } else {
        EXPECT_EQ(diff, 0.0) << "b=" << b << " t=" << t << " must not see a later token";
      }
    }
}

TEST(Attention, BackwardIsIndependentOfThreadCount) {
  const int B = 2, T = 13, C = 12, NH = 3;
  std::mt19937 rng(43);
  auto qkv = random_floats(static_cast<size_t>(B) * T * 3 * C, rng);
  auto dout = random_floats(static_cast<size_t>(B) * T * C, rng);
  std::vector<float> out(dout.size()), lse(static_cast<size_t>(B) * NH * T);
  kd::cpu::attention_forward(out.data(), lse.data(), qkv.data(), B, T, C, NH);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> dqkv(qkv.size(), 0.0f);
    kd::cpu::attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), lse.data(), B, T,
                                C, NH);
    omp_set_num_threads(saved);
    return dqkv;
  };
  EXPECT_EQ(run(1), run(4));
}

TEST(Attention, RejectsChannelsNotDivisibleByHeads) {
  std::vector<float> qkv(3 * 10, 0.5f), out(10), lse(3);
  EXPECT_THROW(kd::cpu::attention_forward(out.data(), lse.data(), qkv.data(), 1, 1, 10, 3),
               kd::ContractError);
  EXPECT_THROW(kd::cpu::attention_backward(qkv.data(), out.data(), qkv.data(), out.data(),
                                           lse.data(), 1, 1, 10, 0),
               kd::ContractError);
}

// ---- gelu
// ------------------------------------------------------------------------------------------

TEST(Gelu, ForwardAndBackwardMatchDoubleReference) {
  const size_t sizes[] = {1, 7, 100, 1031};
  std::mt19937 rng(51);
  for (size_t n : sizes) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    auto x = random_floats(n, rng, -5.0f, 5.0f);  // both tails and the curved middle
    std::vector<float> out(n, kNaN);
    kd::cpu::gelu_forward(out.data(), x.data(), n);
    ASSERT_TRUE(all_finite(out));
    auto x_d = to_double(x);
    EXPECT_LT(rel_err(out, ref_gelu(x_d)), kForwardTol);

    auto proj = random_floats(n, rng);
    const auto proj_d = to_double(proj);
    std::vector<float> dx(n, 0.0f);
    kd::cpu::gelu_backward(dx.data(), x.data(), proj.data(), n);
    auto loss = [&] { return project(proj_d, ref_gelu(x_d)); };
    EXPECT_LT(rel_err(dx, fd_gradient(loss, x_d)), kGradTol);

    auto dx2 = dx;
    kd::cpu::gelu_backward(dx2.data(), x.data(), proj.data(), n);
    EXPECT_LT(rel_err(dx2, twice(dx)), kAddTol);
  }
}

// ---- residual
// --------------------------------------------------------------------------------------

TEST(Residual, ForwardAndBackwardMatchDoubleReference) {
  const size_t sizes[] = {1, 13, 384, 1000};
  std::mt19937 rng(61);
  for (size_t n : sizes) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    auto a = random_floats(n, rng), b = random_floats(n, rng);
    std::vector<float> out(n, kNaN);
    kd::cpu::residual_forward(out.data(), a.data(), b.data(), n);
    ASSERT_TRUE(all_finite(out));
    auto a_d = to_double(a), b_d = to_double(b);
    EXPECT_LT(rel_err(out, ref_residual(a_d, b_d)), kForwardTol);

    auto proj = random_floats(n, rng);
    const auto proj_d = to_double(proj);
    std::vector<float> da(n, 0.0f), db(n, 0.0f);
    kd::cpu::residual_backward(da.data(), db.data(), proj.data(), n);
    auto loss = [&] { return project(proj_d, ref_residual(a_d, b_d)); };
    EXPECT_LT(rel_err(da, fd_gradient(loss, a_d)), kGradTol);
    EXPECT_LT(rel_err(db, fd_gradient(loss, b_d)), kGradTol);

    auto da2 = da, db2 = db;
    kd::cpu::residual_backward(da2.data(), db2.data(), proj.data(), n);
    EXPECT_LT(rel_err(da2, twice(da)), kAddTol);
    EXPECT_LT(rel_err(db2, twice(db)), kAddTol);
  }
}

}  // namespace
