// Per-row routing math on the device, the twin of core/row_select.cc and of the per-token rules of
// core/assign.cc: the teams of threads that route one row, their reductions, group masking, selection
// in key order, k_t and the slot weights.
//
// Determinism: every reduction has a fixed shape (a butterfly inside a warp, then the warps in index
// order), so the same input gives the same bits on every run, and every thread of a team gets the same
// value. Selection uses a total order (descending key, then the lower index), so its result does not
// depend on the reduction shape at all.
#pragma once

#include <math.h>

#include <cstdint>

#include "moe_router.h"
#include "params.cuh"

namespace moe::cuda {

constexpr unsigned kAllLanes = 0xffffffffu;
constexpr int kNone = 0x7fffffff;  // "no element" in an (key, index) pair

// (k1, i1) comes before (k2, i2) in key order.
__device__ __forceinline__ bool precedes(float k1, int i1, float k2, int i2) {
  return k1 > k2 || (k1 == k2 && i1 < i2);
}

// A team of kWidth consecutive lanes of one warp (a power of two, up to 32) that routes one row. Every
// lane of the warp must make the same collective calls, whatever row its team has.
template <int kWidth_>
struct WarpTeam {
  static constexpr int kWidth = kWidth_;
  static constexpr int kPerBlock = kThreads / kWidth;
  int rank;

  __device__ WarpTeam() : rank(static_cast<int>(threadIdx.x) % kWidth) {}
  __device__ int id() const { return static_cast<int>(threadIdx.x) / kWidth; }
  __device__ void sync() const { __syncwarp(); }

  template <class T>
  __device__ T sum(T v) const {
#pragma unroll
    for (int offset = kWidth / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kAllLanes, v, offset, kWidth);
    return v;
  }
  __device__ float max(float v) const {
#pragma unroll
    for (int offset = kWidth / 2; offset > 0; offset /= 2)
      v = fmaxf(v, __shfl_xor_sync(kAllLanes, v, offset, kWidth));
    return v;
  }
  __device__ bool any(bool v) const { return sum(v ? 1 : 0) > 0; }
  // The first (key, index) pair in key order over the team, on every lane.
  __device__ void first(float& key, int& index) const {
#pragma unroll
    for (int offset = kWidth / 2; offset > 0; offset /= 2) {
      const float k = __shfl_xor_sync(kAllLanes, key, offset, kWidth);
      const int i = __shfl_xor_sync(kAllLanes, index, offset, kWidth);
      if (precedes(k, i, key, index)) {
        key = k;
        index = i;
      }
    }
  }
};

// The whole block routes one row (large E). Reductions go through shared memory.
struct BlockTeam {
  static constexpr int kWidth = kThreads;
  static constexpr int kPerBlock = 1;
  static constexpr int kWarps = kThreads / 32;
  int rank;

  __device__ BlockTeam() : rank(static_cast<int>(threadIdx.x)) {}
  __device__ int id() const { return 0; }
  __device__ void sync() const { __syncthreads(); }

  template <class T>
  __device__ T sum(T v) const {
    __shared__ T partial[kWarps];
    v = WarpTeam<32>().sum(v);
    if (rank % 32 == 0) partial[rank / 32] = v;
    __syncthreads();
    T total = partial[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) total += partial[w];
    __syncthreads();
    return total;
  }
  __device__ float max(float v) const {
    __shared__ float partial[kWarps];
    v = WarpTeam<32>().max(v);
    if (rank % 32 == 0) partial[rank / 32] = v;
    __syncthreads();
    float m = partial[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) m = fmaxf(m, partial[w]);
    __syncthreads();
    return m;
  }
  __device__ bool any(bool v) const { return sum(v ? 1 : 0) > 0; }
  __device__ void first(float& key, int& index) const {
    __shared__ float keys[kWarps];
    __shared__ int indices[kWarps];
    WarpTeam<32>().first(key, index);
    if (rank % 32 == 0) {
      keys[rank / 32] = key;
      indices[rank / 32] = index;
    }
    __syncthreads();
    key = keys[0];
    index = indices[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      if (precedes(keys[w], indices[w], key, index)) {
        key = keys[w];
        index = indices[w];
      }
    }
    __syncthreads();
  }
};

// Element q of a thread's register row, with q known only at run time (no local-memory indexing).
template <int kPer>
__device__ __forceinline__ float pick(const float (&v)[kPer], int q) {
  float r = 0.0f;
#pragma unroll
  for (int i = 0; i < kPer; ++i)
    if (i == q) r = v[i];
  return r;
}

// A thread's first element in key order among those whose bit in `skip` is clear. Element q of the
// thread is expert rank + width * q, so a later q has a higher index and wins only with a larger key.
template <int kPer>
__device__ __forceinline__ void local_first(const float (&v)[kPer], uint32_t skip, int rank, int width,
                                            float& key, int& index) {
  key = -INFINITY;
  index = kNone;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    if (((skip >> q) & 1u) == 0 && (index == kNone || v[q] > key)) {
      key = v[q];
      index = rank + width * q;
    }
  }
}

// Takes the row's elements in key order (descending value, ties to the lower index) among those not in
// `skip`, `count` times: for the j-th, the thread that holds it calls emit(j, expert, q). Every thread
// runs all `count` rounds (collectives stay uniform); returns how many elements were found.
template <class Team, int kPer, class Emit>
__device__ int select_first(const Team& team, const float (&v)[kPer], uint32_t skip, int count,
                            Emit&& emit) {
  float key;
  int index;
  local_first(v, skip, team.rank, Team::kWidth, key, index);
  int found = 0;
  for (int j = 0; j < count; ++j) {
    float k = key;
    int e = index;
    team.first(k, e);
    if (e == kNone) continue;
    ++found;
    if (e % Team::kWidth == team.rank) {
      const int q = e / Team::kWidth;
      emit(j, e, q);
      skip |= 1u << q;
      local_first(v, skip, team.rank, Team::kWidth, key, index);
    }
  }
  return found;
}

// Group-limited routing (docs/semantics.md §3): keeps the group_select groups whose two largest keys
// sum highest (ties: lower group) and sets every other key to -inf. keys/score/keep: team scratch.
template <class Team, int kPer>
__device__ void mask_groups(const Team& team, const RowConfig& c, float (&key)[kPer], float* keys,
                            double* score, int* keep) {
  const int G = c.group_count, size = c.group_size;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int e = team.rank + Team::kWidth * q;
    if (e < c.E) keys[e] = key[q];
  }
  team.sync();
  for (int g = team.rank; g < G; g += Team::kWidth) {
    float first = -INFINITY, second = -INFINITY;
    for (int i = 0; i < size; ++i) {
      const float k = keys[g * size + i];
      if (k > first) {
        second = first;
        first = k;
      } else if (k > second) {
        second = k;
      }
    }
    score[g] = size == 1 ? static_cast<double>(first) : static_cast<double>(first) + second;
  }
  team.sync();
  for (int g = team.rank; g < G; g += Team::kWidth) {
    int ahead = 0;
    for (int h = 0; h < G; ++h) ahead += score[h] > score[g] || (score[h] == score[g] && h < g);
    keep[g] = ahead < c.group_select;
  }
  team.sync();
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int e = team.rank + Team::kWidth * q;
    if (e < c.E && !keep[e / size]) key[q] = -INFINITY;
  }
}

__device__ __forceinline__ int clamp_k(const RowConfig& c, int k) { return min(max(k, c.kmin), c.K); }

// k_t for top-p: the cumulative score over the candidates in key order, in double.
__device__ __forceinline__ int k_from_top_p(const RowConfig& c, const float* cand_s) {
  int k = c.K;
  double cumulative = 0;
  for (int j = 0; j < c.K; ++j) {
    cumulative += cand_s[j];
    if (cumulative >= c.top_p) {
      k = j + 1;
      break;
    }
  }
  return clamp_k(c, k);
}

__device__ __forceinline__ int k_from_entropy(const RowConfig& c, double entropy) {
  if (c.E == 1) return c.kmin;
  const double ratio = entropy / log(static_cast<double>(c.E));
  return clamp_k(c, c.kmin + static_cast<int>(floor((c.K - c.kmin) * ratio + 0.5)));
}

__device__ __forceinline__ int k_from_norm(const RowConfig& c, double norm, double mean, double std_dev) {
  double complexity;
  if (!isfinite(norm)) {
    complexity = 0;
  } else if (std_dev <= 0) {
    complexity = 0.5;
  } else {
    complexity = 0.5 * erfc(-((norm - mean) / std_dev) / sqrt(2.0));
  }
  return clamp_k(c, c.kmin + static_cast<int>(floor((c.K - c.kmin) * complexity + 0.5)));
}

// The weight of slot j of one token (docs/semantics.md §6–§7). slot_e[i] is the expert slot i keeps
// (-1: unused or dropped), cs/cu its score and logit. Sums run in slot order in double, as in
// core/assign.cc, so equal inputs give equal weights.
__device__ __forceinline__ float slot_weight(const RowConfig& c, const int32_t* slot_e, const float* cs,
                                             const float* cu, int j) {
  if (slot_e[j] < 0) return 0.0f;
  int survivors = 0;
  double score_sum = 0, max_logit = -INFINITY;
  for (int i = 0; i < c.K; ++i) {
    if (slot_e[i] < 0) continue;
    ++survivors;
    score_sum += cs[i];
    max_logit = fmax(max_logit, static_cast<double>(cu[i]));
  }
  double w;
  if (c.weights_from_logits) {
    double exp_sum = 0;
    if (max_logit != -INFINITY)
      for (int i = 0; i < c.K; ++i)
        if (slot_e[i] >= 0) exp_sum += exp(cu[i] - max_logit);
    w = exp_sum > 0 ? exp(cu[j] - max_logit) / exp_sum : 1.0 / survivors;
  } else if (c.normalize) {
    w = score_sum > 0 ? cs[j] / score_sum : 1.0 / survivors;
  } else {
    w = cs[j];
  }
  return static_cast<float>(w * c.scale);
}

}  // namespace moe::cuda
