// Vectorisable float math for the fast CPU ops: plain, branch-free code that the compiler turns
// into SIMD loops at any x86-64 level (SSE2 upwards), unlike std::exp, whose errno contract keeps
// loops scalar.
#pragma once

#include <bit>
#include <cstdint>

namespace kd::cpu {

// e^x for x in float range, within 2 ulp of std::exp for x in [-87, 88]; inputs below -87.3 give
// about 1e-38 (not 0) and inputs above 88.37 give about 2.4e38 (not inf). Range reduction
// x = n ln2 + r (|r| <= ln2/2, ln2 in two parts) and a degree-6 polynomial for e^r (Cephes).
inline float vexp(float x) {
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

}  // namespace kd::cpu
