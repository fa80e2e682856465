// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and the one
// normal draw per (seed, step, token, expert) that the routing noise uses; docs/semantics.md §8.
// Every backend draws through these functions: the CUDA kernels include this header too (the functions
// are __host__ __device__ there), so the Philox words agree bit for bit everywhere.
#pragma once

#include <math.h>

#include <cstdint>

#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe {

struct Philox4 {
  uint32_t v[4];
};

MOE_HOST_DEVICE inline Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t x0 = counter.v[0], x1 = counter.v[1], x2 = counter.v[2], x3 = counter.v[3];
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(kMul0) * x0;
    const uint64_t p1 = static_cast<uint64_t>(kMul1) * x2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    x0 = hi1 ^ x1 ^ key0;
    x1 = lo1;
    x2 = hi0 ^ x3 ^ key1;
    x3 = lo0;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return Philox4{{x0, x1, x2, x3}};
}

// The standard normal draw n(step, t, e) of docs/semantics.md §8, rounded to f32. The host C library's
// and CUDA's double sqrt/log/cos may differ in the last bits of a double; that changes the f32 result
// only when the value lies within a few double ulps of an f32 rounding midpoint (about one draw in 10^8).
MOE_HOST_DEVICE inline float routing_normal(uint64_t seed, uint64_t step, uint32_t token, uint32_t expert) {
  const Philox4 r = philox4x32_10(
      Philox4{{expert, token, static_cast<uint32_t>(step), static_cast<uint32_t>(step >> 32)}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double a = (static_cast<double>(r.v[0]) + 0.5) / 4294967296.0;
  const double b = (static_cast<double>(r.v[1]) + 0.5) / 4294967296.0;
  return static_cast<float>(::sqrt(-2.0 * ::log(a)) * ::cos(2.0 * M_PI * b));
}

}  // namespace moe
