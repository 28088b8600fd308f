// The fused distillation loss: CE(T=1) against the targets plus a temperature divergence between
// teacher p = softmax(t/T) and student q = softmax(z/T) (forward KL, reverse KL, or JSD(beta)
// normalised by beta (1 - beta)), with its gradient written over the student logits.
// Math and definitions: docs/ops/kd_loss.md and the CPU twin engine/ops/cpu/kd_loss.cpp.
//
// Decomposition: one block of n threads per row, n = 512 for large vocabularies and about V / 4 (a
// multiple of 32) for small ones, so that no warp idles; thread i takes columns i, i + n, ...
//   pass 1: online max / sum-of-exponentials of z (at T = 1 and at T) and of t (at T), merged over
//           the block (warp shuffles, then warps in order): every log-softmax is known after it.
//   pass 2: elementwise terms of the row sums (entropies, forward KL, and reverse KL or the two
//           JSD halves), reduced over the block. For CE-only and forward KL the gradient needs no
//           row sum, so pass 2 also writes dlogits.
//   pass 3: (reverse KL and JSD only) writes dlogits, which need the row's divergence sum.
// Each row stores its (ce, kd, kl, H(p), H(q), supervised) to a [N, 6] float scratch; a final
// single-block kernel sums the rows in double in a fixed order and ADDS them to the LossSums.
// Traffic per logit: z read in pass 1 and 2 (+3), t read in pass 1 and 2 (+3), dlogits written
// once: 6 bytes from DRAM when the re-reads hit L2 (a row is 2 * 2V bytes, ~200 KB at V = 50257,
// and 4 rows per SM are in flight (512 threads each), so the working set is ~100 MB for the full
// GPU: the second read mostly comes from DRAM on an H100; expect 8 to 10 bytes per logit of DRAM
// traffic, 12 to 14 for reverse KL and JSD). Math per logit: 5 exponentials (FKL), ~9
// transcendental calls (JSD).
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/kd_loss.cuh"
#include "engine/base/error.h"

namespace kd::cuda {

namespace {

constexpr int kThreads = 512;  // the most threads per row
constexpr int kWarps = kThreads / 32;
constexpr int kRec = 6;  // per-row record: ce, kd, kl, teacher entropy, student entropy, supervised

enum Mode : int { kCE = 0, kForwardKL = 1, kReverseKL = 2, kJSD = 3 };

// kl element a*log(a/b) - a + b, never negative; stable near a == b (see the CPU twin).
__device__ __forceinline__ float kl_term(float a, float b, float log_ratio) {
  const float term =
      fabsf(log_ratio) <= 1.0f ? a * (log_ratio + expm1f(-log_ratio)) : a * log_ratio - a + b;
  return fmaxf(term, 0.0f);
}

// log(m / a) for m = w*b + wc*a, given d = log(b/a); the three regimes of the CPU twin.
__device__ __forceinline__ float log_mix_ratio(float d, float w, float wc) {
  if (d > 20.0f) return d + logf(w + wc * expf(-d));
  const float x = w * expm1f(d);
  if (x < -0.5f) return logf(wc + w * expf(d));
  return log1pf(x);
}

// Online softmax statistics of one stream: max of the raw values, sums of exp(x - max) (T = 1) and
// exp((x - max) / T).
struct Online {
  float max = -INFINITY;
  float sum1 = 0.0f;
  float sumt = 0.0f;
};

__device__ __forceinline__ void online_add(Online& o, float x, float inv_t) {
  if (x > o.max) {
    const float d = o.max - x;  // -inf on the first element: the old sums (0) are scaled by 0
    o.sum1 = o.sum1 * expf(d) + 1.0f;
    o.sumt = o.sumt * expf(d * inv_t) + 1.0f;
    o.max = x;
  } else {
    const float d = x - o.max;
    o.sum1 += expf(d);
    o.sumt += expf(d * inv_t);
  }
}

__device__ __forceinline__ Online online_merge(const Online& a, const Online& b, float inv_t) {
  Online r;
  r.max = fmaxf(a.max, b.max);
  if (r.max == -INFINITY) return r;  // both empty
  const float da = a.max - r.max, db = b.max - r.max;
  const float fa1 = a.max == -INFINITY ? 0.0f : expf(da);
  const float fb1 = b.max == -INFINITY ? 0.0f : expf(db);
  const float fat = a.max == -INFINITY ? 0.0f : expf(da * inv_t);
  const float fbt = b.max == -INFINITY ? 0.0f : expf(db * inv_t);
  r.sum1 = a.sum1 * fa1 + b.sum1 * fb1;
  r.sumt = a.sumt * fat + b.sumt * fbt;
  return r;
}

// Merges the block's statistics; every thread gets the result. `sh` holds one entry per warp.
__device__ Online block_online(Online o, float inv_t, Online* sh) {
  for (int off = 16; off > 0; off >>= 1) {
    Online other;
    other.max = __shfl_xor_sync(0xffffffffu, o.max, off);
    other.sum1 = __shfl_xor_sync(0xffffffffu, o.sum1, off);
    other.sumt = __shfl_xor_sync(0xffffffffu, o.sumt, off);
    o = online_merge(o, other, inv_t);
  }
  __syncthreads();  // sh may still be read by an earlier call
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = o;
  __syncthreads();
  Online r = sh[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) r = online_merge(r, sh[w], inv_t);
  return r;
}

// Block sum of K values, fixed order; every thread gets the results.
template <int K>
__device__ void block_sum_k(float (&v)[K], float (*sh)[kWarps]) {
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) sh[k][threadIdx.x >> 5] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float r = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) r += sh[k][w];
    v[k] = r;
  }
}

struct Params {
  float inv_t;  // 1 / T
  float beta;   // JSD mixing weight (0 < beta < 1 in JSD mode)
  float g_ce;   // inv_norm * ce_weight
  float g_kd;   // inv_norm * kd_weight * s(T) / T, or 0
};

template <int MODE>
__global__ void __launch_bounds__(kThreads)
    kd_loss_rows(bf16* dlogits, float* __restrict__ rec, const bf16* logits,
                 const bf16* __restrict__ teacher, int Vt, const int32_t* __restrict__ targets,
                 int V, Params P) {
  __shared__ Online sh_online[kWarps];
  __shared__ float sh_sum[5][kWarps];
  __shared__ float sh_target_logit;
  constexpr bool kTeacher = MODE != kCE;
  const int row = blockIdx.x;
  const int target = targets[row];
  const bf16* z = logits + static_cast<size_t>(row) * V;
  bf16* dz = dlogits != nullptr ? dlogits + static_cast<size_t>(row) * V : nullptr;
  const bf16* t = kTeacher ? teacher + static_cast<size_t>(row) * Vt : nullptr;
  float* out = rec + static_cast<size_t>(row) * kRec;

  if (target < 0 || target >= V) {  // masked (or invalid) row: zero gradient, no contribution
    if (dz != nullptr)
      for (int k = threadIdx.x; k < V; k += blockDim.x) dz[k] = __float2bfloat16(0.0f);
    if (threadIdx.x == 0) {
      for (int f = 0; f < kRec; ++f) out[f] = 0.0f;
      if (target >= V) out[0] = NAN, out[5] = 1.0f;  // an out-of-vocabulary target poisons the sums
    }
    return;
  }
  const float inv_t = P.inv_t;

  // ---- pass 1: online statistics -------------------------------------------------------------
  Online oz, ot;
  if (threadIdx.x == 0) sh_target_logit = __bfloat162float(z[target]);
  {
    constexpr int kU = 4;  // loads in flight per thread
    const int n = blockDim.x;
    int k = threadIdx.x;
    for (; k + (kU - 1) * n < V; k += kU * n) {
      float zv[kU], tv[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) zv[u] = __bfloat162float(z[k + u * n]);
      if constexpr (kTeacher) {
#pragma unroll
        for (int u = 0; u < kU; ++u) tv[u] = __bfloat162float(t[k + u * n]);
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        online_add(oz, zv[u], inv_t);
        if constexpr (kTeacher) online_add(ot, tv[u], inv_t);
      }
    }
    for (; k < V; k += n) {
      online_add(oz, __bfloat162float(z[k]), inv_t);
      if constexpr (kTeacher) online_add(ot, __bfloat162float(t[k]), inv_t);
    }
  }
  oz = block_online(oz, inv_t, sh_online);
  if constexpr (kTeacher) ot = block_online(ot, inv_t, sh_online);
  // log-probabilities: log_prob(x) = (x - max) * inv_t - log_sum
  const float zmax = oz.max, ls1 = logf(oz.sum1), lsq = logf(oz.sumt);
  const float tmax = ot.max, lsp = kTeacher ? logf(ot.sumt) : 0.0f;
  const float target_logit = sh_target_logit;  // written before the block_online barriers
  const float beta = P.beta;

  // ---- pass 2: row sums (and the gradient for CE and forward KL) -------------------------------
  const bool grad_in_pass2 = dz != nullptr && (MODE == kCE || MODE == kForwardKL);
  float acc[5] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f};  // H(q), H(p), fkl, rkl | kl_pm, - | kl_qm
  for (int k = threadIdx.x; k < V; k += blockDim.x) {
    const float zk = __bfloat162float(z[k]);
    const float lq = (zk - zmax) * inv_t - lsq;
    const float q = expf(lq);
    acc[0] -= q * lq;
    float p = 0.0f;
    if constexpr (kTeacher) {
      const float lp = (__bfloat162float(t[k]) - tmax) * inv_t - lsp;
      p = expf(lp);
      acc[1] -= p * lp;
      acc[2] += kl_term(p, q, lp - lq);
      if constexpr (MODE == kReverseKL) acc[3] += kl_term(q, p, lq - lp);
      if constexpr (MODE == kJSD) {
        const float m = beta * p + (1.0f - beta) * q;
        acc[3] += kl_term(p, m, -log_mix_ratio(lq - lp, 1.0f - beta, beta));
        acc[4] += kl_term(q, m, -log_mix_ratio(lp - lq, beta, 1.0f - beta));
      }
    }
    if (grad_in_pass2) {
      float grad = P.g_ce * (expf((zk - zmax) - ls1) - (k == target ? 1.0f : 0.0f));
      if (MODE == kForwardKL && P.g_kd != 0.0f) grad += P.g_kd * (q - p);
      dz[k] = __float2bfloat16(grad);
    }
  }
  block_sum_k<5>(acc, sh_sum);
  const float ce = -((target_logit - zmax) - ls1);
  float kd = 0.0f;
  if constexpr (MODE == kForwardKL) kd = acc[2];
  if constexpr (MODE == kReverseKL) kd = acc[3];
  if constexpr (MODE == kJSD) kd = acc[3] / (1.0f - beta) + acc[4] / beta;
  if (threadIdx.x == 0) {
    out[0] = ce;
    out[1] = kd;
    out[2] = acc[2];
    out[3] = acc[1];
    out[4] = acc[0];
    out[5] = 1.0f;
  }

  // ---- pass 3: the gradient when it needs a row sum
  // ----------------------------------------------
  if constexpr (MODE == kReverseKL || MODE == kJSD) {
    if (dz == nullptr) return;
    const float row_div = MODE == kReverseKL ? acc[3] : acc[4];  // rkl, or kl(q||m)
    for (int k = threadIdx.x; k < V; k += blockDim.x) {
      const float zk = __bfloat162float(z[k]);
      float grad = P.g_ce * (expf((zk - zmax) - ls1) - (k == target ? 1.0f : 0.0f));
      if (P.g_kd != 0.0f) {
        const float lq = (zk - zmax) * inv_t - lsq;
        const float lp = (__bfloat162float(t[k]) - tmax) * inv_t - lsp;
        const float q = expf(lq);
        float d;
        if constexpr (MODE == kReverseKL) {
          d = q * (lq - lp - row_div);
        } else {
          const float log_q_m = -log_mix_ratio(lp - lq, beta, 1.0f - beta);
          d = q * (log_q_m - row_div) / beta;
        }
        grad += P.g_kd * d;
      }
      dz[k] = __float2bfloat16(grad);
    }
  }
}

// One block: sums the row records in double, in a fixed order, and adds them to *sums.
constexpr int kReduceThreads = 256;
__global__ void __launch_bounds__(kReduceThreads)
    kd_loss_reduce(kd::LossSums* sums, const float* __restrict__ rec, int N, float ce_weight,
                   float kd_scale, bool teacher) {
  __shared__ double sh[7][kReduceThreads];
  double acc[7] = {0, 0, 0, 0, 0, 0, 0};  // loss, ce, kd, kl, H(p), H(q), rows
  for (int n = threadIdx.x; n < N; n += kReduceThreads) {
    const float* r = rec + static_cast<size_t>(n) * kRec;
    if (r[5] == 0.0f) continue;
    const double ce = r[0], kd = r[1];
    acc[0] += ce_weight * ce + (teacher ? kd_scale * kd : 0.0);
    acc[1] += ce;
    acc[2] += kd;
    acc[3] += r[2];
    acc[4] += r[3];
    acc[5] += r[4];
    acc[6] += 1.0;
  }
  for (int f = 0; f < 7; ++f) sh[f][threadIdx.x] = acc[f];
  __syncthreads();
  for (int half = kReduceThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half)
      for (int f = 0; f < 7; ++f) sh[f][threadIdx.x] += sh[f][threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    sums->loss += sh[0][0];
    sums->ce += sh[1][0];
    sums->kd += sh[2][0];
    sums->kl += sh[3][0];
    sums->teacher_entropy += sh[4][0];
    sums->student_entropy += sh[5][0];
    sums->rows += static_cast<int64_t>(sh[6][0]);
  }
}

}  // namespace

void kd_loss(bf16* dlogits, kd::LossSums* sums, const bf16* logits, const bf16* teacher, int Vt,
             const int32_t* targets, int N, int V, const kd::LossConfig& cfg, float inv_norm,
             cudaStream_t s) {
  const std::string where = "kd_loss (cuda): ";
  KD_REQUIRE(N >= 0, where + "row count N must be >= 0, got " + std::to_string(N));
  if (N == 0) return;
  KD_REQUIRE(V > 0, where + "vocabulary size V must be > 0, got " + std::to_string(V));
  KD_REQUIRE(logits != nullptr && targets != nullptr,
             where + "logits and targets must not be null");
  KD_REQUIRE(teacher == nullptr || Vt >= V, where + "teacher row stride Vt must be >= V = " +
                                                std::to_string(V) + ", got " + std::to_string(Vt));
  KD_REQUIRE(
      cfg.temperature > 0.0f && std::isfinite(cfg.temperature),
      where + "temperature must be a finite number > 0, got " + std::to_string(cfg.temperature));
  KD_REQUIRE(cfg.divergence != kd::Divergence::JSD || (cfg.beta >= 0.0f && cfg.beta <= 1.0f),
             where + "JSD beta must be in [0, 1], got " + std::to_string(cfg.beta));

  int mode = kCE;
  if (teacher != nullptr) {
    mode = cfg.divergence == kd::Divergence::ForwardKL   ? kForwardKL
           : cfg.divergence == kd::Divergence::ReverseKL ? kReverseKL
           : cfg.beta == 0.0f                            ? kForwardKL
           : cfg.beta == 1.0f                            ? kReverseKL
                                                         : kJSD;
  }
  const float scale = cfg.t2_scaling ? cfg.temperature * cfg.temperature : 1.0f;
  Params P;
  P.inv_t = 1.0f / cfg.temperature;
  P.beta = cfg.beta;
  P.g_ce = inv_norm * cfg.ce_weight;
  P.g_kd = teacher != nullptr ? inv_norm * cfg.kd_weight * scale * P.inv_t : 0.0f;

  // About 4 columns per thread, at least one warp, at most kThreads.
  const int threads = std::min(kThreads, std::max(32, ceil_div(ceil_div(V, 4), 32) * 32));
  StreamScratch rec(sizeof(float) * kRec * static_cast<size_t>(N), s);
  switch (mode) {
    case kCE:
      kd_loss_rows<kCE>
          <<<N, threads, 0, s>>>(dlogits, rec.as<float>(), logits, teacher, Vt, targets, V, P);
      break;
    case kForwardKL:
      kd_loss_rows<kForwardKL>
          <<<N, threads, 0, s>>>(dlogits, rec.as<float>(), logits, teacher, Vt, targets, V, P);
      break;
    case kReverseKL:
      kd_loss_rows<kReverseKL>
          <<<N, threads, 0, s>>>(dlogits, rec.as<float>(), logits, teacher, Vt, targets, V, P);
      break;
    default:
      kd_loss_rows<kJSD>
          <<<N, threads, 0, s>>>(dlogits, rec.as<float>(), logits, teacher, Vt, targets, V, P);
      break;
  }
  KD_CUDA_CHECK(cudaGetLastError());
  if (sums != nullptr) {
    kd_loss_reduce<<<1, kReduceThreads, 0, s>>>(sums, rec.as<float>(), N, cfg.ce_weight,
                                                cfg.kd_weight * scale, teacher != nullptr);
    KD_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace kd::cuda
