// Causal flash attention, forward and backward, on tensor cores (mma.sync m16n8k16, bf16 in, fp32
// accumulate). Head size D = 64 or 128 (template parameter).
//
// Math (per batch b, head h; rows i = queries, columns j = keys, s = 1/sqrt(D)):
//   S = s Q K^T, masked to j <= i;  P = softmax_rows(S);  O = P V;  lse_i = log sum_j exp(S_ij)
//   backward: Dr_i = dO_i . O_i;  dP = dO V^T;  dS = P o (dP - Dr);  dQ = s dS K;  dK = s dS^T Q;
//   dV = P^T dO.
// Scores are handled in the base-2 domain (x = S log2 e, exp2 on the hardware unit).
//
// Forward: one block (4 warps, 128 threads) per (64-query tile, b*h). Each warp owns 16 query rows
// and keeps their Q fragments, the O accumulator (16 x D fp32) and the running max/sum in
// registers. The block walks the key tiles of 64 keys from 0 to the diagonal (tiles wholly above
// the diagonal are never visited); K and V tiles are staged in shared memory with cp.async, V_j
// loading while S = Q K_j^T is computed and K_{j+1} loading while P V_j is. Masking is applied only
// on tiles that cross the diagonal; rows and keys past T are zero-filled on load and never stored.
// Heavy (late) query tiles are scheduled first.
//
// Backward (FlashAttention-2 scheme, deterministic, no atomics):
//   1. dot kernel: Dr = rowsum(dO o O) into scratch [B,NH,T].
//   2. dK/dV kernel: one block per (64-key tile, b*h), 16 keys per warp; dK, dV accumulate in
//      registers while the block walks the query tiles (64 queries for D=64, 32 for D=128) from the
//      diagonal to T, recomputing P^T = exp2(S^T - lse) from K, Q and lse.
//   3. dQ kernel: one block per (64-query tile, b*h), 16 queries per warp; dQ accumulates in
//      registers over the key tiles 0..diagonal (64 keys for D=64, 32 for D=128).
//   P and dP are recomputed in both 2 and 3 (7 tile products instead of 5) in exchange for
//   bitwise-reproducible gradients with no fp32 scratch for dQ.
//
// Cost (causal, per b*h, T^2/2 score entries): forward 4 T^2/2 D FLOPs, backward 2.5x that counted
// as useful work (the dQ pass re-does 2 products: 3.5x executed). Memory: the forward reads Q once
// and K, V once per query tile ((T/64)/2 times on average; L2 absorbs most of it) and writes O,
// lse; the T x T matrices never leave registers.
#include <cmath>
#include <stdexcept>
#include <string>

#include "cuda/attention.cuh"
#include "cuda/mma.cuh"

namespace kd::cuda {

namespace {

using namespace kd::cuda::mma;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kThreads = 128;  // 4 warps, 16 rows each
constexpr int kTile = 64;      // rows of the outer tile of every kernel

// Copies rows [row0, row0 + ROWS) x D of a global matrix (row stride ld elements, 16-byte aligned
// rows) into a shared tile with leading dimension D + 8; rows >= T are zero-filled. Asynchronous:
// the caller commits and waits.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile_async(bf16* s, const bf16* g, size_t ld, int row0,
                                                int T) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  constexpr int kLd = D + 8;
  static_assert((ROWS * kChunks) % kThreads == 0, "tile must split evenly over the block");
#pragma unroll
  for (int it = 0; it < ROWS * kChunks / kThreads; ++it) {
    const int c = static_cast<int>(threadIdx.x) + it * kThreads;
    const int r = c / kChunks;
    const int k = (c % kChunks) * 8;
    const int t = row0 + r;
    const bool valid = t < T;
    cp_async_16(s + r * kLd + k, g + static_cast<size_t>(valid ? t : 0) * ld + k, valid);
  }
}

__device__ __forceinline__ void store_bf16x2(bf16* p, float a, float b) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
}

// p[0..1] += (a, b): the backward's gradients are added to what dqkv holds (the ops contract).
__device__ __forceinline__ void add_bf16x2(bf16* p, float a, float b) {
  const __nv_bfloat162 old = *reinterpret_cast<const __nv_bfloat162*>(p);
  *reinterpret_cast<__nv_bfloat162*>(p) =
      __floats2bfloat162_rn(__bfloat162float(old.x) + a, __bfloat162float(old.y) + b);
}

// ---- forward ------------------------------------------------------------------------------------

template <int D>
struct FwdCfg {
  static constexpr int kBr = kTile;  // queries per block
  static constexpr int kBc = 64;     // keys per inner tile
  static constexpr int kLd = D + 8;  // shared leading dimension (conflict-free ldmatrix)
  static constexpr size_t kSmem = static_cast<size_t>(kBr + 2 * kBc) * kLd * sizeof(bf16);
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                             const bf16* __restrict__ qkv, int T, int C, int NH, float scale_log2) {
  using Cfg = FwdCfg<D>;
  constexpr int Br = Cfg::kBr, Bc = Cfg::kBc, LD = Cfg::kLd;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = sQ + Br * LD;
  bf16* sV = sK + Bc * LD;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * Br;  // late (expensive) tiles first
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const size_t ld = 3 * static_cast<size_t>(C);
  const bf16* qbase = qkv + static_cast<size_t>(b) * T * ld + static_cast<size_t>(h) * D;
  const bf16* kbase = qbase + C;
  const bf16* vbase = qbase + 2 * static_cast<size_t>(C);

  load_tile_async<Br, D>(sQ, qbase, ld, q0, T);
  load_tile_async<Bc, D>(sK, kbase, ld, 0, T);
  cp_async_commit();

  const int n_tiles = (min(q0 + Br, T) - 1) / Bc + 1;  // key tiles up to the diagonal
  const int row0 = q0 + warp * 16 + g;                 // this thread's rows: row0, row0 + 8

  uint32_t qf[D / 16][4];
  float o[D / 8][4];
#pragma unroll
  for (int t = 0; t < D / 8; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running max (base-2 domain)
  float l[2] = {0.0f, 0.0f};            // running sum, this thread's columns only

  for (int j = 0; j < n_tiles; ++j) {
    cp_async_wait_all();
    __syncthreads();  // K_j (and Q) visible; every warp is done with V_{j-1}
    if (j == 0) load_a_frags<D / 16>(qf, sQ + warp * 16 * LD, LD, lane);
    load_tile_async<Bc, D>(sV, vbase, ld, j * Bc, T);
    cp_async_commit();

    float s[Bc / 8][4];
#pragma unroll
    for (int t = 0; t < Bc / 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
    gemm_rA_Bnk<D / 16, Bc / 8>(s, qf, sK, LD, lane);

    // Scale, and mask keys after the row where the tile crosses the diagonal of this warp's rows.
    const int k0 = j * Bc;
    const bool diag = k0 + Bc - 1 > q0 + warp * 16;
#pragma unroll
    for (int t = 0; t < Bc / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[t][e] * scale_log2;
        if (diag) {
          const int key = k0 + t * 8 + 2 * q + (e & 1);
          if (key > row0 + (e >> 1) * 8) x = -INFINITY;
        }
        s[t][e] = x;
      }
    }
    // Online softmax: new row max over the 4 lanes sharing a row, rescale O and the sum.
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int t = 0; t < Bc / 8; ++t) mx = fmaxf(mx, fmaxf(s[t][2 * i], s[t][2 * i + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing unmasked yet
      const float alpha = fast_exp2(m[i] - m_use);
      m[i] = m_new;
      float sum = 0.0f;
#pragma unroll
      for (int t = 0; t < Bc / 8; ++t) {
        s[t][2 * i] = fast_exp2(s[t][2 * i] - m_use);
        s[t][2 * i + 1] = fast_exp2(s[t][2 * i + 1] - m_use);
        sum += s[t][2 * i] + s[t][2 * i + 1];
      }
      l[i] = l[i] * alpha + sum;
#pragma unroll
      for (int t = 0; t < D / 8; ++t) {
        o[t][2 * i] *= alpha;
        o[t][2 * i + 1] *= alpha;
      }
    }

    cp_async_wait_all();
    __syncthreads();  // V_j visible; every warp is done with K_j
    if (j + 1 < n_tiles) {
      load_tile_async<Bc, D>(sK, kbase, ld, (j + 1) * Bc, T);
      cp_async_commit();
    }
    uint32_t pf[Bc / 16][4];
    c_to_a<Bc / 8>(pf, s);
    gemm_rA_Bkn<Bc / 16, D / 8>(o, pf, sV, LD, lane);
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    float lt = l[i];
    lt += __shfl_xor_sync(0xffffffffu, lt, 1);
    lt += __shfl_xor_sync(0xffffffffu, lt, 2);
    const int row = row0 + 8 * i;
    if (row < T) {
      const float inv = 1.0f / lt;
      bf16* orow = out + (static_cast<size_t>(b) * T + row) * C + h * D + 2 * q;
#pragma unroll
      for (int t = 0; t < D / 8; ++t)
        store_bf16x2(orow + t * 8, o[t][2 * i] * inv, o[t][2 * i + 1] * inv);
      if (q == 0) lse[static_cast<size_t>(bh) * T + row] = m[i] * kLn2 + logf(lt);
    }
  }
}

// ---- backward: Dr = rowsum(dO o O) --------------------------------------------------------------

// D/8 consecutive lanes per (b, t, h) row, each one 16-byte vector of dO and O.
template <int D>
__global__ void attention_backward_dot_kernel(float* __restrict__ Dr, const bf16* __restrict__ dout,
                                              const bf16* __restrict__ out, int B, int T, int C,
                                              int NH) {
  constexpr int kLanes = D / 8;
  const long long gid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long row = gid / kLanes;  // (b*T + t)*NH + h
  const int part = static_cast<int>(gid % kLanes);
  const long long rows = static_cast<long long>(B) * T * NH;
  float acc = 0.0f;
  if (row < rows) {
    const long long bt = row / NH;
    const int h = static_cast<int>(row % NH);
    const size_t off = static_cast<size_t>(bt) * C + static_cast<size_t>(h) * D + part * 8;
    float a[kVec], c[kVec];
    load_bf16x8(dout + off, a);
    load_bf16x8(out + off, c);
#pragma unroll
    for (int k = 0; k < kVec; ++k) acc += a[k] * c[k];
  }
#pragma unroll
  for (int w = kLanes / 2; w > 0; w >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, w);
  if (row < rows && part == 0) {
    const long long bt = row / NH;
    const int h = static_cast<int>(row % NH);
    const long long bb = bt / T, t = bt % T;
    Dr[(static_cast<size_t>(bb) * NH + h) * T + t] = acc;
  }
}

// ---- backward: dK, dV ---------------------------------------------------------------------------

template <int D>
struct DkvCfg {
  static constexpr int kBk = kTile;              // keys per block, 16 per warp
  static constexpr int kBq = D == 64 ? 64 : 32;  // queries per inner tile (registers at D=128)
  static constexpr int kLd = D + 8;
  static constexpr size_t kSmem =
      static_cast<size_t>(2 * kBk + 2 * kBq) * kLd * sizeof(bf16) + 2 * kBq * sizeof(float);
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dkdv_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                   const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                   const float* __restrict__ Dr, int T, int C, int NH, float scale,
                                   float scale_log2) {
  using Cfg = DkvCfg<D>;
  constexpr int Bk = Cfg::kBk, Bq = Cfg::kBq, LD = Cfg::kLd;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = sK + Bk * LD;
  bf16* sQ = sV + Bk * LD;
  bf16* sdO = sQ + Bq * LD;
  float* sL = reinterpret_cast<float*>(sdO + Bq * LD);  // lse (base 2) of the tile's queries
  float* sD = sL + Bq;                                  // Dr of the tile's queries

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int k0 = blockIdx.x * Bk;  // early key tiles see the most queries: scheduled first
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const size_t ld = 3 * static_cast<size_t>(C);
  const bf16* qbase = qkv + static_cast<size_t>(b) * T * ld + static_cast<size_t>(h) * D;
  const bf16* obase = dout + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * D;
  const float* lrow = lse + static_cast<size_t>(bh) * T;
  const float* drow = Dr + static_cast<size_t>(bh) * T;

  load_tile_async<Bk, D>(sK, qbase + C, ld, k0, T);
  load_tile_async<Bk, D>(sV, qbase + 2 * static_cast<size_t>(C), ld, k0, T);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int t = 0; t < D / 8; ++t) {
    dk[t][0] = dk[t][1] = dk[t][2] = dk[t][3] = 0.0f;
    dv[t][0] = dv[t][1] = dv[t][2] = dv[t][3] = 0.0f;
  }
  const int key0 = k0 + warp * 16 + g;  // this thread's keys: key0, key0 + 8
  const int n_q = (T + Bq - 1) / Bq;

  for (int it = k0 / Bq; it < n_q; ++it) {
    const int qs = it * Bq;
    load_tile_async<Bq, D>(sQ, qbase, ld, qs, T);
    load_tile_async<Bq, D>(sdO, obase, C, qs, T);
    cp_async_commit();
    if (threadIdx.x < Bq) {
      const int t = qs + threadIdx.x;
      sL[threadIdx.x] = t < T ? lrow[t] * kLog2e : INFINITY;  // +inf: P = 0 past T
      sD[threadIdx.x] = t < T ? drow[t] : 0.0f;
    }
    cp_async_wait_all();
    __syncthreads();

    // S^T (16 keys x Bq queries) = K_w Q^T, then P^T = exp2(S^T - lse), 0 where query < key.
    float s[Bq / 8][4];
#pragma unroll
    for (int t = 0; t < Bq / 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
    gemm_sA_Bnk<D / 16, Bq / 8>(s, sK + warp * 16 * LD, LD, sQ, LD, lane);
    const bool diag = qs < k0 + warp * 16 + 16;
#pragma unroll
    for (int t = 0; t < Bq / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = t * 8 + 2 * q + (e & 1);
        float p = fast_exp2(s[t][e] * scale_log2 - sL[col]);
        if (diag && qs + col < key0 + (e >> 1) * 8) p = 0.0f;
        s[t][e] = p;
      }
    }
    // dV += P^T dO
    {
      uint32_t pf[Bq / 16][4];
      c_to_a<Bq / 8>(pf, s);
      gemm_rA_Bkn<Bq / 16, D / 8>(dv, pf, sdO, LD, lane);
    }
    // dP^T = V_w dO^T;  dS^T = P^T o (dP^T - Dr);  dK += dS^T Q
    float dp[Bq / 8][4];
#pragma unroll
    for (int t = 0; t < Bq / 8; ++t) dp[t][0] = dp[t][1] = dp[t][2] = dp[t][3] = 0.0f;
    gemm_sA_Bnk<D / 16, Bq / 8>(dp, sV + warp * 16 * LD, LD, sdO, LD, lane);
#pragma unroll
    for (int t = 0; t < Bq / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = t * 8 + 2 * q + (e & 1);
        dp[t][e] = s[t][e] * (dp[t][e] - sD[col]);
      }
    }
    {
      uint32_t dsf[Bq / 16][4];
      c_to_a<Bq / 8>(dsf, dp);
      gemm_rA_Bkn<Bq / 16, D / 8>(dk, dsf, sQ, LD, lane);
    }
    __syncthreads();  // every warp is done with sQ, sdO, sL, sD before the next tile replaces them
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int key = key0 + 8 * i;
    if (key < T) {
      bf16* dkrow = dqkv + (static_cast<size_t>(b) * T + key) * ld + C + h * D + 2 * q;
      bf16* dvrow = dkrow + C;
#pragma unroll
      for (int t = 0; t < D / 8; ++t) {
        add_bf16x2(dkrow + t * 8, dk[t][2 * i] * scale, dk[t][2 * i + 1] * scale);
        add_bf16x2(dvrow + t * 8, dv[t][2 * i], dv[t][2 * i + 1]);
      }
    }
  }
}

// ---- backward: dQ -------------------------------------------------------------------------------

template <int D>
struct DqCfg {
  static constexpr int kBq = kTile;              // queries per block, 16 per warp
  static constexpr int kBk = D == 64 ? 64 : 32;  // keys per inner tile
  static constexpr int kLd = D + 8;
  static constexpr size_t kSmem = static_cast<size_t>(2 * kBq + 2 * kBk) * kLd * sizeof(bf16);
};

template <int D>
__global__ void __launch_bounds__(kThreads)
    attention_backward_dq_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                                 const bf16* __restrict__ qkv, const float* __restrict__ lse,
                                 const float* __restrict__ Dr, int T, int C, int NH, float scale,
                                 float scale_log2) {
  using Cfg = DqCfg<D>;
  constexpr int Bq = Cfg::kBq, Bk = Cfg::kBk, LD = Cfg::kLd;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sdO = sQ + Bq * LD;
  bf16* sK = sdO + Bq * LD;
  bf16* sV = sK + Bk * LD;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * Bq;  // late (expensive) tiles first
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const size_t ld = 3 * static_cast<size_t>(C);
  const bf16* qbase = qkv + static_cast<size_t>(b) * T * ld + static_cast<size_t>(h) * D;
  const bf16* kbase = qbase + C;
  const bf16* vbase = qbase + 2 * static_cast<size_t>(C);
  const bf16* obase = dout + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * D;

  load_tile_async<Bq, D>(sQ, qbase, ld, q0, T);
  load_tile_async<Bq, D>(sdO, obase, C, q0, T);
  cp_async_commit();

  const int row0 = q0 + warp * 16 + g;  // this thread's rows: row0, row0 + 8
  float lr[2], dr[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + 8 * i;
    lr[i] = row < T ? lse[static_cast<size_t>(bh) * T + row] * kLog2e : INFINITY;
    dr[i] = row < T ? Dr[static_cast<size_t>(bh) * T + row] : 0.0f;
  }
  const int n_tiles = (min(q0 + Bq, T) - 1) / Bk + 1;

  float dq[D / 8][4];
#pragma unroll
  for (int t = 0; t < D / 8; ++t) dq[t][0] = dq[t][1] = dq[t][2] = dq[t][3] = 0.0f;

  for (int j = 0; j < n_tiles; ++j) {
    const int k0 = j * Bk;
    load_tile_async<Bk, D>(sK, kbase, ld, k0, T);
    load_tile_async<Bk, D>(sV, vbase, ld, k0, T);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();

    // P = exp2(S - lse), 0 where key > query.
    float s[Bk / 8][4];
#pragma unroll
    for (int t = 0; t < Bk / 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
    gemm_sA_Bnk<D / 16, Bk / 8>(s, sQ + warp * 16 * LD, LD, sK, LD, lane);
    const bool diag = k0 + Bk - 1 > q0 + warp * 16;
#pragma unroll
    for (int t = 0; t < Bk / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float p = fast_exp2(s[t][e] * scale_log2 - lr[e >> 1]);
        if (diag && k0 + t * 8 + 2 * q + (e & 1) > row0 + (e >> 1) * 8) p = 0.0f;
        s[t][e] = p;
      }
    }
    // dP = dO V^T;  dS = P o (dP - Dr);  dQ += dS K
    float dp[Bk / 8][4];
#pragma unroll
    for (int t = 0; t < Bk / 8; ++t) dp[t][0] = dp[t][1] = dp[t][2] = dp[t][3] = 0.0f;
    gemm_sA_Bnk<D / 16, Bk / 8>(dp, sdO + warp * 16 * LD, LD, sV, LD, lane);
#pragma unroll
    for (int t = 0; t < Bk / 8; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dp[t][e] = s[t][e] * (dp[t][e] - dr[e >> 1]);
    }
    uint32_t dsf[Bk / 16][4];
    c_to_a<Bk / 8>(dsf, dp);
    gemm_rA_Bkn<Bk / 16, D / 8>(dq, dsf, sK, LD, lane);
    __syncthreads();  // every warp is done with sK, sV before the next tile replaces them
  }

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int row = row0 + 8 * i;
    if (row < T) {
      bf16* dqrow = dqkv + (static_cast<size_t>(b) * T + row) * ld + h * D + 2 * q;
#pragma unroll
      for (int t = 0; t < D / 8; ++t)
        add_bf16x2(dqrow + t * 8, dq[t][2 * i] * scale, dq[t][2 * i + 1] * scale);
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------

int head_size(int B, int T, int C, int NH, const char* op) {
  KD_REQUIRE(B >= 0 && T >= 0 && NH > 0 && C > 0 && C % NH == 0,
             std::string(op) + ": bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) +
                 " C=" + std::to_string(C) + " NH=" + std::to_string(NH));
  const int hs = C / NH;
  KD_REQUIRE(hs == 64 || hs == 128,
             std::string(op) + ": head size " + std::to_string(hs) + " not supported (64 or 128)");
  KD_REQUIRE(static_cast<long long>(B) * NH <= 65535, std::string(op) + ": B*NH above 65535");
  return hs;
}

void require_aligned(const void* p, const char* what) {
  KD_REQUIRE(aligned16(p), std::string(what) + " must be 16-byte aligned");
}

template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  KD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

template <int D>
void forward_launch(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                    cudaStream_t stream) {
  const float scale_log2 = kLog2e / std::sqrt(static_cast<float>(D));
  const size_t smem = FwdCfg<D>::kSmem;
  allow_smem(attention_forward_kernel<D>, smem);
  const dim3 grid(ceil_div(T, FwdCfg<D>::kBr), B * NH);
  attention_forward_kernel<D>
      <<<grid, kThreads, smem, stream>>>(out, lse, qkv, T, C, NH, scale_log2);
  KD_CUDA_CHECK(cudaGetLastError());
}

template <int D>
void backward_launch(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                     const float* lse, int B, int T, int C, int NH, cudaStream_t stream,
                     float* Dr) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  const float scale_log2 = scale * kLog2e;
  const long long dot_threads = static_cast<long long>(B) * T * NH * (D / 8);
  attention_backward_dot_kernel<D>
      <<<ceil_div(dot_threads, 256), 256, 0, stream>>>(Dr, dout, out, B, T, C, NH);
  KD_CUDA_CHECK(cudaGetLastError());

  const size_t smem_kv = DkvCfg<D>::kSmem;
  allow_smem(attention_backward_dkdv_kernel<D>, smem_kv);
  const dim3 grid_kv(ceil_div(T, DkvCfg<D>::kBk), B * NH);
  attention_backward_dkdv_kernel<D><<<grid_kv, kThreads, smem_kv, stream>>>(
      dqkv, dout, qkv, lse, Dr, T, C, NH, scale, scale_log2);
  KD_CUDA_CHECK(cudaGetLastError());

  const size_t smem_q = DqCfg<D>::kSmem;
  allow_smem(attention_backward_dq_kernel<D>, smem_q);
  const dim3 grid_q(ceil_div(T, DqCfg<D>::kBq), B * NH);
  attention_backward_dq_kernel<D>
      <<<grid_q, kThreads, smem_q, stream>>>(dqkv, dout, qkv, lse, Dr, T, C, NH, scale, scale_log2);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                       cudaStream_t stream) {
  const int hs = head_size(B, T, C, NH, "attention_forward");
  if (B == 0 || T == 0) return;
  require_aligned(out, "attention_forward: out");
  require_aligned(qkv, "attention_forward: qkv");
  if (hs == 64)
    forward_launch<64>(out, lse, qkv, B, T, C, NH, stream);
  else
    forward_launch<128>(out, lse, qkv, B, T, C, NH, stream);
}

size_t attention_backward_scratch_floats(int B, int T, int NH) {
  return static_cast<size_t>(B > 0 ? B : 0) * (NH > 0 ? NH : 0) * (T > 0 ? T : 0);
}

void attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                        const float* lse, int B, int T, int C, int NH, cudaStream_t stream,
                        float* scratch) {
  const int hs = head_size(B, T, C, NH, "attention_backward");
  if (B == 0 || T == 0) return;
  require_aligned(dqkv, "attention_backward: dqkv");
  require_aligned(dout, "attention_backward: dout");
  require_aligned(qkv, "attention_backward: qkv");
  require_aligned(out, "attention_backward: out");
  KD_REQUIRE(scratch != nullptr, "attention_backward: scratch is null");
  if (hs == 64)
    backward_launch<64>(dqkv, dout, qkv, out, lse, B, T, C, NH, stream, scratch);
  else
    backward_launch<128>(dqkv, dout, qkv, out, lse, B, T, C, NH, stream, scratch);
}

}  // namespace kd::cuda
