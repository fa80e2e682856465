#include "row_select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace moe {

namespace {
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
}

double row_norm(const float* x, int64_t n) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  return std::sqrt(sum);
}

void compute_scores(moe_scoring scoring, const float* u, int n, float* s) {
  if (scoring == MOE_SCORING_SIGMOID) {
    for (int e = 0; e < n; ++e) s[e] = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(u[e]))));
    return;
  }
  const float max = *std::max_element(u, u + n);
  if (max == kMinusInf) {
    std::fill(s, s + n, 0.0f);
    return;
  }
  double sum = 0;
  for (int e = 0; e < n; ++e) sum += std::exp(static_cast<double>(u[e]) - max);
  for (int e = 0; e < n; ++e) s[e] = static_cast<float>(std::exp(static_cast<double>(u[e]) - max) / sum);
}

void probabilities(moe_scoring scoring, const float* s, int n, std::vector<double>& p) {
  p.assign(s, s + n);
  if (scoring == MOE_SCORING_SOFTMAX) return;
  const double sum = std::accumulate(p.begin(), p.end(), 0.0);
  for (double& v : p) v = sum > 0 ? v / sum : 0.0;
}

double log_sum_exp(const float* u, int n) {
  const double max = *std::max_element(u, u + n);
  double sum = 0;
  for (int e = 0; e < n; ++e) sum += std::exp(u[e] - max);
  return max + std::log(sum);
}

void mask_groups(float* key, int n, int groups, int group_size, int select,
                 std::vector<double>& group_score, std::vector<int32_t>& group_order) {
  (void)n;
  group_score.resize(groups);
  group_order.resize(groups);
  for (int g = 0; g < groups; ++g) {
    const float* k = key + static_cast<int64_t>(g) * group_size;
    float first = kMinusInf, second = kMinusInf;
    for (int i = 0; i < group_size; ++i) {
      if (k[i] > first) {
        second = first;
        first = k[i];
      } else if (k[i] > second) {
        second = k[i];
      }
    }
    group_score[g] = group_size == 1 ? first : static_cast<double>(first) + second;
  }
  keep_top_groups(key, groups, group_size, select, group_score.data(), group_order.data());
}

void select_top(const float* key, int n, int k, std::vector<int32_t>& order, int32_t* out) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [key](int32_t a, int32_t b) {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  });
  std::copy(order.begin(), order.begin() + k, out);
}

}  // namespace moe
