// moe_hash128: a fast 128-bit content hash for cache keys (not cryptographic). Sixteen independent
// 64-bit multiply-rotate lanes over 128-byte stripes, each lane a chain that depends on the order of
// its words; the stripe loop is compiled for x86-64-v4 (8 lanes a vpmullq), x86-64-v3 and the
// baseline, chosen at load time, all computing the same function. Every byte and the length reach
// the result.
#include <cstring>

#include "moe_router.h"

namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull;
constexpr uint64_t kPrime2 = 0xC2B2AE3D27D4EB4Full;
constexpr uint64_t kPrime3 = 0x165667B19E3779F9ull;
constexpr uint64_t kPrime4 = 0x85EBCA77C2B2AE63ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline uint64_t round(uint64_t lane, uint64_t word) { return rotl(lane + word * kPrime2, 31) * kPrime1; }

// Final avalanche: every input bit flips each output bit with probability close to 1/2.
inline uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xFF51AFD7ED558CCDull;
  x ^= x >> 33;
  x *= 0xC4CEB9FE1A85EC53ull;
  x ^= x >> 33;
  return x;
}

constexpr int kLanes = 16;
constexpr size_t kStripe = 8 * kLanes;

// The whole stripes of p[0, bytes) into lane[]; returns the bytes consumed. One 64-bit multiply-
// rotate chain per lane: 4 instructions per lane per stripe, 16 chains so that the multiplier's
// latency is hidden.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
size_t stripes(const unsigned char* p, size_t bytes, uint64_t* lane) {
  uint64_t acc[kLanes];
  std::memcpy(acc, lane, sizeof acc);
  size_t i = 0;
  for (; i + kStripe <= bytes; i += kStripe)
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; ++l) acc[l] = round(acc[l], load64(p + i + 8 * l));
  std::memcpy(lane, acc, sizeof acc);
  return i;
}

}  // namespace

extern "C" void moe_hash128(const void* data, size_t bytes, uint64_t seed, uint64_t out[2]) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t lane[kLanes];
  for (int l = 0; l < kLanes; ++l) lane[l] = seed + kPrime1 * static_cast<uint64_t>(l + 1) + kPrime2;
  size_t i = stripes(p, bytes, lane);
  for (int l = 0; i + 8 <= bytes; i += 8, ++l) lane[l] = round(lane[l], load64(p + i));
  if (i < bytes) {
    uint64_t tail = 0;
    std::memcpy(&tail, p + i, bytes - i);
    lane[kLanes - 1] = round(lane[kLanes - 1], tail ^ kPrime4);
  }
  const uint64_t length = static_cast<uint64_t>(bytes);
  uint64_t a = length * kPrime3, b = length * kPrime4;
  for (int l = 0; l < kLanes; ++l) {
    a = rotl(a, 23) ^ mix(lane[l] + static_cast<uint64_t>(l));
    b = b * kPrime1 + rotl(lane[l], 1 + 4 * l);
  }
  out[0] = mix(a);
  out[1] = mix(b + out[0]);
}
