// Scratch vectors of the CPU backends and the assignment stage: grown to the largest call seen and
// reused, so that a call allocates nothing once its router has run a batch of that size.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace moe {

// v grown to at least n entries (never shrunk); its storage.
template <typename T>
T* grown(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

// v grown to at least n entries, the first n zero; its storage. (A memset: std::vector::assign(n, 0)
// stored one entry at a time, ~2 us a call in the five E-sized counters of E = 1024.) n = 0 leaves
// an empty vector's storage null, which memset may not take even for no bytes.
template <typename T>
T* zeroed(std::vector<T>& v, int64_t n) {
  static_assert(std::is_arithmetic_v<T>, "all-zero bytes are zero");
  T* p = grown(v, n);
  if (n > 0) std::memset(p, 0, static_cast<size_t>(n) * sizeof(T));
  return p;
}

// The bytes the vectors hold (their capacities): what a router reports of its memory
// (moe_router_host_bytes).
template <typename... T>
int64_t capacity_bytes(const std::vector<T>&... v) {
  return (int64_t{0} + ... + static_cast<int64_t>(v.capacity() * sizeof(T)));
}

}  // namespace moe
