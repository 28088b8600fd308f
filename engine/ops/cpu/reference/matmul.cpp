// Matrix product with bias, reference: plain loops accumulated in double. Math: docs/ops/matmul.md.
#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

namespace {

// W[c, o] in either layout.
float weight_at(const float* w, int c, int o, int C, int OC, Layout layout) {
  return layout == Layout::InOut ? w[static_cast<size_t>(c) * OC + o]
                                 : w[static_cast<size_t>(o) * C + c];
}

}  // namespace

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int C, int OC, Layout layout) {
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double acc = bias != nullptr ? bias[o] : 0.0;
      for (int c = 0; c < C; ++c)
        acc += double(inp[static_cast<size_t>(n) * C + c]) * weight_at(weight, c, o, C, OC, layout);
      out[static_cast<size_t>(n) * OC + o] = static_cast<float>(acc);
    }
  }
}

void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int C, int OC, Layout layout) {
  if (dinp != nullptr) {
    for (int n = 0; n < N; ++n) {
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int o = 0; o < OC; ++o)
          acc += double(dout[static_cast<size_t>(n) * OC + o]) *
                 weight_at(weight, c, o, C, OC, layout);
        dinp[static_cast<size_t>(n) * C + c] += static_cast<float>(acc);
      }
    }
  }
  if (dweight != nullptr) {
    for (int c = 0; c < C; ++c) {
      for (int o = 0; o < OC; ++o) {
        double acc = 0.0;
        for (int n = 0; n < N; ++n)
          acc +=
              double(inp[static_cast<size_t>(n) * C + c]) * dout[static_cast<size_t>(n) * OC + o];
        const size_t at = layout == Layout::InOut ? static_cast<size_t>(c) * OC + o
                                                  : static_cast<size_t>(o) * C + c;
        dweight[at] += static_cast<float>(acc);
      }
    }
  }
  if (dbias != nullptr) {
    for (int o = 0; o < OC; ++o) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += dout[static_cast<size_t>(n) * OC + o];
      dbias[o] += static_cast<float>(acc);
    }
  }
}

}  // namespace kd::cpu::ref
