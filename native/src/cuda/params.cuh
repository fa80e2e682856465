// What the routing kernels share with the host code that launches them (cuda/backend.cu): limits,
// plain structs passed by value, and the shared-memory layout both sides compute.
#pragma once

#include <cstdint>

namespace moe::cuda {

constexpr int kMaxExperts = 1024;
constexpr int kMaxTopK = 32;
constexpr int kThreads = 256;  // the block size of every routing kernel
// Per-expert sums of p are accumulated in fixed point (units of 2^-40) with integer atomics, so their
// value does not depend on the order in which blocks finish. A sum over at most 2^21 tokens of p <= 1
// stays below 2^61.
constexpr double kFixedOne = 1099511627776.0;

// Per-call constants of the token stage (docs/semantics.md §2–§6).
struct RowConfig {
  int E = 0, K = 0, kmin = 1;
  int scoring = 0;   // moe_scoring
  int strategy = 0;  // moe_strategy
  bool keys_from_logits = false;  // order select-then-softmax: select on u
  int group_count = 0, group_size = 0, group_select = 0;  // group_size 0: no group-limited routing
  bool normalize = true, weights_from_logits = false;  // Config's
  double scale = 1, top_p = 0.9, threshold = 0.1;
  bool norm_known = false;  // strategy norm with calibrated statistics: k_t is decided per token
  double norm_mean = 0, norm_std = 0;
  bool noise = false;
  float noise_std = 0;
  uint64_t seed = 0, step = 0;
  const float* bias = nullptr;            // [E] gate bias (gate kernel only) or nullptr
  const float* selection_bias = nullptr;  // [E]
};

// Device accumulators of one route. Zero between calls: the finalize step clears what it read.
struct Totals {
  unsigned long long p_fixed[kMaxExperts];  // sum over valid tokens of p, in units of 1 / kFixedOne
  int counts_before[kMaxExperts];           // assignments before capacity, every token
  int counts_valid[kMaxExperts];            // the same over valid tokens (aux loss)
  unsigned long long sum_k;                 // sum of k_t
  unsigned long long valid;                 // tokens with no non-finite logit
  unsigned long long dropped;               // assignments removed by capacity
  unsigned int ticket;                      // blocks done, for the last-block finalize
};

// What the host reads back after a route besides the per-token outputs.
struct Result {
  double aux_loss, z_loss, entropy, flop_reduction;
  long long dropped;
  int counts_before[kMaxExperts];
};

// Where a row kernel writes. Every pointer may be null (not wanted).
struct RowOutputs {
  // Token stage (docs in core/backend.h, TokenStage).
  int32_t* cand_e = nullptr;
  float* cand_s = nullptr;
  float* cand_u = nullptr;
  float* top_scores = nullptr;
  double* score_entropy = nullptr;
  double* norm = nullptr;
  uint8_t* invalid = nullptr;
  double* lse = nullptr;           // per token logsumexp(u) (valid tokens)
  double* loss_entropy = nullptr;  // per token H(p) (valid tokens)
  float* full_key = nullptr;
  float* full_score = nullptr;
  float* full_logit = nullptr;
  // Decisions: with `decide` the kernel writes k_t, the slots' experts and the counts; with `weigh`
  // the weights too (not when capacity may still drop slots).
  bool decide = false, weigh = false;
  int32_t* k = nullptr;
  int32_t* experts = nullptr;
  float* weights = nullptr;
  // Losses: per-expert p sums and the valid count go to totals, sum logsumexp^2 and sum H(p) of each
  // block's valid tokens to block_partials[(block_base + block) * 2 + {0, 1}].
  bool losses = false;
  Totals* totals = nullptr;
  double* block_partials = nullptr;
  int block_base = 0;
};

// The finalize step: turns the accumulators into the call's counts and scalars.
struct Finalize {
  int64_t tokens = 0;
  int E = 0, K = 0;
  bool losses = false;
  const double* block_partials = nullptr;
  int blocks = 0;                  // entries of block_partials in use
  const int32_t* kept = nullptr;   // [E] counts after capacity, or null: nothing was dropped
  int32_t* expert_counts = nullptr;
  Result* result = nullptr;
  Totals* totals = nullptr;
  // Single-launch routes: the last of `arrivals` blocks to finish runs the finalize step itself.
  bool in_kernel = false;
  int arrivals = 0;
};

// Shared-memory layout of the row stage of a block (byte offsets from the row region's start): block
// accumulators, then one scratch area per team.
struct RowSmem {
  int p_fixed, team_sums, block_sums, hist, hist_valid, flag;  // block accumulators
  int team_stride;                                             // bytes per team scratch
  int group_score, cand_s, cand_u, cand_e, slot_e, keys, group_keep;  // within a team's scratch
  int teams_begin, total;
};

__host__ __device__ inline int align_up(int n, int a) { return (n + a - 1) / a * a; }

__host__ __device__ inline RowSmem row_smem(int E, int K, int groups, int teams) {
  RowSmem s{};
  int at = 0;
  s.p_fixed = at;    at += 8 * E;
  s.team_sums = at;  at += 16 * teams;   // per team: sum logsumexp^2, sum H(p)
  s.block_sums = at; at += 16;           // sum k_t, valid tokens (unsigned long long)
  s.hist = at;       at += 4 * E;
  s.hist_valid = at; at += 4 * E;
  s.flag = at;       at += 4;
  at = align_up(at, 16);
  s.teams_begin = at;
  int t = 0;
  s.group_score = t; t += 8 * groups;
  s.cand_s = t;      t += 4 * K;
  s.cand_u = t;      t += 4 * K;
  s.cand_e = t;      t += 4 * K;
  s.slot_e = t;      t += 4 * K;
  s.keys = t;        t += groups > 0 ? 4 * E : 0;
  s.group_keep = t;  t += 4 * groups;
  s.team_stride = align_up(t, 16);
  s.total = at + teams * s.team_stride;
  return s;
}

}  // namespace moe::cuda
