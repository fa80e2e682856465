// Exact widening of IEEE half (f16) and bfloat16 bit patterns to f32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "moe_router.h"

namespace moe {

inline float bits_to_f32(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float bf16_to_f32(uint16_t h) { return bits_to_f32(static_cast<uint32_t>(h) << 16); }

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_f32(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent != 0) return bits_to_f32(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Zero or subnormal: mantissa * 2^-24, exact in f32.
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  return sign ? -magnitude : magnitude;
}

// Widens one row of `n` elements of the given dtype (raw bits for f16/bf16) into f32.
inline void widen_row(const void* src, moe_dtype dtype, int64_t n, float* dst) {
  if (dtype == MOE_DTYPE_F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const uint16_t* h = static_cast<const uint16_t*>(src);
  if (dtype == MOE_DTYPE_F16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
  }
}

inline size_t dtype_size(moe_dtype dtype) { return dtype == MOE_DTYPE_F32 ? 4 : 2; }

}  // namespace moe
