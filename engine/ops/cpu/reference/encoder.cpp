// Token + position embedding: the plain reference of the CPU op (tests only). Math:
// docs/ops/encoder.md.
#include <string>

#include "engine/base/error.h"
#include "engine/ops/cpu/reference/ops_ref.h"

namespace kd::cpu::ref {

namespace {

// Channels handled together by one thread in the backward: wide enough for contiguous inner loops,
// narrow enough to spread C = 768 over many threads.
constexpr int kChannelBlock = 32;

void check_tokens(const int32_t* tokens, int B, int T, const char* op) {
  for (int i = 0; i < B * T; ++i) {
    KD_REQUIRE(tokens[i] >= 0, std::string(op) + ": token " + std::to_string(tokens[i]) +
                                   " at position " + std::to_string(i) +
                                   " is negative; expected an id in [0, vocab)");
  }
}

}  // namespace

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C) {
  check_tokens(tokens, B, T, "encoder_forward");
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; ++bt) {
    const int t = bt % T;
    const float* tok_row = wte + static_cast<size_t>(tokens[bt]) * C;
    const float* pos_row = wpe + static_cast<size_t>(t) * C;
    float* out_row = out + static_cast<size_t>(bt) * C;
    for (int c = 0; c < C; ++c) out_row[c] = tok_row[c] + pos_row[c];
  }
}

void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C) {
  check_tokens(tokens, B, T, "encoder_backward");
  // A token may repeat, so rows of dwte receive several contributions. Each thread owns a block of
  // channels and walks every (b, t) in order: the sums are the same whatever the thread count.
  const int blocks = (C + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < blocks; ++blk) {
    const int c0 = blk * kChannelBlock;
    const int c1 = c0 + kChannelBlock < C ? c0 + kChannelBlock : C;
    for (int b = 0; b < B; ++b) {
      for (int t = 0; t < T; ++t) {
        const size_t bt = static_cast<size_t>(b) * T + t;
        const float* g = dout + bt * C;
        float* tok_row = dwte + static_cast<size_t>(tokens[bt]) * C;
        float* pos_row = dwpe + static_cast<size_t>(t) * C;
        for (int c = c0; c < c1; ++c) {
          tok_row[c] += g[c];
          pos_row[c] += g[c];
        }
      }
    }
  }
}

}  // namespace kd::cpu::ref
