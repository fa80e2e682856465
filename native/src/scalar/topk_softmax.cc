// The scalar token stage: gate, noise, validation, scores, keys, group mask and candidate selection,
// one token at a time, in the plainest order. See core/backend.h for what each output means and
// docs/semantics.md §2–§4 for the definitions.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../core/half.h"
#include "../core/philox.h"
#include "../core/row_select.h"
#include "../core/scratch.h"
#include "scalar.h"

namespace moe {

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

class ScalarBackend final : public Backend {
 public:
  moe_backend kind() const override { return MOE_BACKEND_SCALAR; }

  std::vector<float> pack_weight(const float* weight, int experts, int dim) const override {
    return std::vector<float>(weight, weight + static_cast<int64_t>(experts) * dim);
  }

  int64_t host_bytes() const override {
    return capacity_bytes(row_, u_, s_, key_, top_, prob_, group_score_, order_, group_order_);
  }

  void token_stage(const StageParams& p, const TokenStage& out) override {
    const Config& c = *p.config;
    const int E = c.E, K = c.K;
    const int64_t row_length = p.is_logits ? E : c.D;
    row_.resize(static_cast<size_t>(row_length));
    u_.resize(E);
    s_.resize(E);
    key_.resize(E);
    if (p.want_losses) std::fill(out.p_sum, out.p_sum + E, 0.0);

    for (int64_t t = 0; t < p.tokens; ++t) {
      const void* src = static_cast<const char*>(p.input) + t * row_length * dtype_size(p.dtype);
      widen_row(src, p.dtype, row_length, row_.data());
      if (p.want_norm) out.norm[t] = row_norm(row_.data(), row_length);

      // 1. Logits.
      if (p.is_logits) {
        std::copy(row_.begin(), row_.end(), u_.begin());
      } else {
        scalar_gate_row(row_.data(), p.packed_weight, p.bias, E, c.D, u_.data());
      }
      if (p.noise) {
        const float std_dev = static_cast<float>(c.options.noise_std);
        for (int e = 0; e < E; ++e)
          u_[e] += std_dev * routing_normal(c.options.noise_seed, p.step, static_cast<uint32_t>(t),
                                            static_cast<uint32_t>(e));
      }

      // 2. Validation: a non-finite logit makes the token invalid; in sanitize mode it counts as -inf.
      bool invalid = false;
      for (int e = 0; e < E; ++e) {
        if (!std::isfinite(u_[e])) {
          invalid = true;
          u_[e] = kMinusInf;
        }
      }
      out.invalid[t] = invalid ? 1 : 0;
      if (invalid && c.options.validation == MOE_VALIDATION_REJECT) continue;

      // 3. Scores and keys.
      compute_scores(c.options.scoring, u_.data(), E, s_.data());
      const bool keys_from_logits = c.options.order == MOE_ORDER_SELECT_THEN_SOFTMAX;
      for (int e = 0; e < E; ++e) {
        key_[e] = u_[e] == kMinusInf
                      ? kMinusInf
                      : (keys_from_logits ? u_[e] : s_[e]) + p.selection_bias[e];
      }
      if (c.group_size > 0) mask_groups(key_.data(), E, c.options.group_count, c.group_size,
                                        c.options.group_select, group_score_, group_order_);

      // 4. Candidates: the K best experts in key order.
      int32_t* experts = out.candidate_expert + t * K;
      select_top(key_.data(), E, K, order_, experts);
      for (int j = 0; j < K; ++j) {
        out.candidate_score[t * K + j] = s_[experts[j]];
        out.candidate_logit[t * K + j] = u_[experts[j]];
      }

      // 5. What the strategies and losses need.
      if (p.want_top_scores) {
        top_unmasked_scores(s_.data(), key_.data(), c, u_.data(), K, top_, out.top_scores + t * K);
      }
      if (p.want_score_entropy) out.score_entropy[t] = shannon_entropy(s_.data(), E);
      if (p.want_losses && !invalid) {
        probabilities(c.options.scoring, s_.data(), E, prob_);
        out.logsumexp[t] = log_sum_exp(u_.data(), E);
        out.loss_entropy[t] = shannon_entropy(prob_.data(), E);
        for (int e = 0; e < E; ++e) out.p_sum[e] += prob_[e];
      }
      if (p.want_full) {
        std::copy(key_.begin(), key_.end(), out.full_key + t * E);
        if (out.full_score) std::copy(s_.begin(), s_.end(), out.full_score + t * E);
        if (out.full_logit) std::copy(u_.begin(), u_.end(), out.full_logit + t * E);
      }
    }
  }

 private:
  // Keeps the K largest scores among the experts the group mask left (descending), for threshold.
  static void top_unmasked_scores(const float* s, const float* key, const Config& c, const float* u,
                                  int K, std::vector<float>& scratch, float* out) {
    scratch.clear();
    for (int e = 0; e < c.E; ++e) {
      // Masked by groups: key is -inf although the logit is finite.
      const bool masked = key[e] == kMinusInf && u[e] != kMinusInf;
      if (!masked) scratch.push_back(s[e]);
    }
    const size_t n = std::min<size_t>(K, scratch.size());
    std::partial_sort(scratch.begin(), scratch.begin() + n, scratch.end(), std::greater<float>());
    for (int j = 0; j < K; ++j) out[j] = j < static_cast<int>(n) ? scratch[j] : kMinusInf;
  }

  std::vector<float> row_, u_, s_, key_, top_;
  std::vector<double> prob_, group_score_;
  std::vector<int32_t> order_, group_order_;
};

}  // namespace

std::unique_ptr<Backend> make_scalar_backend() { return std::make_unique<ScalarBackend>(); }

}  // namespace moe
