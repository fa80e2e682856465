// moe_hash128: a fast 128-bit content hash for cache keys (not cryptographic). Four independent
// 64-bit multiply-rotate lanes over 32-byte blocks keep the CPU's multipliers busy, so a miss in the
// routing cache costs a small fraction of a route; every byte and the length reach the result.
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

}  // namespace

extern "C" void moe_hash128(const void* data, size_t bytes, uint64_t seed, uint64_t out[2]) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {seed + kPrime1 + kPrime2, seed + kPrime2, seed, seed - kPrime1};
  size_t i = 0;
  for (; i + 32 <= bytes; i += 32)
    for (int l = 0; l < 4; ++l) lane[l] = round(lane[l], load64(p + i + 8 * l));
  for (int l = 0; i + 8 <= bytes; i += 8, ++l) lane[l & 3] = round(lane[l & 3], load64(p + i));
  if (i < bytes) {
    uint64_t tail = 0;
    std::memcpy(&tail, p + i, bytes - i);
    lane[3] = round(lane[3], tail ^ kPrime4);
  }
  const uint64_t length = static_cast<uint64_t>(bytes);
  const uint64_t a = rotl(lane[0], 1) + rotl(lane[1], 7) + rotl(lane[2], 12) + rotl(lane[3], 18);
  const uint64_t b = rotl(lane[0], 29) ^ rotl(lane[1], 37) ^ rotl(lane[2], 43) ^ rotl(lane[3], 53);
  out[0] = mix(a ^ length * kPrime3);
  out[1] = mix(b + out[0] + length * kPrime4);
}
