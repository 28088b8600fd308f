// Tensor-core helpers for sm_80+ kernels: asynchronous global->shared copies, ldmatrix, and the
// warp-wide mma.sync.aligned.m16n8k16 bf16 x bf16 -> fp32 product, plus small warp-level GEMMs
// built on them.
//
// Fragment layouts of m16n8k16 (lane = 4 * g + q, g = lane / 4 in 0..7, q = lane % 4 in 0..3); each
// 32-bit register holds two bf16, the lower column (or k) index in the low half:
//   A (16 x 16, row-major):  a[0] = A[g][2q, 2q+1]      a[1] = A[g+8][2q, 2q+1]
//                            a[2] = A[g][2q+8, 2q+9]    a[3] = A[g+8][2q+8, 2q+9]
//   B (16 x 8, k x n):       b[0] = B[2q, 2q+1][g]      b[1] = B[2q+8, 2q+9][g]
//   C/D (16 x 8, fp32):      c[0], c[1] = C[g][2q, 2q+1]   c[2], c[3] = C[g+8][2q, 2q+1]
// The C fragments of two adjacent n-tiles of a product are therefore, once packed to bf16, exactly
// the A fragment of the next product whose k runs over those 16 columns (see c_to_a).
//
// ldmatrix.x4 loads four 8x8 bf16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, and
// lane l receives in r[i] row l/4, columns 2(l%4), 2(l%4)+1 of matrix i (with .trans: column l/4,
// rows 2(l%4), 2(l%4)+1). The offsets below place the four matrices so that r[] comes out as an A
// fragment, or as the B fragments of two adjacent n-tiles.
#pragma once

#include <cstdint>

#include "cuda/common.cuh"

namespace kd::cuda::mma {

#ifndef KD_CUDA_EMU  // the CPU emulator (tools/kdemu) supplies warp-wide versions of these
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1. When !valid nothing is read and the 16 bytes are zeroed
// (src must still be a mapped address; callers pass a clamped one).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits for every committed group of this thread (a __syncthreads must follow before other threads'
// copies are visible).
__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.wait_all;\n" ::: "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

// d += a * b for one 16x8x16 tile.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x with the hardware approximation (about 2 ulp); 2^-inf = 0.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

#endif  // KD_CUDA_EMU

// Two floats rounded to bf16 (nearest even) in one register, lo in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Element offset, inside a 16x16 block of a row-major tile with leading dimension ld, of the row
// address lane l gives to ldmatrix so that the result is an A fragment (matrices: rows 0-7 / 8-15
// x cols 0-7, then rows 0-7 / 8-15 x cols 8-15). Used with .trans on a [k][n] tile, the same
// offsets give the B fragments of n-tiles 0 and 1: r[0], r[1] for n 0-7 and r[2], r[3] for n 8-15.
__device__ __forceinline__ int frag_offset_a(int lane, int ld) {
  const int i = lane >> 3, r = lane & 7;
  return (r + (i & 1) * 8) * ld + (i >> 1) * 8;
}
// Offset for a non-transposed load from an [n][k] tile (B stored transposed, e.g. K for Q K^T):
// matrices n 0-7 x k 0-7, n 0-7 x k 8-15, n 8-15 x k 0-7, n 8-15 x k 8-15, so r[0], r[1] are the B
// fragment of n-tile 0 and r[2], r[3] that of n-tile 1.
__device__ __forceinline__ int frag_offset_bnk(int lane, int ld) {
  const int i = lane >> 3, r = lane & 7;
  return (r + (i >> 1) * 8) * ld + (i & 1) * 8;
}

// acc (16 x 8NT) += A (16 x 16KT, fragments in registers) * B, where B (16KT x 8NT) is stored
// transposed in shared memory as Bt[n][k] with leading dimension ldb.
template <int KT, int NT>
__device__ __forceinline__ void gemm_rA_Bnk(float (&acc)[NT][4], const uint32_t (&a)[KT][4],
                                            const bf16* Bt, int ldb, int lane) {
  static_assert(NT % 2 == 0, "n-tiles come in pairs");
  const bf16* base = Bt + frag_offset_bnk(lane, ldb);
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, base + np * 16 * ldb + kk * 16);
      mma_16816(acc[2 * np], a[kk], b[0], b[1]);
      mma_16816(acc[2 * np + 1], a[kk], b[2], b[3]);
    }
  }
}

// acc (16 x 8NT) += A (16 x 16KT, fragments in registers) * B, where B (16KT x 8NT) is stored as
// B[k][n] in shared memory with leading dimension ldb.
template <int KT, int NT>
__device__ __forceinline__ void gemm_rA_Bkn(float (&acc)[NT][4], const uint32_t (&a)[KT][4],
                                            const bf16* B, int ldb, int lane) {
  static_assert(NT % 2 == 0, "n-tiles come in pairs");
  const bf16* base = B + frag_offset_a(lane, ldb);
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, base + kk * 16 * ldb + np * 16);
      mma_16816(acc[2 * np], a[kk], b[0], b[1]);
      mma_16816(acc[2 * np + 1], a[kk], b[2], b[3]);
    }
  }
}

// acc (16 x 8NT) += A (16 x 16KT, row-major in shared memory, leading dimension lda) * B, B stored
// transposed as Bt[n][k]. A's fragments are loaded one k-step at a time (few live registers).
template <int KT, int NT>
__device__ __forceinline__ void gemm_sA_Bnk(float (&acc)[NT][4], const bf16* A, int lda,
                                            const bf16* Bt, int ldb, int lane) {
  static_assert(NT % 2 == 0, "n-tiles come in pairs");
  const bf16* abase = A + frag_offset_a(lane, lda);
  const bf16* bbase = Bt + frag_offset_bnk(lane, ldb);
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, abase + kk * 16);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, bbase + np * 16 * ldb + kk * 16);
      mma_16816(acc[2 * np], a, b[0], b[1]);
      mma_16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Loads the A fragments of a 16 x 16KT row-major tile from shared memory.
template <int KT>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[KT][4], const bf16* A, int lda,
                                             int lane) {
  const bf16* base = A + frag_offset_a(lane, lda);
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) ldmatrix_x4(a[kk], base + kk * 16);
}

// The accumulator of a 16 x 8NT product, rounded to bf16, as the A fragments (16 x 16(NT/2)) of a
// following product whose k dimension runs over the same columns.
template <int NT>
__device__ __forceinline__ void c_to_a(uint32_t (&a)[NT / 2][4], const float (&c)[NT][4]) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    a[kk][0] = pack_bf16(c[2 * kk][0], c[2 * kk][1]);
    a[kk][1] = pack_bf16(c[2 * kk][2], c[2 * kk][3]);
    a[kk][2] = pack_bf16(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[kk][3] = pack_bf16(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

}  // namespace kd::cuda::mma
