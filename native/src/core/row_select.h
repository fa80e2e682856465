// Per-row routing math shared by the CPU backends: scores, group masking, candidate selection in key
// order, entropies. Each function is the literal definition of docs/semantics.md, in double where the
// definition sums.
#pragma once

#include <cmath>
#include <cstdint>
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

// The k best indices of key in key order (descending key, ties to the lower index).
void select_top(const float* key, int n, int k, std::vector<int32_t>& order, int32_t* out);

}  // namespace moe
