// LayerNorm (eps = 1e-5) forward, backward, and a fused residual-add + LayerNorm forward.
//
// Forward: one warp per row (8 warps per block). Pass 1 sums the row (mean), pass 2 sums squared
// deviations (biased variance, as torch), pass 3 writes (x - mean) * rstd * w + b. Passes 2 and 3
// re-read the row from L1/L2, so DRAM traffic is one read of x and one write of out: 4 bytes per
// element (+ 8 bytes per row for mean/rstd; the fused variant also reads a, b and writes the
// residual: 8 bytes per element). ~8 FLOPs per element.
// Lanes take 8 consecutive channels (16-byte accesses) when C % 8 == 0 and pointers are aligned,
// else one channel at a time.
//
// Backward: blocks own 32 consecutive rows; each warp takes rows of its block, computes the row's
// two reductions mean(dxhat) and mean(dxhat * xhat), adds the input gradient into dinp, and
// accumulates dweight/dbias for its rows in a warp-private shared-memory array (a lane owns fixed
// channels, so no synchronisation is needed). The block then sums its warps in order into one
// partial per block, and a second kernel sums the partials in block order into dweight/dbias: the
// same result on every run. Traffic: read dout, inp, dinp and write dinp (8 bytes per element),
// plus 8 * C bytes of partials per 32 rows written and read. ~14 FLOPs per element. The
// accumulators are laid out so that a warp's shared-memory accesses are free of bank conflicts.
#include "cuda/layernorm.cuh"

namespace kd::cuda {

namespace {

constexpr float kEps = 1e-5f;
constexpr int kFwdWarps = 8;
constexpr int kBwdRows = 32;              // rows per block in the backward
constexpr int kBwdMaxWarps = 8;           // warps per block in the backward
constexpr int kBwdSmemLimit = 96 * 1024;  // dynamic shared memory the backward may use per block

template <int W>
__device__ __forceinline__ void load_w(const bf16* p, float (&f)[W]) {
  if constexpr (W == kVec) {
    load_bf16x8(p, f);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) f[k] = __bfloat162float(p[k]);
  }
}

template <int W>
__device__ __forceinline__ void store_w(bf16* p, const float (&f)[W]) {
  if constexpr (W == kVec) {
    store_bf16x8(p, f);
  } else {
#pragma unroll
    for (int k = 0; k < W; ++k) p[k] = __float2bfloat16(f[k]);
  }
}

// W = channels per lane access (8 or 1). RESID: x = bf16(a + b) is formed and stored to `residual`
// first.
template <int W, bool RESID>
__global__ void __launch_bounds__(kFwdWarps * 32)
    layernorm_forward_kernel(bf16* __restrict__ out, float* __restrict__ mean,
                             float* __restrict__ rstd, bf16* residual, const bf16* inp,
                             const bf16* add, const bf16* __restrict__ weight,
                             const bf16* __restrict__ bias, int N, int C) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kFwdWarps + (threadIdx.x >> 5);
  if (row >= N) return;  // whole warps leave; no block-wide synchronisation follows
  const size_t off = static_cast<size_t>(row) * C;
  const bf16* x = RESID ? residual + off : inp + off;

  float sum = 0.0f;
  for (int c = lane * W; c < C; c += 32 * W) {
    float v[W];
    if constexpr (RESID) {
      float u[W];
      load_w<W>(inp + off + c, v);
      load_w<W>(add + off + c, u);
#pragma unroll
      for (int k = 0; k < W; ++k) v[k] = __bfloat162float(__float2bfloat16(v[k] + u[k]));
      store_w<W>(residual + off + c, v);  // read back below by this same lane
    } else {
      load_w<W>(x + c, v);
    }
#pragma unroll
    for (int k = 0; k < W; ++k) sum += v[k];
  }
  const float m = warp_sum(sum) / C;

  float sq = 0.0f;
  for (int c = lane * W; c < C; c += 32 * W) {
    float v[W];
    load_w<W>(x + c, v);
#pragma unroll
    for (int k = 0; k < W; ++k) sq += (v[k] - m) * (v[k] - m);
  }
  const float s = 1.0f / sqrtf(warp_sum(sq) / C + kEps);

  for (int c = lane * W; c < C; c += 32 * W) {
    float v[W], w[W], b[W];
    load_w<W>(x + c, v);
    load_w<W>(weight + c, w);
    load_w<W>(bias + c, b);
#pragma unroll
    for (int k = 0; k < W; ++k) v[k] = (v[k] - m) * s * w[k] + b[k];
    store_w<W>(out + off + c, v);
  }
  if (lane == 0) {
    if (mean != nullptr) mean[row] = m;
    if (rstd != nullptr) rstd[row] = s;
  }
}

// Shared-memory slot of channel ch in a warp's accumulator: channel-major within each lane's group
// of W, so that the 32 lanes touching element k of their groups hit 32 consecutive banks.
template <int W>
__device__ __forceinline__ int slot(int ch, int C) {
  return (ch % W) * (C / W) + ch / W;
}

// Dynamic shared memory: 2 * warps * C floats (dweight then dbias accumulators per warp).
// partial [gridDim.x][2C]: the block's dweight sums, then its dbias sums.
template <int W>
__global__ void layernorm_backward_kernel(bf16* __restrict__ dinp, float* __restrict__ partial,
                                          const bf16* __restrict__ dout,
                                          const bf16* __restrict__ inp,
                                          const bf16* __restrict__ weight,
                                          const float* __restrict__ mean,
                                          const float* __restrict__ rstd, int N, int C) {
  extern __shared__ float acc[];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  float* acc_w = acc + static_cast<size_t>(warp) * 2 * C;
  float* acc_b = acc_w + C;
  for (int c = lane; c < 2 * C; c += 32) acc_w[c] = 0.0f;  // warp-private: each lane its own slots
  __syncwarp();

  const int row0 = blockIdx.x * kBwdRows;
  const int row_end = min(row0 + kBwdRows, N);
  for (int row = row0 + warp; row < row_end; row += warps) {
    const size_t off = static_cast<size_t>(row) * C;
    const float m = mean[row];
    const float s = rstd[row];
    float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
    for (int c = lane * W; c < C; c += 32 * W) {
      float x[W], g[W], w[W];
      load_w<W>(inp + off + c, x);
      load_w<W>(dout + off + c, g);
      load_w<W>(weight + c, w);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float dxhat = g[k] * w[k];
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * ((x[k] - m) * s);
      }
    }
    const float mean_dxhat = warp_sum(sum_dxhat) / C;
    const float mean_dxhat_xhat = warp_sum(sum_dxhat_xhat) / C;
    for (int c = lane * W; c < C; c += 32 * W) {
      float x[W], g[W], w[W], d[W];
      load_w<W>(inp + off + c, x);
      load_w<W>(dout + off + c, g);
      load_w<W>(weight + c, w);
      load_w<W>(dinp + off + c, d);
#pragma unroll
      for (int k = 0; k < W; ++k) {
        const float xhat = (x[k] - m) * s;
        const float dxhat = g[k] * w[k];
        d[k] += s * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
        acc_w[slot<W>(c + k, C)] += g[k] * xhat;
        acc_b[slot<W>(c + k, C)] += g[k];
      }
      store_w<W>(dinp + off + c, d);
    }
  }
  __syncthreads();
  float* out = partial + static_cast<size_t>(blockIdx.x) * 2 * C;
  for (int c = threadIdx.x; c < 2 * C; c += blockDim.x) {
    const int s = c < C ? slot<W>(c, C) : C + slot<W>(c - C, C);
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += acc[static_cast<size_t>(w) * 2 * C + s];
    out[c] = total;
  }
}

// One thread per channel: sums the block partials in block order and adds them to the gradients.
__global__ void layernorm_param_reduce(float* __restrict__ dweight, float* __restrict__ dbias,
                                       const float* __restrict__ partial, int blocks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0.0f, sb = 0.0f;
#pragma unroll 8
  for (int blk = 0; blk < blocks; ++blk) {
    const float* p = partial + static_cast<size_t>(blk) * 2 * C;
    sw += p[c];
    sb += p[C + c];
  }
  dweight[c] += sw;
  dbias[c] += sb;
}

template <bool RESID>
void launch_forward(bf16* out, float* mean, float* rstd, bf16* residual, const bf16* inp,
                    const bf16* add, const bf16* weight, const bf16* bias, int N, int C,
                    cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  bool vec =
      C % kVec == 0 && aligned16(out) && aligned16(inp) && aligned16(weight) && aligned16(bias);
  if (RESID) vec = vec && aligned16(add) && aligned16(residual);
  const int grid = ceil_div(N, kFwdWarps);
  if (vec) {
    layernorm_forward_kernel<kVec, RESID>
        <<<grid, kFwdWarps * 32, 0, s>>>(out, mean, rstd, residual, inp, add, weight, bias, N, C);
  } else {
    layernorm_forward_kernel<1, RESID>
        <<<grid, kFwdWarps * 32, 0, s>>>(out, mean, rstd, residual, inp, add, weight, bias, N, C);
  }
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void layernorm_forward(bf16* out, float* mean, float* rstd, const bf16* inp, const bf16* weight,
                       const bf16* bias, int N, int C, cudaStream_t s) {
  launch_forward<false>(out, mean, rstd, nullptr, inp, nullptr, weight, bias, N, C, s);
}

void fused_residual_layernorm_forward(bf16* residual, bf16* out, float* mean, float* rstd,
                                      const bf16* a, const bf16* b, const bf16* weight,
                                      const bf16* bias, int N, int C, cudaStream_t s) {
  launch_forward<true>(out, mean, rstd, residual, a, b, weight, bias, N, C, s);
}

void layernorm_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                        const bf16* weight, const float* mean, const float* rstd, int N, int C,
                        cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  const size_t per_warp = 2 * sizeof(float) * static_cast<size_t>(C);
  int warps = static_cast<int>(kBwdSmemLimit / per_warp);
  if (warps > kBwdMaxWarps) warps = kBwdMaxWarps;
  KD_REQUIRE(warps >= 1, "layernorm_backward: C=" + std::to_string(C) +
                             " needs more shared memory than one block has");
  const size_t smem = per_warp * warps;
  const int blocks = ceil_div(N, kBwdRows);
  StreamScratch partial(per_warp * blocks, s);
  const bool vec =
      C % kVec == 0 && aligned16(dinp) && aligned16(dout) && aligned16(inp) && aligned16(weight);
  if (vec) {
    static const cudaError_t attr =
        cudaFuncSetAttribute(layernorm_backward_kernel<kVec>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, kBwdSmemLimit);
    KD_CUDA_CHECK(attr);
    layernorm_backward_kernel<kVec><<<blocks, warps * 32, smem, s>>>(
        dinp, partial.as<float>(), dout, inp, weight, mean, rstd, N, C);
  } else {
    static const cudaError_t attr = cudaFuncSetAttribute(
        layernorm_backward_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBwdSmemLimit);
    KD_CUDA_CHECK(attr);
    layernorm_backward_kernel<1><<<blocks, warps * 32, smem, s>>>(dinp, partial.as<float>(), dout,
                                                                  inp, weight, mean, rstd, N, C);
  }
  KD_CUDA_CHECK(cudaGetLastError());
  layernorm_param_reduce<<<ceil_div(C, 256), 256, 0, s>>>(dweight, dbias, partial.as<float>(),
                                                          blocks, C);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kd::cuda
