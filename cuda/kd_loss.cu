// The fused distillation loss: CE(T=1) against the targets plus a temperature divergence between
// teacher p = softmax(t/T) and student q = softmax(z/T) (forward KL, reverse KL, or JSD(beta)
// normalised by beta (1 - beta)), with its gradient written over the student logits.
// Math and definitions: docs/ops/kd_loss.md and the CPU twin engine/ops/cpu/kd_loss.cpp.
//
// Decomposition: one block per row, n threads, n = 1024 for large vocabularies and about V / 16 (a
// multiple of 32, at least 32) for small ones. When the row strides and pointers allow it, thread
// i takes the 8-value vectors i, i + n, ... (16-byte loads and stores) and the last V mod 8 columns
// one by one; otherwise every column one by one.
//   pass 1 (online, the only pass that reads the logits from DRAM): per thread, the running max of
//     z and of t and the sums of 2^((z - max_z)·log2(e)/T), 2^((z - max_z)·log2(e)) (CE at T = 1,
//     skipped when T = 1) and 2^((t - max_t)·log2(e)/T), rescaled when the max grows (once per
//     vector of 8, not per value); for reverse KL also w = sum 2^((z - max_z)·log2(e)/T)·(z - t),
//     which gives KL(q||p) = (w / s_q - (max_z - max_t)) / T - ln s_q + ln s_p without another
//     pass. The raw bf16 values are copied to shared memory on the way (the row cache, below).
//     Merged over the block (warp shuffles, then the warps in a fixed order).
//   pass 2 (JSD only): KL(p||m) and KL(q||m) over the cached row (their logs are not linear in the
//     logits, so no online form exists), block-summed.
//   pass 3: the gradient, written once as bf16 (16-byte stores), and the row sums the gradient
//     does not need (entropies, forward KL, reverse KL elementwise), block-summed.
// Each row stores (ce, kd, kl, H(p), H(q), supervised) to a [N, 6] float scratch; a final
// single-block kernel sums the rows in double in a fixed order and ADDS them to the LossSums.
//
// The row cache: the row's V student and V teacher values (bf16) are kept in dynamic shared memory
// between the passes: 4·V bytes, 201 KB at V = 50257, within the 227 KB a block may have on sm_90
// (then one block per SM). Passes 2 and 3 read shared memory, not DRAM.
// DRAM traffic per logit (bf16): read z 2 B + read t 2 B + write dlogits 2 B = 6 B, for every
// divergence, whenever the row fits the cache (4·V ≤ 227 KB minus the kernel's static shared
// memory: V ≤ ~57,000 with a teacher, ~114,000 without). Larger rows are re-read from global
// memory (L2 when it holds them): at most 10 B per logit for CE, forward and reverse KL, 14 B for
// JSD. (The previous kernel re-read every row from L2/DRAM: 8-10 B, 12-14 B for reverse KL/JSD.)
// Math per logit: pass 1 takes 2 exp2 with a teacher at T = 1 (3 at T != 1) plus one rescale per 8
// values; pass 3 takes 2-3 exp2 and an expm1 per KL term; JSD adds about 6 transcendentals.
#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/kd_loss.cuh"
#include "engine/base/error.h"

namespace kd::cuda {

namespace {

constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr int kRec = 6;  // per-row record: ce, kd, kl, teacher entropy, student entropy, supervised
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

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

struct Params {
  float c1;      // log2(e): the exponent scale at T = 1
  float ct;      // log2(e) / T
  int t_is_one;  // T == 1: the CE sums are the temperature sums
  float beta;    // JSD mixing weight (0 < beta < 1 in JSD mode)
  float g_ce;    // inv_norm * ce_weight
  float g_kd;    // inv_norm * kd_weight * s(T) / T, or 0
};

// Online statistics of the student's row: max m, st = sum 2^((z - m) ct), s1 = sum 2^((z - m) c1)
// (T != 1 only), w = sum 2^((z - m) ct) (z - t) (reverse KL only).
struct StudentStats {
  float m, st, s1, w;
};
// ... and of the teacher's: max m, s = sum 2^((t - m) ct).
struct TeacherStats {
  float m, s;
};

// Adds K values of the row (z, and t with a teacher) to the thread's statistics: one rescale for
// the group, then one exp2 per value and sum.
template <int MODE, int K>
__device__ __forceinline__ void online_add(StudentStats& s, TeacherStats& q, const float (&z)[K],
                                           const float (&t)[K], const Params& P) {
  float zmax = z[0];
#pragma unroll
  for (int k = 1; k < K; ++k) zmax = fmaxf(zmax, z[k]);
  const float m = fmaxf(s.m, zmax);
  const float d = s.m - m;  // <= 0; -inf on the first group (the old sums, 0, stay 0)
  const float ft = exp2f(d * P.ct);
  s.st *= ft;
  if (MODE == kReverseKL) s.w *= ft;
  if (!P.t_is_one) s.s1 *= exp2f(d * P.c1);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float x = z[k] - m;
    const float e = exp2f(x * P.ct);
    s.st += e;
    if (!P.t_is_one) s.s1 += exp2f(x * P.c1);
    if (MODE == kReverseKL) s.w += e * (z[k] - t[k]);
  }
  s.m = m;
  if constexpr (MODE != kCE) {
    float tmax = t[0];
#pragma unroll
    for (int k = 1; k < K; ++k) tmax = fmaxf(tmax, t[k]);
    const float mt = fmaxf(q.m, tmax);
    float sum = q.s * exp2f((q.m - mt) * P.ct);
#pragma unroll
    for (int k = 0; k < K; ++k) sum += exp2f((t[k] - mt) * P.ct);
    q.s = sum;
    q.m = mt;
  }
}

__device__ __forceinline__ StudentStats merge(const StudentStats& a, const StudentStats& b,
                                              const Params& P) {
  StudentStats r{fmaxf(a.m, b.m), 0.0f, 0.0f, 0.0f};
  if (r.m == -INFINITY) return r;  // both empty
  const float fa = exp2f((a.m - r.m) * P.ct), fb = exp2f((b.m - r.m) * P.ct);
  r.st = a.st * fa + b.st * fb;
  r.w = a.w * fa + b.w * fb;
  if (!P.t_is_one) r.s1 = a.s1 * exp2f((a.m - r.m) * P.c1) + b.s1 * exp2f((b.m - r.m) * P.c1);
  return r;
}

__device__ __forceinline__ TeacherStats merge(const TeacherStats& a, const TeacherStats& b,
                                              const Params& P) {
  TeacherStats r{fmaxf(a.m, b.m), 0.0f};
  if (r.m == -INFINITY) return r;
  r.s = a.s * exp2f((a.m - r.m) * P.ct) + b.s * exp2f((b.m - r.m) * P.ct);
  return r;
}

// Merges the block's statistics; every thread gets the same result (the warps are merged in
// order). sh_s and sh_t hold one entry per warp.
template <int MODE>
__device__ void block_merge(StudentStats& s, TeacherStats& q, const Params& P, StudentStats* sh_s,
                            TeacherStats* sh_t) {
  for (int off = 16; off > 0; off >>= 1) {
    StudentStats o;
    o.m = __shfl_xor_sync(0xffffffffu, s.m, off);
    o.st = __shfl_xor_sync(0xffffffffu, s.st, off);
    o.s1 = __shfl_xor_sync(0xffffffffu, s.s1, off);
    o.w = __shfl_xor_sync(0xffffffffu, s.w, off);
    s = merge(s, o, P);
    if constexpr (MODE != kCE) {
      TeacherStats ot;
      ot.m = __shfl_xor_sync(0xffffffffu, q.m, off);
      ot.s = __shfl_xor_sync(0xffffffffu, q.s, off);
      q = merge(q, ot, P);
    }
  }
  if ((threadIdx.x & 31) == 0) {
    sh_s[threadIdx.x >> 5] = s;
    sh_t[threadIdx.x >> 5] = q;
  }
  __syncthreads();
  s = sh_s[0];
  q = sh_t[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
    s = merge(s, sh_s[w], P);
    if constexpr (MODE != kCE) q = merge(q, sh_t[w], P);
  }
}

// Block sum of K values, fixed order; every thread gets the results.
template <int K>
__device__ void block_sum_k(float (&v)[K], float (*sh)[kMaxWarps]) {
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  __syncthreads();  // sh may still be read by an earlier call
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

// What every element of a row needs once pass 1 (and for JSD pass 2) is done. Exponents are base
// 2: log2 q_T(k) = (z_k - zmax) ct - lq, log2 p_T(k) = (t_k - tmax) ct - lp,
// log2 softmax(z)_k = (z_k - zmax) c1 - l1.
struct Row {
  float zmax, tmax, lq, lp, l1;
  float row_div;  // reverse KL: KL(q||p); JSD: KL(q||m) (what the gradient subtracts)
  int target;
};

// Pass 2 (JSD): the two halves' elements at one column.
__device__ __forceinline__ void jsd_sums(float zk, float tk, const Row& R, const Params& P,
                                         float (&acc)[2]) {
  const float lq = ((zk - R.zmax) * P.ct - R.lq) * kLn2;
  const float lp = ((tk - R.tmax) * P.ct - R.lp) * kLn2;
  const float q = expf(lq), p = expf(lp);
  const float beta = P.beta;
  const float m = beta * p + (1.0f - beta) * q;
  acc[0] += kl_term(p, m, -log_mix_ratio(lq - lp, 1.0f - beta, beta));
  acc[1] += kl_term(q, m, -log_mix_ratio(lp - lq, beta, 1.0f - beta));
}

// Pass 3 at one column: adds H(q), H(p), forward KL and (reverse KL) the elementwise reverse KL to
// acc, returns the gradient.
template <int MODE>
__device__ __forceinline__ float grad_at(float zk, float tk, int k, const Row& R, const Params& P,
                                         float (&acc)[4]) {
  const float aq = (zk - R.zmax) * P.ct - R.lq;
  const float q = exp2f(aq), lq = aq * kLn2;
  acc[0] -= q * lq;
  const float q1 = P.t_is_one ? q : exp2f((zk - R.zmax) * P.c1 - R.l1);
  float grad = P.g_ce * (q1 - (k == R.target ? 1.0f : 0.0f));
  if constexpr (MODE != kCE) {
    const float ap = (tk - R.tmax) * P.ct - R.lp;
    const float p = exp2f(ap), lp = ap * kLn2;
    acc[1] -= p * lp;
    acc[2] += kl_term(p, q, lp - lq);
    float d;
    if constexpr (MODE == kForwardKL) {
      d = q - p;
    } else if constexpr (MODE == kReverseKL) {
      acc[3] += kl_term(q, p, lq - lp);
      d = q * (lq - lp - R.row_div);
    } else {
      const float log_q_m = -log_mix_ratio(lp - lq, P.beta, 1.0f - P.beta);
      d = q * (log_q_m - R.row_div) / P.beta;
    }
    grad += P.g_kd * d;
  }
  return grad;
}

// One row per block. logits / dlogits rows have stride ldz, teacher rows ldt; V columns are the
// vocabulary; dlogits columns [V, ldz) are written 0. nvec: the number of leading 8-value vectors
// taken as vectors (0 when the strides or pointers are not 16-byte aligned). cache: keep the row
// in dynamic shared memory (2 * round8(V) bf16 with a teacher, round8(V) without).
template <int MODE>
__global__ void __launch_bounds__(kMaxThreads)
    kd_loss_rows(bf16* dlogits, float* __restrict__ rec, const bf16* logits, int ldz,
                 const bf16* __restrict__ teacher, int ldt, const int32_t* __restrict__ targets,
                 int V, Params P, int nvec, int cache) {
  extern __shared__ __align__(16) uint4 kd_row_cache[];
  __shared__ StudentStats sh_s[kMaxWarps];
  __shared__ TeacherStats sh_t[kMaxWarps];
  __shared__ float sh_sum[4][kMaxWarps];
  constexpr bool kTeacher = MODE != kCE;
  const int row = blockIdx.x;
  const int target = targets[row];
  const bf16* z = logits + static_cast<size_t>(row) * ldz;
  bf16* dz = dlogits != nullptr ? dlogits + static_cast<size_t>(row) * ldz : nullptr;
  const bf16* t = kTeacher ? teacher + static_cast<size_t>(row) * ldt : nullptr;
  float* out = rec + static_cast<size_t>(row) * kRec;
  const int n = blockDim.x;

  if (target < 0 || target >= V) {  // masked (or invalid) row: zero gradient, no contribution
    if (dz != nullptr)
      for (int k = threadIdx.x; k < ldz; k += n) dz[k] = __float2bfloat16(0.0f);
    if (threadIdx.x == 0) {
      for (int f = 0; f < kRec; ++f) out[f] = 0.0f;
      if (target >= V) out[0] = NAN, out[5] = 1.0f;  // an out-of-vocabulary target poisons the sums
    }
    return;
  }
  bf16* zc = reinterpret_cast<bf16*>(kd_row_cache);      // [round8(V)]
  bf16* tc = zc + static_cast<size_t>((V + 7) / 8) * 8;  // [round8(V)] (teacher)
  const int tail = nvec * kVec;                          // first column taken one by one
  // The target's logit, read before any thread can overwrite it (dlogits may be logits).
  const float z_target = threadIdx.x == 0 ? __bfloat162float(z[target]) : 0.0f;

  // ---- pass 1: online statistics, the row copied to the cache -----------------------------------
  StudentStats ss{-INFINITY, 0.0f, 0.0f, 0.0f};
  TeacherStats ts{-INFINITY, 0.0f};
  {
    int i = threadIdx.x;
    for (; i + n < nvec; i += 2 * n) {  // two vectors per stream in flight
      uint4 rz[2], rt[2];
      rz[0] = reinterpret_cast<const uint4*>(z)[i];
      rz[1] = reinterpret_cast<const uint4*>(z)[i + n];
      if constexpr (kTeacher) {
        rt[0] = reinterpret_cast<const uint4*>(t)[i];
        rt[1] = reinterpret_cast<const uint4*>(t)[i + n];
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        float zv[kVec], tv[kVec] = {};
        unpack_bf16x8(rz[u], zv);
        if (cache) reinterpret_cast<uint4*>(zc)[i + u * n] = rz[u];
        if constexpr (kTeacher) {
          unpack_bf16x8(rt[u], tv);
          if (cache) reinterpret_cast<uint4*>(tc)[i + u * n] = rt[u];
        }
        online_add<MODE>(ss, ts, zv, tv, P);
      }
    }
    if (i < nvec) {
      float zv[kVec], tv[kVec] = {};
      const uint4 rz = reinterpret_cast<const uint4*>(z)[i];
      unpack_bf16x8(rz, zv);
      if (cache) reinterpret_cast<uint4*>(zc)[i] = rz;
      if constexpr (kTeacher) {
        const uint4 rt = reinterpret_cast<const uint4*>(t)[i];
        unpack_bf16x8(rt, tv);
        if (cache) reinterpret_cast<uint4*>(tc)[i] = rt;
      }
      online_add<MODE>(ss, ts, zv, tv, P);
    }
    for (int k = tail + threadIdx.x; k < V; k += n) {
      const bf16 zb = z[k];
      const float zv[1] = {__bfloat162float(zb)};
      float tv[1] = {0.0f};
      if (cache) zc[k] = zb;
      if constexpr (kTeacher) {
        const bf16 tb = t[k];
        tv[0] = __bfloat162float(tb);
        if (cache) tc[k] = tb;
      }
      online_add<MODE>(ss, ts, zv, tv, P);
    }
  }
  block_merge<MODE>(ss, ts, P, sh_s, sh_t);  // its barrier also publishes the cache
  if (P.t_is_one) ss.s1 = ss.st;
  const bf16* zr = cache ? zc : z;  // where passes 2 and 3 read the row
  const bf16* tr = cache ? tc : t;

  Row R;
  R.zmax = ss.m;
  R.tmax = ts.m;
  R.lq = log2f(ss.st);
  R.lp = kTeacher ? log2f(ts.s) : 0.0f;
  R.l1 = log2f(ss.s1);
  R.target = target;
  R.row_div = 0.0f;
  if constexpr (MODE == kReverseKL)  // KL(q||p) from the online sums, in nats
    R.row_div = fmaxf(((ss.w / ss.st - (ss.m - ts.m)) * P.ct - R.lq + R.lp) * kLn2, 0.0f);

  // ---- pass 2 (JSD): KL(p||m) and KL(q||m) over the row
  // ------------------------------------------
  float jsd[2] = {0.0f, 0.0f};
  if constexpr (MODE == kJSD) {
    for (int i = threadIdx.x; i < nvec; i += n) {
      float zv[kVec], tv[kVec];
      unpack_bf16x8(reinterpret_cast<const uint4*>(zr)[i], zv);
      unpack_bf16x8(reinterpret_cast<const uint4*>(tr)[i], tv);
#pragma unroll
      for (int u = 0; u < kVec; ++u) jsd_sums(zv[u], tv[u], R, P, jsd);
    }
    for (int k = tail + threadIdx.x; k < V; k += n)
      jsd_sums(__bfloat162float(zr[k]), __bfloat162float(tr[k]), R, P, jsd);
    block_sum_k<2>(jsd, sh_sum);
    R.row_div = jsd[1];
  }

  // ---- pass 3: the gradient and the remaining row sums
  // -------------------------------------------
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};  // H(q), H(p), KL(p||q), KL(q||p)
  for (int i = threadIdx.x; i < nvec; i += n) {
    float zv[kVec], tv[kVec] = {}, g[kVec];
    unpack_bf16x8(reinterpret_cast<const uint4*>(zr)[i], zv);
    if constexpr (kTeacher) unpack_bf16x8(reinterpret_cast<const uint4*>(tr)[i], tv);
#pragma unroll
    for (int u = 0; u < kVec; ++u) g[u] = grad_at<MODE>(zv[u], tv[u], i * kVec + u, R, P, acc);
    if (dz != nullptr) store_bf16x8(dz + static_cast<size_t>(i) * kVec, g);
  }
  for (int k = tail + threadIdx.x; k < V; k += n) {
    const float tk = kTeacher ? __bfloat162float(tr[k]) : 0.0f;
    const float g = grad_at<MODE>(__bfloat162float(zr[k]), tk, k, R, P, acc);
    if (dz != nullptr) dz[k] = __float2bfloat16(g);
  }
  if (dz != nullptr)  // the padded columns get no gradient
    for (int k = V + threadIdx.x; k < ldz; k += n) dz[k] = __float2bfloat16(0.0f);
  block_sum_k<4>(acc, sh_sum);

  if (threadIdx.x == 0) {
    out[0] = (R.l1 * kLn2) - (z_target - R.zmax);  // CE = ln sum exp(z - zmax) - (z_y - zmax)
    out[1] = MODE == kForwardKL   ? acc[2]
             : MODE == kReverseKL ? acc[3]
             : MODE == kJSD       ? jsd[0] / (1.0f - P.beta) + jsd[1] / P.beta
                                  : 0.0f;
    out[2] = acc[2];
    out[3] = acc[1];
    out[4] = acc[0];
    out[5] = 1.0f;
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

// Shared memory a block may hold on the current device (the opt-in limit), less what the kernel
// declares statically and a margin. Queried once per device.
size_t cache_limit_bytes() {
  static int limit[64] = {};
  int dev = 0;
  KD_CUDA_CHECK(cudaGetDevice(&dev));
  if (dev < 0 || dev >= 64) return 0;
  if (limit[dev] == 0) {
    cudaDeviceProp prop;
    KD_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    limit[dev] = std::max(1, static_cast<int>(prop.sharedMemPerBlockOptin) - 4096);
  }
  return static_cast<size_t>(limit[dev]);
}

template <int MODE>
void launch(int N, int threads, size_t smem, cudaStream_t s, bf16* dlogits, float* rec,
            const bf16* logits, int ldz, const bf16* teacher, int ldt, const int32_t* targets,
            int V, const Params& P, int nvec, int cache) {
  if (smem > 48 * 1024)
    KD_CUDA_CHECK(cudaFuncSetAttribute(
        kd_loss_rows<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kd_loss_rows<MODE><<<N, threads, smem, s>>>(dlogits, rec, logits, ldz, teacher, ldt, targets, V,
                                              P, nvec, cache);
  KD_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void kd_loss(bf16* dlogits, kd::LossSums* sums, const bf16* logits, int Vs, const bf16* teacher,
             int Vt, const int32_t* targets, int N, int V, const kd::LossConfig& cfg,
             float inv_norm, cudaStream_t s) {
  const std::string where = "kd_loss (cuda): ";
  KD_REQUIRE(N >= 0, where + "row count N must be >= 0, got " + std::to_string(N));
  if (N == 0) return;
  KD_REQUIRE(V > 0, where + "vocabulary size V must be > 0, got " + std::to_string(V));
  KD_REQUIRE(logits != nullptr && targets != nullptr,
             where + "logits and targets must not be null");
  KD_REQUIRE(Vs >= V, where + "student row stride Vs must be >= V = " + std::to_string(V) +
                          ", got " + std::to_string(Vs));
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
  P.c1 = kLog2e;
  P.ct = kLog2e / cfg.temperature;
  P.t_is_one = cfg.temperature == 1.0f;
  P.beta = cfg.beta;
  P.g_ce = inv_norm * cfg.ce_weight;
  P.g_kd = teacher != nullptr ? inv_norm * cfg.kd_weight * scale / cfg.temperature : 0.0f;

  // 16-byte vectors when every row of every tensor starts on a 16-byte boundary.
  const bool vec = Vs % kVec == 0 && aligned16(logits) &&
                   (dlogits == nullptr || aligned16(dlogits)) &&
                   (teacher == nullptr || (Vt % kVec == 0 && aligned16(teacher)));
  const int nvec = vec ? V / kVec : 0;
  // About 16 columns per thread, at least one warp, at most kMaxThreads.
  const int threads = std::min(kMaxThreads, std::max(32, ceil_div(ceil_div(V, 16), 32) * 32));
  const size_t row_bytes = static_cast<size_t>(ceil_div(V, 8)) * 8 * sizeof(bf16);
  const size_t cache_bytes = row_bytes * (teacher != nullptr ? 2 : 1);
  const bool cache = cache_bytes <= cache_limit_bytes();
  const size_t smem = cache ? cache_bytes : 0;

  StreamScratch rec(sizeof(float) * kRec * static_cast<size_t>(N), s);
  float* r = rec.as<float>();
  switch (mode) {
    case kCE:
      launch<kCE>(N, threads, smem, s, dlogits, r, logits, Vs, teacher, Vt, targets, V, P, nvec,
                  cache);
      break;
    case kForwardKL:
      launch<kForwardKL>(N, threads, smem, s, dlogits, r, logits, Vs, teacher, Vt, targets, V, P,
                         nvec, cache);
      break;
    case kReverseKL:
      launch<kReverseKL>(N, threads, smem, s, dlogits, r, logits, Vs, teacher, Vt, targets, V, P,
                         nvec, cache);
      break;
    default:
      launch<kJSD>(N, threads, smem, s, dlogits, r, logits, Vs, teacher, Vt, targets, V, P, nvec,
                   cache);
      break;
  }
  if (sums != nullptr) {
    kd_loss_reduce<<<1, kReduceThreads, 0, s>>>(sums, r, N, cfg.ce_weight, cfg.kd_weight * scale,
                                                teacher != nullptr);
    KD_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace kd::cuda
