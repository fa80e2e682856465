// The assignment stage (docs/semantics.md §4–§9): everything after the token stage, shared by all
// backends. It reads the token stage's per-token results and writes the caller's outputs.
#pragma once

#include <cstdint>
#include <vector>

#include "backend.h"
#include "config.h"

namespace moe {

// The strategy parameters k_t depends on (calibrate varies them).
struct KParams {
  double top_p = 0.9;
  double threshold = 0.1;
  double norm_mean = 0;  // centre and spread of the norm strategy's standard score
  double norm_std = 0;
};

// Router-owned buffers: the token stage's outputs and the assignment stage's scratch. They grow to
// the largest batch seen and are reused, so steady-state routing allocates nothing.
class Workspace {
 public:
  // Sizes every buffer the params ask for and returns the token stage's view of them.
  const TokenStage& prepare(const Config& config, const StageParams& params);
  const TokenStage& stage() const { return stage_; }
  // The bytes its buffers hold (it lists every one: a buffer added below goes there too).
  int64_t host_bytes() const;

  std::vector<int64_t> counts_before;        // [E] assignments before capacity, every token
  std::vector<int64_t> counts_before_valid;  // [E] the same over valid tokens (aux loss)
  // capacity counters [E]; dispatch places [2 pairs][E]; expert choice's band starts [E + 1], counts
  // above the bands [E] and places [chunks][E]
  std::vector<int64_t> cursor;
  std::vector<int64_t> k_histogram;          // [K+1] tokens per k_t
  std::vector<float> slot_values;             // [threads][K] expert choice: a token's slots' s
  // Bands from a sample (assign.cc): the groups' bands, [2E] (expert choice) or [2(E + 1)]
  // (capacity by score) keys above and from; per chunk of tokens the keys listed, in token order;
  // the lists' ranks (in expert_ranks) and items (tokens or slots) by group, then the whole lists of
  // the groups whose band missed.
  struct BandEntry {
    uint32_t rank;
    int32_t item;
    int32_t group;
  };
  std::vector<float> expert_bands;
  std::vector<std::vector<BandEntry>> band_entries;
  std::vector<int32_t> band_items;
  // smallest_ranks' ranks, scratch and marks: the samples ([E][n] or by group), then the lists'
  // ranks; [threads][2n + 1]; expert choice's [T][E rounded up to 8] chosen (token, expert) pairs,
  // capacity by score's [threads][n] kept slots; n a group's list
  std::vector<uint32_t> expert_ranks;
  std::vector<int32_t> rank_scratch;
  std::vector<uint8_t> chosen;
  std::vector<uint8_t> byte_counts;  // [threads][E] expert choice's counts above the bands, a byte each
  std::vector<int64_t> chunk_tallies;  // [chunks][2E + K + 2] a per-token pass's counts by chunk; [chunks][2E] bands'

 private:
  std::vector<int32_t> candidate_expert_;
  std::vector<float> candidate_score_, candidate_logit_, top_scores_, full_key_, full_score_,
      full_logit_;
  std::vector<double> score_entropy_, norm_, logsumexp_, loss_entropy_, p_sum_;
  std::vector<uint8_t> invalid_;
  TokenStage stage_;
};

// The mean and population standard deviation of the finite norms of a batch.
void norm_statistics(const double* norms, int64_t tokens, double* mean, double* std_dev);

// One token's results of the token stage, as the strategies read them (absent ones are unused).
struct TokenRow {
  const int32_t* candidate_expert = nullptr;  // [K]
  const float* candidate_score = nullptr;     // [K]
  const float* candidate_logit = nullptr;     // [K]
  const float* top_scores = nullptr;          // [K] strategy threshold
  double score_entropy = 0;                   // strategy entropy
  double norm = 0;                            // strategy norm
};

// Token t's row of a token stage's buffers.
TokenRow token_row(const Config& config, const TokenStage& stage, int64_t t);

// k_t of a token for a token-choice strategy.
int decide_k(const Config& config, const TokenRow& row, const KParams& k);

// Token choice without capacity for one token: k_t, its first k_t candidates and their weights
// (docs/semantics.md §4, §6) into experts[K] and weights[K]; unused slots get -1 and 0. Returns k_t.
// The assignment stage runs it for every token; a fusing backend runs it inside its token stage.
int assign_token(const Config& config, const TokenRow& row, const KParams& k, int32_t* experts,
                 float* weights);

// Runs the assignment stage for a batch whose token stage is done and validated, writing `out`.
// `k` holds the expert-per-token decisions' parameters. Fills ws.counts_before and ws.k_histogram.
// After a fused token stage (params.fused_out) only the cross-token part is left to do.
void assign(const Config& config, const StageParams& params, const KParams& k, Workspace& ws,
            moe_route_outputs* out);

}  // namespace moe
