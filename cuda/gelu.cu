// GELU (tanh approximation) forward and backward, elementwise.
//
// y = 0.5 x (1 + tanh u), u = sqrt(2/pi) (x + 0.044715 x^3);
// dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2).
// One thread per 8 elements (16-byte accesses) over the aligned body, one per element for the
// unaligned head and the tail; a grid-stride loop over a grid of a few waves.
// Traffic: forward 4 bytes per element (read x, write y); backward 8 bytes (read x, dout, dinp,
// write dinp). FLOPs: ~10 (forward) and ~20 (backward) per element plus one tanh.
#include <algorithm>

#include "cuda/gelu.cuh"

namespace kd::cuda {

namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;
constexpr int kThreads = 256;
constexpr int kMaxGrid = 132 * 16;  // a few waves on the largest parts; the loop covers the rest

__device__ __forceinline__ float gelu(float x) {
  const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
  return 0.5f * x * (1.0f + tanhf(u));
}

__device__ __forceinline__ float gelu_grad(float x) {
  const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
  const float th = tanhf(u);
  const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
  return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
}

// Elements [0, head) and [head + 8 * nvec, n) one at a time; [head, head + 8 * nvec) in vectors.
template <bool BACKWARD>
__global__ void gelu_kernel(bf16* __restrict__ out, const bf16* __restrict__ inp,
                            const bf16* __restrict__ dout, size_t n, size_t head, size_t nvec) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (size_t v = tid; v < nvec; v += stride) {
    const size_t i = head + v * kVec;
    float x[kVec], y[kVec];
    load_bf16x8(inp + i, x);
    if constexpr (BACKWARD) {
      float g[kVec];
      load_bf16x8(dout + i, g);
      load_bf16x8(out + i, y);
#pragma unroll
      for (int k = 0; k < kVec; ++k) y[k] += gelu_grad(x[k]) * g[k];
    } else {
#pragma unroll
      for (int k = 0; k < kVec; ++k) y[k] = gelu(x[k]);
    }
    store_bf16x8(out + i, y);
  }
  // Scalar remainder: the head and the tail together are fewer than 16 elements.
  const size_t tail0 = head + nvec * kVec;
  const size_t rest = head + (n - tail0);
  for (size_t r = tid; r < rest; r += stride) {
    const size_t i = r < head ? r : tail0 + (r - head);
    const float x = __bfloat162float(inp[i]);
    if constexpr (BACKWARD) {
      out[i] =
          __float2bfloat16(__bfloat162float(out[i]) + gelu_grad(x) * __bfloat162float(dout[i]));
    } else {
      out[i] = __float2bfloat16(gelu(x));
    }
  }
}

// Elements before the first 16-byte boundary of p (0 when the pointers disagree on it: all scalar).
size_t aligned_head(const void* p, size_t n) {
  const size_t mis = reinterpret_cast<size_t>(p) & 15;
  const size_t head = mis == 0 ? 0 : (16 - mis) / sizeof(bf16);
  return head < n ? head : n;
}

template <bool BACKWARD>
void launch(bf16* out, const bf16* inp, const bf16* dout, size_t n, cudaStream_t s) {
  if (n == 0) return;
  const size_t head = aligned_head(inp, n);
  bool same = (reinterpret_cast<size_t>(out) & 15) == (reinterpret_cast<size_t>(inp) & 15) &&
              (reinterpret_cast<size_t>(inp) & 1) == 0;
  if (BACKWARD)
    same = same && (reinterpret_cast<size_t>(dout) & 15) == (reinterpret_cast<size_t>(inp) & 15);
  const size_t nvec = same ? (n - head) / kVec : 0;
  const size_t h = same ? head : 0;
  const size_t work = nvec > 0 ? nvec : n;
  const int grid = static_cast<int>(std::min<size_t>((work + kThreads - 1) / kThreads, kMaxGrid));
  gelu_kernel<BACKWARD><<<grid, kThreads, 0, s>>>(out, inp, dout, n, h, nvec);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void gelu_forward(bf16* out, const bf16* inp, size_t n, cudaStream_t s) {
  launch<false>(out, inp, nullptr, n, s);
}

void gelu_backward(bf16* dinp, const bf16* inp, const bf16* dout, size_t n, cudaStream_t s) {
  launch<true>(dinp, inp, dout, n, s);
}

}  // namespace kd::cuda
