// Token + position embedding, forward and deterministic backward.
//
// Forward: out[b,t,c] = wte[tok,c] + wpe[t,c]. One thread per 8 channels (16-byte loads and stores)
// when C % 8 == 0 and the tensors are 16-byte aligned, else one thread per channel.
// Traffic: 3 * 2 bytes per output element (wte row, wpe row, out); 1 FLOP per element.
//
// Backward: dwte[tok,:] += dout[b,t,:] and dwpe[t,:] += dout[b,t,:], fp32 gradients, bf16 dout.
// A token may repeat, so dwte rows collect several contributions. Instead of atomics (whose order
// changes the rounding from run to run) the positions are sorted by token: keys (token << 32 | bt)
// are bitonic-sorted (2048-key tiles in shared memory, longer strides in global memory), then one
// block per (first position of a token, slice of 256 channels) walks that token's positions in
// increasing bt and adds them to the gradient row in that order: the same order, hence the same
// fp32 result, as the CPU twin. dwpe: one thread per (t, c) sums over b in order.
// Traffic: dout is read twice (once per gradient), 2 * 2 bytes per element; dwte rows of the
// tokens seen and all of dwpe[0:T] are read and written once (fp32); the sort touches 8 bytes per
// key and pass. 2 FLOPs per dout element.
#include "cuda/encoder.cuh"

namespace kd::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSortTile = 2048;  // keys sorted in shared memory by one block of kSortTile/2 threads

__global__ void encoder_forward_vec(bf16* __restrict__ out, const int32_t* __restrict__ tokens,
                                    const bf16* __restrict__ wte, const bf16* __restrict__ wpe,
                                    int N, int T, int C) {
  const int C8 = C / kVec;
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<long long>(N) * C8) return;
  const int bt = static_cast<int>(idx / C8);
  const int c = static_cast<int>(idx % C8) * kVec;
  const int t = bt % T;
  const int tok = tokens[bt];
  float p[kVec], w[kVec];
  load_bf16x8(wpe + static_cast<size_t>(t) * C + c, p);
  if (tok >= 0) {
    load_bf16x8(wte + static_cast<size_t>(tok) * C + c, w);
#pragma unroll
    for (int k = 0; k < kVec; ++k) p[k] += w[k];
  }
  store_bf16x8(out + static_cast<size_t>(bt) * C + c, p);
}

__global__ void encoder_forward_scalar(bf16* __restrict__ out, const int32_t* __restrict__ tokens,
                                       const bf16* __restrict__ wte, const bf16* __restrict__ wpe,
                                       int N, int T, int C) {
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<long long>(N) * C) return;
  const int bt = static_cast<int>(idx / C);
  const int c = static_cast<int>(idx % C);
  const int t = bt % T;
  const int tok = tokens[bt];
  float v = __bfloat162float(wpe[static_cast<size_t>(t) * C + c]);
  if (tok >= 0) v += __bfloat162float(wte[static_cast<size_t>(tok) * C + c]);
  out[idx] = __float2bfloat16(v);
}

// ---- bitonic sort of P = 2^k keys
// ------------------------------------------------------------------

__global__ void make_keys(unsigned long long* __restrict__ keys, const int32_t* __restrict__ tokens,
                          int N, int P) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= P) return;
  // Padding keys are all ones: they sort last and decode to token -1, which is skipped.
  keys[i] = i < N ? (static_cast<unsigned long long>(static_cast<uint32_t>(tokens[i])) << 32) |
                        static_cast<uint32_t>(i)
                  : ~0ull;
}

// One compare-exchange of the pair (i, i + j) in the bitonic network at stage k.
__device__ __forceinline__ void compare_exchange(unsigned long long* a, int i, int j, int k,
                                                 int global_i) {
  const unsigned long long x = a[i], y = a[i + j];
  const bool ascending = (global_i & k) == 0;
  if ((x > y) == ascending) {
    a[i] = y;
    a[i + j] = x;
  }
}

// Sorts each tile of `tile` keys in shared memory. If k_single > 0 only the stage k = k_single is
// run, for strides j < tile (the tail of a merge whose long strides ran in global memory);
// otherwise every stage k = 2..tile is run. blockDim.x = tile / 2.
__global__ void bitonic_tile(unsigned long long* __restrict__ keys, int tile, int k_single) {
  extern __shared__ unsigned long long sh[];
  const int base = blockIdx.x * tile;
  for (int i = threadIdx.x; i < tile; i += blockDim.x) sh[i] = keys[base + i];
  __syncthreads();
  const int k_first = k_single > 0 ? k_single : 2;
  const int k_last = k_single > 0 ? k_single : tile;
  for (int k = k_first; k <= k_last; k <<= 1) {
    for (int j = min(k, tile) >> 1; j > 0; j >>= 1) {
      const int t = threadIdx.x;  // pair index in [0, tile/2)
      const int i = 2 * j * (t / j) + (t % j);
      compare_exchange(sh, i, j, k, base + i);
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < tile; i += blockDim.x) keys[base + i] = sh[i];
}

// One stride j >= tile of stage k, over the whole array: one thread per pair.
__global__ void bitonic_global(unsigned long long* __restrict__ keys, int P, int j, int k) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= P / 2) return;
  const int i = 2 * j * (t / j) + (t % j);
  compare_exchange(keys, i, j, k, i);
}

// ---- accumulation
// --------------------------------------------------------------------------------

__device__ __forceinline__ int key_token(unsigned long long key) {
  return static_cast<int>(static_cast<uint32_t>(key >> 32));
}

// grid (P, ceil(C / blockDim.x)): block x = a sorted index; only the first index of each token's
// run does work, walking the run in increasing position.
__global__ void encoder_backward_wte(float* __restrict__ dwte, const bf16* __restrict__ dout,
                                     const unsigned long long* __restrict__ keys, int N, int C) {
  const int i = blockIdx.x;
  if (i >= N) return;
  const unsigned long long key = keys[i];
  const int tok = key_token(key);
  if (tok < 0) return;
  if (i > 0 && key_token(keys[i - 1]) == tok) return;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float* row = dwte + static_cast<size_t>(tok) * C;
  float acc = row[c];
  int j = i;
  constexpr int kGroup = 4;  // positions loaded together, added in order
  while (j < N) {
    int pos[kGroup];
    int n = 0;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      pos[g] = -1;
      if (n == g && j + g < N) {
        const unsigned long long kg = keys[j + g];
        if (key_token(kg) == tok) {
          pos[g] = static_cast<int>(static_cast<uint32_t>(kg));
          ++n;
        }
      }
    }
    float val[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g)
      val[g] = pos[g] >= 0 ? __bfloat162float(dout[static_cast<size_t>(pos[g]) * C + c]) : 0.0f;
#pragma unroll
    for (int g = 0; g < kGroup; ++g)
      if (g < n) acc += val[g];
    if (n < kGroup) break;
    j += kGroup;
  }
  row[c] = acc;
}

// One thread per (t, c): dwpe[t,c] += dout[0,t,c] + dout[1,t,c] + ... in order of b.
__global__ void encoder_backward_wpe(float* __restrict__ dwpe, const bf16* __restrict__ dout, int B,
                                     int T, int C) {
  const long long idx = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<long long>(T) * C) return;
  float acc = dwpe[idx];
  const size_t stride = static_cast<size_t>(T) * C;
  for (int b = 0; b < B; ++b) acc += __bfloat162float(dout[b * stride + idx]);
  dwpe[idx] = acc;
}

}  // namespace

void encoder_forward(bf16* out, const int32_t* tokens, const bf16* wte, const bf16* wpe, int B,
                     int T, int C, cudaStream_t s) {
  const int N = B * T;
  if (N <= 0 || C <= 0) return;
  if (C % kVec == 0 && aligned16(out) && aligned16(wte) && aligned16(wpe)) {
    const long long work = static_cast<long long>(N) * (C / kVec);
    encoder_forward_vec<<<ceil_div(work, kThreads), kThreads, 0, s>>>(out, tokens, wte, wpe, N, T,
                                                                      C);
  } else {
    const long long work = static_cast<long long>(N) * C;
    encoder_forward_scalar<<<ceil_div(work, kThreads), kThreads, 0, s>>>(out, tokens, wte, wpe, N,
                                                                         T, C);
  }
  KD_CUDA_CHECK(cudaGetLastError());
}

void encoder_backward(float* dwte, float* dwpe, const bf16* dout, const int32_t* tokens, int B,
                      int T, int C, cudaStream_t s) {
  const int N = B * T;
  if (N <= 0 || C <= 0) return;
  int P = 2;
  while (P < N) P <<= 1;
  StreamScratch scratch(sizeof(unsigned long long) * P, s);
  unsigned long long* keys = scratch.as<unsigned long long>();
  make_keys<<<ceil_div(P, kThreads), kThreads, 0, s>>>(keys, tokens, N, P);
  KD_CUDA_CHECK(cudaGetLastError());
  const int tile = P < kSortTile ? P : kSortTile;
  const size_t smem = sizeof(unsigned long long) * tile;
  bitonic_tile<<<P / tile, tile / 2, smem, s>>>(keys, tile, 0);
  KD_CUDA_CHECK(cudaGetLastError());
  for (int k = 2 * tile; k <= P; k <<= 1) {
    for (int j = k >> 1; j >= tile; j >>= 1) {
      bitonic_global<<<ceil_div(P / 2, kThreads), kThreads, 0, s>>>(keys, P, j, k);
      KD_CUDA_CHECK(cudaGetLastError());
    }
    bitonic_tile<<<P / tile, tile / 2, smem, s>>>(keys, tile, k);
    KD_CUDA_CHECK(cudaGetLastError());
  }
  const dim3 grid(N, ceil_div(C, kThreads));
  encoder_backward_wte<<<grid, kThreads, 0, s>>>(dwte, dout, keys, N, C);
  KD_CUDA_CHECK(cudaGetLastError());
  encoder_backward_wpe<<<ceil_div(static_cast<long long>(T) * C, kThreads), kThreads, 0, s>>>(
      dwpe, dout, B, T, C);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kd::cuda
