// The cuBLASLt calls the project makes, as a plain reference implementation for the emulated build.
// It implements cuBLASLt's documented semantics, not its kernels:
//   D = alpha op(A) op(B) + beta C, column-major, op = N or T per CUBLASLT_MATMUL_DESC_TRANSA/B;
//   epilogues DEFAULT, BIAS (bias[m] added to every column), GELU_AUX and GELU_AUX_BIAS (aux gets
//   the pre-activation, D = gelu(aux) with the tanh approximation);
//   A, B bf16; C = D bf16 or fp32; compute and scale fp32; products accumulated in fp32 (by
//   OpenBLAS's sgemm on fp32 copies of the operands).
// It refuses, as cuBLASLt does, layouts that do not match (m, n, k), leading dimensions below the
// row count, an aux leading dimension that is not a multiple of 8, and operand ranges outside a
// device buffer. What it cannot tell: which algorithm cuBLASLt picks, its rounding order, and
// whether cuBLASLt's own GELU epilogue uses the tanh formula.
#include <cblas.h>
#include <cublasLt.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "tools/kdemu/emu_internal.h"

namespace {

struct Desc {
  int32_t trans_a = CUBLAS_OP_N, trans_b = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

struct Layout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};

cublasStatus_t refuse(const char* why) {
  std::fprintf(stderr, "kdemu cuBLASLt: %s\n", why);
  return CUBLAS_STATUS_NOT_SUPPORTED;
}

float bf16_to_float(const void* p, size_t i) {
  uint16_t b;
  std::memcpy(&b, static_cast<const unsigned char*>(p) + 2 * i, 2);
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

void store(void* p, size_t i, float v, bool fp32) {
  if (fp32) {
    static_cast<float*>(p)[i] = v;
  } else {
    const __nv_bfloat16 b = __float2bfloat16(v);
    std::memcpy(static_cast<unsigned char*>(p) + 2 * i, &b, 2);
  }
}
float load(const void* p, size_t i, bool fp32) {
  return fp32 ? static_cast<const float*>(p)[i] : bf16_to_float(p, i);
}

float gelu(float x) {
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.0f + std::tanh(u));
}

// Checks the descriptors against each other; fills m, n, k.
cublasStatus_t validate(const Desc& d, const Layout& a, const Layout& b, const Layout& c,
                        const Layout& dl, uint64_t& m, uint64_t& n, uint64_t& k) {
  if (a.type != CUDA_R_16BF || b.type != CUDA_R_16BF) return refuse("A and B must be bf16");
  if (dl.type != CUDA_R_16BF && dl.type != CUDA_R_32F) return refuse("D must be bf16 or fp32");
  if (c.type != dl.type || c.rows != dl.rows || c.cols != dl.cols || c.ld != dl.ld)
    return refuse("C and D layouts differ (the project always passes C = D)");
  m = dl.rows;
  n = dl.cols;
  const uint64_t am = d.trans_a == CUBLAS_OP_N ? a.rows : a.cols;
  k = d.trans_a == CUBLAS_OP_N ? a.cols : a.rows;
  const uint64_t bk = d.trans_b == CUBLAS_OP_N ? b.rows : b.cols;
  const uint64_t bn = d.trans_b == CUBLAS_OP_N ? b.cols : b.rows;
  if (am != m || bn != n || bk != k) return refuse("op(A) op(B) does not match D's shape");
  for (const Layout* l : {&a, &b, &dl})
    if (l->ld < static_cast<int64_t>(l->rows) || l->ld < 1)
      return refuse("leading dimension below the row count");
  const bool aux =
      d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool bias =
      d.epilogue == CUBLASLT_EPILOGUE_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  if (!aux && !bias && d.epilogue != CUBLASLT_EPILOGUE_DEFAULT)
    return refuse("epilogue not implemented by the reference");
  if (aux && (d.aux_ld % 8 != 0 || d.aux_ld < static_cast<int64_t>(m)))
    return refuse("GELU_AUX needs an aux leading dimension >= m and a multiple of 8");
  if (aux && dl.type != CUDA_R_16BF) return refuse("GELU_AUX with an fp32 output");
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  static char dummy;
  *handle = reinterpret_cast<cublasLtHandle_t>(&dummy);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (compute != CUBLAS_COMPUTE_32F || scale != CUDA_R_32F)
    return refuse("only fp32 compute and scale are implemented");
  *desc = reinterpret_cast<cublasLtMatmulDesc_t>(new Desc());
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete reinterpret_cast<Desc*>(desc);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                              cublasLtMatmulDescAttributes_t attr, const void* buf,
                                              size_t size) {
  Desc* d = reinterpret_cast<Desc*>(desc);
  auto take = [&](void* dst, size_t want) {
    if (size != want) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(dst, buf, want);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
      return take(&d->trans_a, sizeof(d->trans_a));
    case CUBLASLT_MATMUL_DESC_TRANSB:
      return take(&d->trans_b, sizeof(d->trans_b));
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
      return take(&d->epilogue, sizeof(d->epilogue));
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
      return take(&d->bias, sizeof(d->bias));
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
      return take(&d->aux, sizeof(d->aux));
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
      return take(&d->aux_ld, sizeof(d->aux_ld));
    default:
      return refuse("descriptor attribute not implemented by the reference");
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
  *layout = reinterpret_cast<cublasLtMatrixLayout_t>(new Layout{type, rows, cols, ld});
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete reinterpret_cast<Layout*>(layout);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  *pref = reinterpret_cast<cublasLtMatmulPreference_t>(new char(0));
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  delete reinterpret_cast<char*>(pref);
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t,
                                                    cublasLtMatmulPreferenceAttributes_t,
                                                    const void* buf, size_t) {
  return buf != nullptr ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t, int requested,
                                              cublasLtMatmulHeuristicResult_t* results,
                                              int* found) {
  uint64_t m, n, k;
  const cublasStatus_t st = validate(*reinterpret_cast<Desc*>(desc), *reinterpret_cast<Layout*>(a),
                                     *reinterpret_cast<Layout*>(b), *reinterpret_cast<Layout*>(c),
                                     *reinterpret_cast<Layout*>(d), m, n, k);
  *found = 0;
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (requested < 1) return CUBLAS_STATUS_INVALID_VALUE;
  std::memset(&results[0], 0, sizeof(results[0]));
  results[0].state = CUBLAS_STATUS_SUCCESS;
  *found = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t, cublasLtMatmulDesc_t desc, const void* alpha_p,
                              const void* A, cublasLtMatrixLayout_t a_desc, const void* B,
                              cublasLtMatrixLayout_t b_desc, const void* beta_p, const void* C,
                              cublasLtMatrixLayout_t c_desc, void* D, cublasLtMatrixLayout_t d_desc,
                              const cublasLtMatmulAlgo_t*, void*, size_t, cudaStream_t) {
  const Desc& d = *reinterpret_cast<Desc*>(desc);
  const Layout& la = *reinterpret_cast<Layout*>(a_desc);
  const Layout& lb = *reinterpret_cast<Layout*>(b_desc);
  const Layout& lc = *reinterpret_cast<Layout*>(c_desc);
  const Layout& ld = *reinterpret_cast<Layout*>(d_desc);
  uint64_t m, n, k;
  if (cublasStatus_t st = validate(d, la, lb, lc, ld, m, n, k); st != CUBLAS_STATUS_SUCCESS)
    return st;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const bool fp32 = ld.type == CUDA_R_32F;
  const size_t esize = fp32 ? 4 : 2;
  auto extent = [](const Layout& l, size_t e) { return ((l.cols - 1) * l.ld + l.rows) * e; };
  if (!emu::is_device_range(A, extent(la, 2)) || !emu::is_device_range(B, extent(lb, 2)) ||
      !emu::is_device_range(D, extent(ld, esize)) || (C != D && C != nullptr))
    return refuse("an operand range is outside its device buffer (or C is not D)");
  const bool has_aux =
      d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  const bool has_bias =
      d.epilogue == CUBLASLT_EPILOGUE_BIAS || d.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  if (has_bias && !emu::is_device_range(d.bias, m * 2)) return refuse("bias outside a buffer");
  if (has_aux && !emu::is_device_range(d.aux, ((n - 1) * d.aux_ld + m) * 2))
    return refuse("aux outside a buffer");
  const float alpha = *static_cast<const float*>(alpha_p);
  const float beta = *static_cast<const float*>(beta_p);

  // op(A)[i][p] and op(B)[p][j] as fp32 copies, then column-by-column products.
  std::vector<float> a(m * k), b(k * n);
  for (uint64_t i = 0; i < m; ++i)
    for (uint64_t p = 0; p < k; ++p)
      a[i * k + p] = d.trans_a == CUBLAS_OP_N ? bf16_to_float(A, p * la.ld + i)
                                              : bf16_to_float(A, i * la.ld + p);
  for (uint64_t p = 0; p < k; ++p)
    for (uint64_t j = 0; j < n; ++j)
      b[j * k + p] = d.trans_b == CUBLAS_OP_N ? bf16_to_float(B, j * lb.ld + p)
                                              : bf16_to_float(B, p * lb.ld + j);
  // prod[j][i] = sum_p a[i][p] b[j][p], by OpenBLAS (fp32 accumulation, as cuBLASLt's compute
  // type).
  std::vector<float> prod(n * m);
  if (k > 0)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n), static_cast<int>(m),
                static_cast<int>(k), 1.0f, b.data(), static_cast<int>(k), a.data(),
                static_cast<int>(k), 0.0f, prod.data(), static_cast<int>(m));
  for (uint64_t j = 0; j < n; ++j) {
    for (uint64_t i = 0; i < m; ++i) {
      const float s = prod[j * m + i];
      const size_t at = j * ld.ld + i;
      float v = alpha * s + (beta != 0.0f ? beta * load(D, at, fp32) : 0.0f);
      if (has_bias) v += bf16_to_float(d.bias, i);
      if (has_aux) {
        store(d.aux, j * d.aux_ld + i, v, false);
        v = gelu(v);
      }
      store(D, at, v, fp32);
    }
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
