// Matrix product with bias through cuBLASLt, forward and backward.
//
// Math: out = inp · W + bias (optionally GELU); dinp += dout · W^T; dW += inp^T · dout (InOut) or
// dout^T · inp (OutIn); dbias += sum_n dout[n, :].
//
// Row-major to column-major: cuBLASLt is column-major, and a row-major X [r, c] (ld c) is the
// column-major matrix X^T (c x r, ld c) at the same address. Every product is therefore computed
// transposed, D^T = op(A) op(B) with the operands swapped (m, n, k are cuBLASLt's):
//
//   product          m    n    k    A (stored, op)             B (stored, op)            D (ld)
//   fwd InOut        OC   N    C    W  OC x C  ld OC, N        inp C x N ld C, N         out OC
//   fwd OutIn        OC   N    C    W  C x OC  ld C,  T        inp C x N ld C, N         out OC
//   dinp InOut       C    N    OC   W  OC x C  ld OC, T        dout OC x N ld OC, N      dinp C
//   dinp OutIn       C    N    OC   W  C x OC  ld C,  N        dout OC x N ld OC, N      dinp C
//   dW InOut         OC   C    N    dout OC x N ld OC, N       inp C x N ld C, T         dW OC
//   dW OutIn         C    OC   N    inp C x N ld C, N          dout OC x N ld OC, T      dW C
//
// The bias (length m = OC) of the forward is broadcast along n by CUBLASLT_EPILOGUE_BIAS, i.e.
// added to every row of the row-major output. GELU uses CUBLASLT_EPILOGUE_GELU_AUX(_BIAS), which
// writes the pre-activation (aux, ld OC, must be a multiple of 8) and the activation in one pass.
// dW is fp32: A, B bf16, C = D fp32, compute CUBLAS_COMPUTE_32F, beta = 1 (accumulate). dinp is
// bf16 with beta = 1 (C = D = dinp). dbias is a separate deterministic two-stage column reduction
// (cuBLASLt's BGRAD epilogues overwrite rather than add, and only in D's type).
//
// Work split: cuBLASLt's kernels for the products; the bias reduction runs one block per 64 columns
// x a chunk of rows (32 x 8 threads, partial sums in fp32 stream-ordered scratch), then one thread
// per column adds the chunks in order. FLOPs 2 N C OC per product; bytes about
// 2 (N C + C OC + N OC) per bf16 product plus 4 C OC twice for the fp32 dW read-modify-write.
#include <cublasLt.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "cuda/gelu.cuh"
#include "cuda/matmul.cuh"

namespace kd::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

// ---- bias gradient
// -----------------------------------------------------------------------------------

constexpr int kBiasCols = 64;  // columns per block (32 threads x 2)
constexpr int kBiasRowThreads = 8;

// partial[chunk, col] = sum of dout[r, col] over the rows of the chunk (fixed order).
__global__ void bias_partial_kernel(float* __restrict__ partial, const bf16* __restrict__ dout,
                                    int N, int OC, int rows_per_chunk) {
  __shared__ float red[kBiasRowThreads][kBiasCols];
  const int col = blockIdx.x * kBiasCols + threadIdx.x * 2;
  const int r0 = blockIdx.y * rows_per_chunk;
  const int r1 = min(N, r0 + rows_per_chunk);
  float a0 = 0.0f, a1 = 0.0f;
  for (int r = r0 + threadIdx.y; r < r1; r += kBiasRowThreads) {
    const bf16* row = dout + static_cast<size_t>(r) * OC;
    if (col < OC) a0 += __bfloat162float(row[col]);
    if (col + 1 < OC) a1 += __bfloat162float(row[col + 1]);
  }
  red[threadIdx.y][threadIdx.x * 2] = a0;
  red[threadIdx.y][threadIdx.x * 2 + 1] = a1;
  __syncthreads();
  if (threadIdx.y == 0) {
    for (int y = 1; y < kBiasRowThreads; ++y) {
      a0 += red[y][threadIdx.x * 2];
      a1 += red[y][threadIdx.x * 2 + 1];
    }
    float* out = partial + static_cast<size_t>(blockIdx.y) * OC;
    if (col < OC) out[col] = a0;
    if (col + 1 < OC) out[col + 1] = a1;
  }
}

// dbias[col] += sum over chunks of partial[chunk, col], chunks in order.
__global__ void bias_finish_kernel(float* __restrict__ dbias, const float* __restrict__ partial,
                                   int OC, int chunks) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= OC) return;
  float s = 0.0f;
  for (int c = 0; c < chunks; ++c) s += partial[static_cast<size_t>(c) * OC + col];
  dbias[col] += s;
}

// ---- the cuBLASLt context
// ----------------------------------------------------------------------------

// Largest power of two (at most 256) dividing the address; 256 for null.
uint32_t alignment_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  const uintptr_t low = a & (~a + 1);
  return static_cast<uint32_t>(std::min<uintptr_t>(low, 256));
}

// One product in cuBLASLt's column-major terms: D (m x n) = op(A) op(B) [+ beta C, C = D].
struct Gemm {
  int m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  const bf16* a = nullptr;
  int64_t lda = 0;
  const bf16* b = nullptr;
  int64_t ldb = 0;
  void* d = nullptr;
  int64_t ldd = 0;
  bool d_fp32 = false;
  float beta = 0.0f;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const bf16* bias = nullptr;
  bf16* aux = nullptr;
  int64_t aux_ld = 0;
};

// No padding bytes (the key is hashed and compared as raw bytes).
struct PlanKey {
  int64_t lda, ldb, ldd, aux_ld;
  int32_t m, n, k;
  int32_t trans_a, trans_b;
  int32_t d_fp32, beta_nonzero;
  int32_t epilogue;
  uint32_t align_a, align_b, align_d, align_bias, align_aux;
  uint32_t unused;
  bool operator==(const PlanKey& o) const { return std::memcmp(this, &o, sizeof(PlanKey)) == 0; }
};
static_assert(std::has_unique_object_representations_v<PlanKey>, "PlanKey must have no padding");
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&k);
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the bytes
    for (size_t i = 0; i < sizeof(PlanKey); ++i) h = (h ^ p[i]) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

PlanKey make_key(const Gemm& g) {
  PlanKey k;
  std::memset(&k, 0, sizeof(k));
  k.m = g.m;
  k.n = g.n;
  k.k = g.k;
  k.trans_a = g.trans_a;
  k.trans_b = g.trans_b;
  k.lda = g.lda;
  k.ldb = g.ldb;
  k.ldd = g.ldd;
  k.aux_ld = g.aux_ld;
  k.d_fp32 = g.d_fp32;
  k.beta_nonzero = g.beta != 0.0f;
  k.epilogue = static_cast<int>(g.epilogue);
  k.align_a = alignment_of(g.a);
  k.align_b = alignment_of(g.b);
  k.align_d = alignment_of(g.d);
  k.align_bias = alignment_of(g.bias);
  k.align_aux = alignment_of(g.aux);
  return k;
}

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// One per device, created on first use and deliberately never destroyed (process exit reclaims it;
// destroying it from a static destructor would race the CUDA runtime's own teardown).
class Context {
 public:
  Context() {
    KD_CUDA_CHECK(cublasLtCreate(&handle_));
    KD_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  }

  // Issues the product on `stream`. Thread-safe (descriptors are shared and mutated per call).
  void run(const Gemm& g, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    Plan& p = plan_for(g);
    set_pointers(p, g);
    const float alpha = 1.0f;
    KD_CUDA_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, g.a, p.la, g.b, p.lb, &g.beta, g.d, p.ld,
                                 g.d, p.ld, &p.algo, workspace_, kWorkspaceBytes, stream));
    ++calls_;
  }

  MatmulStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    MatmulStats s;
    s.plans = plans_.size();
    s.calls = calls_;
    s.workspace_bytes = kWorkspaceBytes;
    return s;
  }

 private:
  static cublasLtMatrixLayout_t layout(cudaDataType_t type, int rows, int cols, int64_t ld) {
    cublasLtMatrixLayout_t l = nullptr;
    KD_CUDA_CHECK(cublasLtMatrixLayoutCreate(&l, type, rows, cols, ld));
    return l;
  }

  static void set_pointers(Plan& p, const Gemm& g) {
    if (g.bias != nullptr) {
      const void* bias = g.bias;
      KD_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                   sizeof(bias)));
    }
    if (g.aux != nullptr) {
      void* aux = g.aux;
      KD_CUDA_CHECK(cublasLtMatmulDescSetAttribute(
          p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
    }
  }

  Plan& plan_for(const Gemm& g) {
    const PlanKey key = make_key(g);
    auto it = plans_.find(key);
    if (it != plans_.end()) return it->second;

    Plan p;
    KD_CUDA_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const int32_t ta = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int32_t tb = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    KD_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    KD_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    const uint32_t epi = static_cast<uint32_t>(g.epilogue);
    KD_CUDA_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    if (g.aux != nullptr) {
      const int64_t aux_ld = g.aux_ld;
      KD_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                   &aux_ld, sizeof(aux_ld)));
    }
    set_pointers(p, g);  // the heuristic reads the bias/aux pointers' alignment

    // Stored shapes: op(A) is m x k, op(B) is k x n.
    p.la = g.trans_a ? layout(CUDA_R_16BF, g.k, g.m, g.lda) : layout(CUDA_R_16BF, g.m, g.k, g.lda);
    p.lb = g.trans_b ? layout(CUDA_R_16BF, g.n, g.k, g.ldb) : layout(CUDA_R_16BF, g.k, g.n, g.ldb);
    p.ld = layout(g.d_fp32 ? CUDA_R_32F : CUDA_R_16BF, g.m, g.n, g.ldd);

    cublasLtMatmulPreference_t pref = nullptr;
    KD_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const uint64_t ws = kWorkspaceBytes;
    KD_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    const uint32_t aligns[4] = {key.align_a, key.align_b, key.align_d, key.align_d};
    const cublasLtMatmulPreferenceAttributes_t attrs[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; ++i)
      KD_CUDA_CHECK(
          cublasLtMatmulPreferenceSetAttribute(pref, attrs[i], &aligns[i], sizeof(aligns[i])));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.la, p.lb, p.ld,
                                                             p.ld, pref, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS || found == 0) {
      cublasLtMatrixLayoutDestroy(p.la);
      cublasLtMatrixLayoutDestroy(p.lb);
      cublasLtMatrixLayoutDestroy(p.ld);
      cublasLtMatmulDescDestroy(p.desc);
      throw CudaError(
          "cuBLASLt: no algorithm for m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
          " k=" + std::to_string(g.k) + " epilogue=" + std::to_string(epi) +
          (g.d_fp32 ? " (fp32 output)" : " (bf16 output)") + " status=" + std::to_string(st));
    }
    p.algo = result.algo;
    return plans_.emplace(key, p).first->second;
  }

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t calls_ = 0;
  std::unordered_map<PlanKey, Plan, PlanKeyHash> plans_;
  std::mutex mu_;
};

Context& context() {
  static std::mutex mu;
  static std::unordered_map<int, Context*> contexts;
  int device = 0;
  KD_CUDA_CHECK(cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mu);
  Context*& c = contexts[device];
  if (c == nullptr) c = new Context();  // on the current device
  return *c;
}

void check_shape(int N, int C, int OC, const char* op) {
  KD_REQUIRE(N >= 0 && C >= 0 && OC >= 0,
             std::string(op) + ": negative size N=" + std::to_string(N) +
                 " C=" + std::to_string(C) + " OC=" + std::to_string(OC));
}

}  // namespace

void matmul_forward(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int N, int C,
                    int OC, Layout layout, bool gelu_epilogue, bf16* pre_gelu,
                    cudaStream_t stream) {
  check_shape(N, C, OC, "matmul_forward");
  KD_REQUIRE(!gelu_epilogue || pre_gelu != nullptr, "matmul_forward: gelu_epilogue needs pre_gelu");
  if (N == 0 || OC == 0) return;
  KD_REQUIRE(C != 0, "matmul_forward: C = 0 is not supported on the GPU");
  const bool in_out = layout == Layout::InOut;
  // The fused GELU needs the aux leading dimension (OC) a multiple of 8; otherwise the product
  // writes pre_gelu and a separate pass applies GELU.
  const bool fused_gelu = gelu_epilogue && OC % 8 == 0;

  Gemm g;
  g.m = OC;
  g.n = N;
  g.k = C;
  g.trans_a = !in_out;
  g.a = weight;
  g.lda = in_out ? OC : C;
  g.b = inp;
  g.ldb = C;
  g.d = (gelu_epilogue && !fused_gelu) ? pre_gelu : out;
  g.ldd = OC;
  g.bias = bias;
  if (fused_gelu) {
    g.epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    g.aux = pre_gelu;
    g.aux_ld = OC;
  } else {
    g.epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  }
  context().run(g, stream);
  if (gelu_epilogue && !fused_gelu)
    gelu_forward(out, pre_gelu, static_cast<size_t>(N) * OC, stream);
}

void matmul_backward(bf16* dinp, float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* weight, int N, int C, int OC, Layout layout, cudaStream_t stream,
                     bool accumulate_dinp) {
  check_shape(N, C, OC, "matmul_backward");
  if (N == 0 || C == 0 || OC == 0) return;
  const bool in_out = layout == Layout::InOut;
  Context& ctx = context();

  if (dinp != nullptr) {
    Gemm g;
    g.m = C;
    g.n = N;
    g.k = OC;
    g.trans_a = in_out;
    g.a = weight;
    g.lda = in_out ? OC : C;
    g.b = dout;
    g.ldb = OC;
    g.d = dinp;
    g.ldd = C;
    g.beta = accumulate_dinp ? 1.0f : 0.0f;
    ctx.run(g, stream);
  }
  if (dweight != nullptr) {
    Gemm g;
    g.k = N;
    g.d = dweight;
    g.d_fp32 = true;
    g.beta = 1.0f;
    if (in_out) {  // dW^T (OC x C) = dout^T (OC x N) · inp (N x C)
      g.m = OC;
      g.n = C;
      g.a = dout;
      g.lda = OC;
      g.b = inp;
      g.ldb = C;
      g.trans_b = true;
      g.ldd = OC;
    } else {  // dW^T (C x OC) = inp^T (C x N) · dout (N x OC)
      g.m = C;
      g.n = OC;
      g.a = inp;
      g.lda = C;
      g.b = dout;
      g.ldb = OC;
      g.trans_b = true;
      g.ldd = C;
    }
    ctx.run(g, stream);
  }
  if (dbias != nullptr) {
    const int col_blocks = ceil_div(OC, kBiasCols);
    // Enough chunks of rows for about 1024 blocks, each chunk at least 32 rows.
    const int max_chunks = ceil_div(N, 32);
    const int chunks = std::max(1, std::min(ceil_div(1024, col_blocks), max_chunks));
    const int rows_per_chunk = ceil_div(N, chunks);
    const int used_chunks = ceil_div(N, rows_per_chunk);
    // Stream-ordered scratch (cached by the pool after the first step): no device synchronisation,
    // and concurrent streams never share it.
    StreamScratch partial(sizeof(float) * static_cast<size_t>(used_chunks) * OC, stream);
    bias_partial_kernel<<<dim3(col_blocks, used_chunks), dim3(32, kBiasRowThreads), 0, stream>>>(
        partial.as<float>(), dout, N, OC, rows_per_chunk);
    KD_CUDA_CHECK(cudaGetLastError());
    bias_finish_kernel<<<ceil_div(OC, 256), 256, 0, stream>>>(dbias, partial.as<float>(), OC,
                                                              used_chunks);
    KD_CUDA_CHECK(cudaGetLastError());
  }
}

MatmulStats matmul_stats() {
  return context().stats();
}

}  // namespace kd::cuda
