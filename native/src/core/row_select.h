// Per-row routing math shared by the CPU backends: scores, group masking, candidate selection in key
// order, entropies. Each function is the literal definition of docs/semantics.md, in double where the
// definition sums.
#pragma once

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

// -sum x ln x over x > 0.
double shannon_entropy(const float* x, int n);
double shannon_entropy(const std::vector<double>& x, int n);

// Group-limited routing: keeps the `select` groups whose two largest keys sum highest (ties: lower
// group) and sets every other key to -inf.
void mask_groups(float* key, int n, int groups, int group_size, int select,
                 std::vector<double>& group_score, std::vector<int32_t>& group_order);

// The k best indices of key in key order (descending key, ties to the lower index).
void select_top(const float* key, int n, int k, std::vector<int32_t>& order, int32_t* out);

}  // namespace moe
