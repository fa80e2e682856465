// Per-row routing math shared by the CPU backends: scores, group masking, candidate selection in key
// order, entropies. Each function is the literal definition of docs/semantics.md, in double where the
// definition sums.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "config.h"
#include "moe_router.h"

namespace moe {

// sqrt(sum x^2) in double.
double row_norm(const float* x, int64_t n);

// s = softmax(u) or sigmoid(u); entries of u equal to -inf get s = 0 (a row of only -inf: all 0).
void compute_scores(moe_scoring scoring, const float* u, int n, float* s);

// The loss distribution p: s itself for softmax scoring, s / sum(s) for sigmoid (0 when the sum is 0).
void probabilities(moe_scoring scoring, const float* s, int n, std::vector<double>& p);

// log(sum exp(u)) in double.
double log_sum_exp(const float* u, int n);

// -sum x ln x over x > 0 (x float or double), in double.
template <class T>
double shannon_entropy(const T* x, int n) {
  double h = 0;
  for (int e = 0; e < n; ++e)
    if (x[e] > 0) h -= static_cast<double>(x[e]) * std::log(static_cast<double>(x[e]));
  return h;
}

// Group-limited routing: keeps the `select` groups whose two largest keys sum highest (ties: lower
// group) and sets every other key to -inf.
void mask_groups(float* key, int n, int groups, int group_size, int select,
                 std::vector<double>& group_score, std::vector<int32_t>& group_order);

// mask_groups' choice once each group's score is known: keeps the `select` groups of `group_size` keys
// with the highest score (ties: the lower group) and sets every other group's keys to -inf. Up to 64
// groups their ranks are counted (G^2 branch-free compares, no sort); more are sorted into order[]
// (scratch of `groups`). The SIMD backends score the groups their own way and share this; inline, so
// that each compiles it with its own instruction set (the counted compares vectorize: out of line,
// DeepSeek-V3-style routing on AVX2 took 1.3-1.4x as long).
inline void keep_top_groups(float* key, int groups, int group_size, int select, const double* score,
                            int32_t* order) {
  const auto before = [score](int a, int b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
  const auto drop = [&](int g) {
    std::fill(key + static_cast<int64_t>(g) * group_size, key + static_cast<int64_t>(g + 1) * group_size,
              -std::numeric_limits<float>::infinity());
  };
  constexpr int kCountedGroups = 64;
  if (groups <= kCountedGroups) {
    for (int g = 0; g < groups; ++g) {
      int rank = 0;
      for (int h = 0; h < groups; ++h) rank += before(h, g);
      if (rank >= select) drop(g);
    }
  } else {
    std::iota(order, order + groups, 0);
    std::sort(order, order + groups, before);
    for (int rank = select; rank < groups; ++rank) drop(order[rank]);
  }
}

// The k best indices of key in key order (descending key, ties to the lower index).
void select_top(const float* key, int n, int k, std::vector<int32_t>& order, int32_t* out);

}  // namespace moe
