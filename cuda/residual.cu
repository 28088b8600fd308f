// Residual add, forward and backward, elementwise.
//
// Forward: out = a + b. Backward: da += dout, db += dout (the backward ADDS, as every backward).
// One thread per 8 elements (16-byte accesses) over the aligned body, one per element for the
// unaligned head and the tail; a grid-stride loop over a grid of a few waves.
// Traffic: forward 6 bytes per element (read a, b, write out); backward 10 bytes (read dout, da,
// db, write da, db). 1 (forward) or 2 (backward) FLOPs per element.
#include <algorithm>

#include "cuda/residual.cuh"

namespace kd::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxGrid = 132 * 16;  // a few waves on the largest parts; the loop covers the rest

// FORWARD: x = a, y = b, z = out.  BACKWARD: x = dout, y = da, z = db.
template <bool BACKWARD>
__global__ void residual_kernel(bf16* __restrict__ y, bf16* __restrict__ z,
                                const bf16* __restrict__ x, const bf16* __restrict__ a, size_t n,
                                size_t head, size_t nvec) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t tid = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (size_t v = tid; v < nvec; v += stride) {
    const size_t i = head + v * kVec;
    float p[kVec], q[kVec];
    load_bf16x8(x + i, p);
    if constexpr (BACKWARD) {
      float r[kVec];
      load_bf16x8(y + i, q);
      load_bf16x8(z + i, r);
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        q[k] += p[k];
        r[k] += p[k];
      }
      store_bf16x8(y + i, q);
      store_bf16x8(z + i, r);
    } else {
      load_bf16x8(a + i, q);
#pragma unroll
      for (int k = 0; k < kVec; ++k) q[k] += p[k];
      store_bf16x8(z + i, q);
    }
  }
  const size_t tail0 = head + nvec * kVec;
  const size_t rest = head + (n - tail0);
  for (size_t r = tid; r < rest; r += stride) {
    const size_t i = r < head ? r : tail0 + (r - head);
    const float p = __bfloat162float(x[i]);
    if constexpr (BACKWARD) {
      y[i] = __float2bfloat16(__bfloat162float(y[i]) + p);
      z[i] = __float2bfloat16(__bfloat162float(z[i]) + p);
    } else {
      z[i] = __float2bfloat16(__bfloat162float(a[i]) + p);
    }
  }
}

size_t mis16(const void* p) {
  return reinterpret_cast<size_t>(p) & 15;
}

template <bool BACKWARD>
void launch(bf16* y, bf16* z, const bf16* x, const bf16* a, size_t n, cudaStream_t s) {
  if (n == 0) return;
  const size_t m = mis16(x);
  bool same = (m & 1) == 0 && mis16(z) == m;
  same = same && (BACKWARD ? mis16(y) == m : mis16(a) == m);
  size_t head = m == 0 ? 0 : (16 - m) / sizeof(bf16);
  if (head > n) head = n;
  const size_t nvec = same ? (n - head) / kVec : 0;
  const size_t h = same ? head : 0;
  const size_t work = nvec > 0 ? nvec : n;
  const int grid = static_cast<int>(std::min<size_t>((work + kThreads - 1) / kThreads, kMaxGrid));
  residual_kernel<BACKWARD><<<grid, kThreads, 0, s>>>(y, z, x, a, n, h, nvec);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void residual_forward(bf16* out, const bf16* a, const bf16* b, size_t n, cudaStream_t s) {
  launch<false>(nullptr, out, b, a, n, s);
}

void residual_backward(bf16* da, bf16* db, const bf16* dout, size_t n, cudaStream_t s) {
  launch<true>(da, db, dout, nullptr, n, s);
}

}  // namespace kd::cuda
