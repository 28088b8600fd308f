// Mixed-precision AdamW (fp32 master weights and moments, bf16 weights) and the global gradient
// norm.
//
// adamw_update: one thread per element in a grid-stride loop over the flat parameter buffer; every
// parameter tensor is updated by this single launch. A thread finds the span of its element by a
// binary search over the span table (cached: consecutive elements of a thread's loop usually share
// it) and applies the CPU twin's update in the same operation order:
//   g = grad * scale; p = master (* (1 - lr wd) if the span decays);
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) +
//   eps)
// with explicitly rounded fp32 operations (no contraction into FMAs), then writes bf16(p) to the
// weights, rounded to nearest or stochastically (add 16 random bits below the bf16 mantissa, then
// truncate: unbiased). Traffic: 30 bytes per element (read grad, master, m, v: 16; write master, m,
// v: 12, weights: 2); ~15 FLOPs per element.
//
// global_norm: one block per 65536-value chunk sums squares in double (each thread 256 values in
// order, then a fixed tree), one block sums the chunk partials in a fixed order. 4 bytes read per
// value, 2 FLOPs.
#include <cmath>
#include <string>

#include "cuda/adamw.cuh"
#include "engine/base/error.h"

namespace kd::cuda {

namespace {

constexpr int kThreads = 256;
constexpr size_t kNormChunk = 1 << 16;
constexpr int kMaxGrid = 132 * 16;

// Block sum of doubles in a fixed tree order; valid in thread 0. sh holds kThreads doubles.
__device__ double block_sum_double(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  return sh[0];
}

__global__ void __launch_bounds__(kThreads)
    norm_chunks(double* __restrict__ partial, const float* __restrict__ grads, size_t n) {
  __shared__ double sh[kThreads];
  const size_t begin = static_cast<size_t>(blockIdx.x) * kNormChunk;
  const size_t end = begin + kNormChunk < n ? begin + kNormChunk : n;
  double acc = 0.0;
  for (size_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double g = grads[i];
    acc += g * g;
  }
  const double total = block_sum_double(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

__global__ void __launch_bounds__(kThreads)
    norm_finish(float* __restrict__ norm, float* __restrict__ scale,
                const double* __restrict__ partial, int chunks, float max_norm) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  for (int c = threadIdx.x; c < chunks; c += kThreads) acc += partial[c];
  const double total = block_sum_double(acc, sh);
  if (threadIdx.x == 0) {
    const double nrm = sqrt(total);
    norm[0] = static_cast<float>(nrm);
    if (scale != nullptr) {
      float f = 1.0f;
      if (max_norm > 0.0f && nrm > max_norm && isfinite(nrm))
        f = static_cast<float>(max_norm / nrm);
      scale[0] = f;
    }
  }
}

struct Scalars {
  float b1, b2, one_minus_b1, one_minus_b2;
  float step_size;     // lr / (1 - b1^t)
  float bias2_sqrt;    // sqrt(1 - b2^t)
  float decay_factor;  // 1 - lr * wd
  float eps;
};

__device__ __forceinline__ uint32_t mix_hash(uint64_t x) {
  // 64-bit finaliser (xor-shift-multiply rounds), folded to 32 bits.
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// x rounded to bf16 by adding 16 random low bits and truncating: rounds up in magnitude with
// probability equal to the discarded fraction. Non-finite values round to nearest.
__device__ __forceinline__ bf16 stochastic_bf16(float x, uint32_t random) {
  if (!isfinite(x)) return __float2bfloat16(x);
  uint32_t bits = __float_as_uint(x);
  bits += random & 0xffffu;
  bits &= 0xffff0000u;
  return __ushort_as_bfloat16(static_cast<unsigned short>(bits >> 16));
}

__global__ void __launch_bounds__(kThreads)
    adamw_kernel(bf16* __restrict__ params, float* __restrict__ master,
                 const float* __restrict__ grads, float* __restrict__ m, float* __restrict__ v,
                 const kd::ParamSpan* __restrict__ spans, int num_spans, size_t n, Scalars S,
                 float grad_scale, const float* __restrict__ grad_scale_dev, bool stochastic,
                 uint64_t seed, int t) {
  const float scale = grad_scale_dev != nullptr ? *grad_scale_dev : grad_scale;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t cur_begin = 1, cur_end = 0;  // empty: forces the first search
  bool cur_decay = false;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    if (i < cur_begin || i >= cur_end) {
      // Last span whose offset <= i.
      int lo = 0, hi = num_spans - 1, found = -1;
      while (lo <= hi) {
        const int mid = (lo + hi) >> 1;
        if (spans[mid].offset <= i) {
          found = mid;
          lo = mid + 1;
        } else {
          hi = mid - 1;
        }
      }
      if (found < 0 || i >= spans[found].offset + spans[found].size) continue;  // in no span
      cur_begin = spans[found].offset;
      cur_end = cur_begin + spans[found].size;
      cur_decay = spans[found].decay;
    }
    const float grad = __fmul_rn(grads[i], scale);
    float p = master[i];
    if (cur_decay) p = __fmul_rn(p, S.decay_factor);
    const float mi = __fadd_rn(__fmul_rn(S.b1, m[i]), __fmul_rn(S.one_minus_b1, grad));
    const float vi =
        __fadd_rn(__fmul_rn(S.b2, v[i]), __fmul_rn(__fmul_rn(S.one_minus_b2, grad), grad));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), S.bias2_sqrt), S.eps);
    p = __fsub_rn(p, __fmul_rn(S.step_size, __fdiv_rn(mi, denom)));
    master[i] = p;
    m[i] = mi;
    v[i] = vi;
    params[i] = stochastic ? stochastic_bf16(p, mix_hash(i ^ (seed * 0x9e3779b97f4a7c15ull) ^
                                                         (static_cast<uint64_t>(t) << 40)))
                           : __float2bfloat16(p);
  }
}

}  // namespace

void global_norm(float* norm, float* scale, const float* grads, size_t n, float max_norm,
                 cudaStream_t s) {
  const int chunks = n == 0 ? 1 : ceil_div(static_cast<long long>(n), kNormChunk);
  StreamScratch partial(sizeof(double) * chunks, s);
  if (n == 0) {
    KD_CUDA_CHECK(cudaMemsetAsync(partial.as<double>(), 0, sizeof(double), s));
  } else {
    norm_chunks<<<chunks, kThreads, 0, s>>>(partial.as<double>(), grads, n);
    KD_CUDA_CHECK(cudaGetLastError());
  }
  norm_finish<<<1, kThreads, 0, s>>>(norm, scale, partial.as<double>(), chunks, max_norm);
  KD_CUDA_CHECK(cudaGetLastError());
}

void adamw_update(bf16* params, float* master, const float* grads, float* m, float* v,
                  const kd::ParamSpan* spans, int num_spans, size_t n, const kd::AdamWConfig& cfg,
                  int t, float grad_scale, const float* grad_scale_dev, AdamWRounding rounding,
                  cudaStream_t s) {
  KD_REQUIRE(t >= 1, "adamw_update (cuda): step t must be >= 1, got " + std::to_string(t));
  KD_REQUIRE(cfg.beta1 >= 0.0f && cfg.beta1 < 1.0f && cfg.beta2 >= 0.0f && cfg.beta2 < 1.0f,
             "adamw_update (cuda): beta1 and beta2 must be in [0, 1), got " +
                 std::to_string(cfg.beta1) + " and " + std::to_string(cfg.beta2));
  if (n == 0 || num_spans <= 0) return;
  // The CPU twin's scalars, computed the same way.
  const double bias1 = 1.0 - std::pow(static_cast<double>(cfg.beta1), t);
  const double bias2 = 1.0 - std::pow(static_cast<double>(cfg.beta2), t);
  Scalars S;
  S.b1 = cfg.beta1;
  S.b2 = cfg.beta2;
  S.one_minus_b1 = 1.0f - cfg.beta1;
  S.one_minus_b2 = 1.0f - cfg.beta2;
  S.step_size = static_cast<float>(cfg.lr / bias1);
  S.bias2_sqrt = static_cast<float>(std::sqrt(bias2));
  S.decay_factor = 1.0f - cfg.lr * cfg.weight_decay;
  S.eps = cfg.eps;
  const long long blocks = (static_cast<long long>(n) + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(blocks < kMaxGrid ? blocks : kMaxGrid);
  adamw_kernel<<<grid, kThreads, 0, s>>>(params, master, grads, m, v, spans, num_spans, n, S,
                                         grad_scale, grad_scale_dev, rounding.stochastic,
                                         rounding.seed, t);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kd::cuda
