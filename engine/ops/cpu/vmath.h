// Vectorisable float math for the fast CPU ops: plain, branch-free code that the compiler turns
// into SIMD loops at any x86-64 level (SSE2 upwards), unlike std::exp, whose errno contract keeps
// loops scalar.
#pragma once

#include <bit>
#include <cstdint>

// Function multiversioning: a function marked KD_SIMD_CLONES is compiled twice, for the x86-64
// baseline (SSE2) and for AVX2, and the loader picks the one the CPU runs (no -march flag, so the
// binaries still run anywhere). Loops inside it, and the vexp calls they inline, then use 8-wide
// vectors where the CPU has them. The choice is fixed per machine: the same bits run after run.
// Put it on functions without OpenMP regions of their own (GCC outlines those without the target).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KD_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KD_SIMD_CLONES
#endif

namespace kd::cpu {

// e^x for x in float range, within 2 ulp of std::exp for x in [-87, 88]; inputs below -87.3 give
// about 1e-38 (not 0) and inputs above 88.37 give about 2.4e38 (not inf). Range reduction
// x = n ln2 + r (|r| <= ln2/2, ln2 in two parts) and a degree-6 polynomial for e^r (Cephes).
[[gnu::always_inline]] inline float vexp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.37f ? 88.37f : x;
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float shifted = x * 1.44269504088896341f + kMagic;
  const float n = shifted - kMagic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = std::bit_cast<int32_t>(shifted) - std::bit_cast<int32_t>(kMagic);
  return p * std::bit_cast<float>((ni + 127) << 23);
}

// GELU, tanh approximation (GPT-2), with tanh(u) = 1 - 2 / (e^(2u) + 1).
[[gnu::always_inline]] inline float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;  // sqrt(2/pi)
  constexpr float kCubic = 0.044715f;
  const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
  return 0.5f * x * (1.0f + (1.0f - 2.0f / (vexp(2.0f * u) + 1.0f)));
}

}  // namespace kd::cpu
