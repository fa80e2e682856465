// The token stage of one row on the device, shared by the fused gate kernel (gate.cu) and the logits
// kernel (topk_softmax.cu): logits → noise → validation → scores → keys → group mask → candidates in
// key order → k_t, slots, weights and counts, plus the per-token quantities the strategies and losses
// need. Then the block's accumulators and the finalize step of a route (counts and losses).
//
// Every thread of a team calls route_row for every row its team is given, `active` or not (rows past
// the batch), so the team's collectives stay uniform; only active rows read input or write output.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>

#include <cstdint>

#include "../core/philox.h"
#include "moe_router.h"
#include "params.cuh"
#include "row_select.cuh"

namespace moe::cuda {

// Exact widening of an input element to f32.
__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(__half v) { return __half2float(v); }
__device__ __forceinline__ float widen(__nv_bfloat16 v) { return __bfloat162float(v); }

// The kernels' shapes by expert count: the team that routes a row (kPer experts per thread), for the
// fused gate kernel each warp's product tile (kMT x kNTW tiles of 16 x 16), and the blocks per
// multiprocessor the register allocation aims at (more would spill). Small E: a few lanes per row;
// large E: the whole block per row.
template <int kMaxE_, class Team_, int kPer_, int kMT_, int kNTW_, int kBlocksPerSM_>
struct ExpertClass {
  using Team = Team_;
  static constexpr int kMaxE = kMaxE_, kPer = kPer_, kMT = kMT_, kNTW = kNTW_;
  static constexpr int kBlocksPerSM = kBlocksPerSM_;
  static_assert(Team::kWidth * kPer >= kMaxE, "a team must hold the whole row");
  static_assert(8 * 16 * kNTW >= kMaxE, "eight warp columns must cover every expert");
  static_assert(kPer <= 32, "a thread's slots are tracked in one 32-bit mask");
};

// Calls f(ExpertClass<...>{}) for the class that covers E (1 <= E <= kMaxExperts).
template <class F>
void with_expert_class(int E, F&& f) {
  if (E <= 32) {
    f(ExpertClass<32, WarpTeam<8>, 4, 1, 2, 2>{});
  } else if (E <= 64) {
    f(ExpertClass<64, WarpTeam<16>, 4, 2, 2, 2>{});
  } else if (E <= 128) {
    f(ExpertClass<128, WarpTeam<32>, 4, 2, 2, 2>{});
  } else if (E <= 256) {
    f(ExpertClass<256, WarpTeam<32>, 8, 2, 4, 1>{});
  } else if (E <= 512) {
    f(ExpertClass<512, WarpTeam<32>, 16, 1, 8, 1>{});
  } else {
    f(ExpertClass<1024, BlockTeam, 4, 1, 8, 1>{});
  }
}

// What a thread carries from row to row until its block flushes.
template <int kPer>
struct RowAccum {
  double p[kPer] = {};  // sum of p over the valid rows, for the experts this thread holds
  double lse2 = 0, entropy = 0;  // team rank 0: sum logsumexp^2, sum H(p) of the valid rows
  unsigned long long sum_k = 0, valid = 0;
};

// Zeroes the block's accumulators (every thread calls it; a barrier follows).
__device__ inline void clear_block(unsigned char* smem, const RowSmem& L, int E, int teams) {
  auto* p_fixed = reinterpret_cast<unsigned long long*>(smem + L.p_fixed);
  auto* team_sums = reinterpret_cast<double*>(smem + L.team_sums);
  auto* block_sums = reinterpret_cast<unsigned long long*>(smem + L.block_sums);
  int* hist = reinterpret_cast<int*>(smem + L.hist);
  int* hist_valid = reinterpret_cast<int*>(smem + L.hist_valid);
  for (int e = threadIdx.x; e < E; e += kThreads) {
    p_fixed[e] = 0;
    hist[e] = 0;
    hist_valid[e] = 0;
  }
  for (int i = threadIdx.x; i < 2 * teams; i += kThreads) team_sums[i] = 0;
  if (threadIdx.x < 2) block_sums[threadIdx.x] = 0;
  __syncthreads();
}

// Routes row t. `in` gives the row: in.load(e) is u[t, e] before noise, in.norm(team, active) the
// Euclidean norm of the input row (every thread of the team calls it).
template <class Team, int kPer, class Input>
__device__ void route_row(const Team& team, const RowConfig& c, const RowOutputs& o, unsigned char* smem,
                          const RowSmem& L, const Input& in, int64_t t, bool active,
                          RowAccum<kPer>& acc) {
  constexpr int W = Team::kWidth;
  const int E = c.E, K = c.K;
  unsigned char* ts = smem + L.teams_begin + team.id() * L.team_stride;
  float* cand_s = reinterpret_cast<float*>(ts + L.cand_s);
  float* cand_u = reinterpret_cast<float*>(ts + L.cand_u);
  int32_t* cand_e = reinterpret_cast<int32_t*>(ts + L.cand_e);
  int32_t* slot_e = reinterpret_cast<int32_t*>(ts + L.slot_e);
  int* hist = reinterpret_cast<int*>(smem + L.hist);
  int* hist_valid = reinterpret_cast<int*>(smem + L.hist_valid);

  // 1. Logits, noise, validation: a non-finite logit makes the token invalid and counts as -inf.
  float u[kPer], s[kPer], key[kPer];
  uint32_t absent = 0;  // this thread's slots past E
  bool bad = false;
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int e = team.rank + W * q;
    float v = -INFINITY;
    if (e < E) {
      v = active ? in.load(e) : 0.0f;
      if (c.noise && active)
        v = __fadd_rn(v, __fmul_rn(c.noise_std, routing_normal(c.seed, c.step, static_cast<uint32_t>(t),
                                                                static_cast<uint32_t>(e))));
      if (!isfinite(v)) {
        bad = true;
        v = -INFINITY;
      }
    } else {
      absent |= 1u << q;
    }
    u[q] = v;
  }
  const bool invalid = team.any(bad);

  // 2. Scores; the softmax sum also gives logsumexp for the z-loss.
  float max_u = -INFINITY;
#pragma unroll
  for (int q = 0; q < kPer; ++q) max_u = fmaxf(max_u, u[q]);
  max_u = team.max(max_u);
  float exp_sum = 0.0f;
  if (c.scoring == MOE_SCORING_SOFTMAX || o.losses) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      s[q] = max_u == -INFINITY ? 0.0f : expf(u[q] - max_u);
      exp_sum += s[q];
    }
    exp_sum = team.sum(exp_sum);
  }
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    if ((absent >> q) & 1u) {
      s[q] = 0.0f;
    } else if (c.scoring == MOE_SCORING_SOFTMAX) {
      s[q] = max_u == -INFINITY ? 0.0f : s[q] / exp_sum;
    } else {
      s[q] = 1.0f / (1.0f + expf(-u[q]));
    }
  }

  // 3. Selection keys, the group mask, and which experts the mask removed.
#pragma unroll
  for (int q = 0; q < kPer; ++q) {
    const int e = team.rank + W * q;
    key[q] = (((absent >> q) & 1u) || u[q] == -INFINITY)
                 ? -INFINITY
                 : (c.keys_from_logits ? u[q] : s[q]) + c.selection_bias[e];
  }
  if (c.group_size > 0)
    mask_groups(team, c, key, reinterpret_cast<float*>(ts + L.keys),
                reinterpret_cast<double*>(ts + L.group_score), reinterpret_cast<int*>(ts + L.group_keep));
  uint32_t masked = 0;
#pragma unroll
  for (int q = 0; q < kPer; ++q)
    if (!((absent >> q) & 1u) && key[q] == -INFINITY && u[q] != -INFINITY) masked |= 1u << q;

  // 4. The K candidates in key order, into the team's scratch.
  team.sync();  // the previous row's readers of the scratch are done
  select_first(team, key, absent, K, [&](int j, int e, int q) {
    cand_e[j] = e;
    cand_s[j] = pick(s, q);
    cand_u[j] = pick(u, q);
  });
  team.sync();

  // 5. What the strategies need.
  double score_entropy = 0;
  if (c.strategy == MOE_STRATEGY_ENTROPY || o.score_entropy) {
#pragma unroll
    for (int q = 0; q < kPer; ++q)
      if (s[q] > 0) score_entropy -= static_cast<double>(s[q]) * log(static_cast<double>(s[q]));
    score_entropy = team.sum(score_entropy);
  }
  double norm = 0;
  if (c.strategy == MOE_STRATEGY_NORM) norm = in.norm(team, active);
  int k = K;
  bool decided = true;
  switch (c.strategy) {
    case MOE_STRATEGY_TOP_P:
      k = k_from_top_p(c, cand_s);
      break;
    case MOE_STRATEGY_THRESHOLD: {
      int above = 0;
#pragma unroll
      for (int q = 0; q < kPer; ++q)
        above += !(((absent | masked) >> q) & 1u) && static_cast<double>(s[q]) >= c.threshold;
      k = clamp_k(c, min(team.sum(above), K));
      break;
    }
    case MOE_STRATEGY_ENTROPY:
      k = k_from_entropy(c, score_entropy);
      break;
    case MOE_STRATEGY_NORM:
      if (c.norm_known) {
        k = k_from_norm(c, norm, c.norm_mean, c.norm_std);
      } else {
        decided = false;  // needs the batch's statistics: cuda/assign.cu decides later
      }
      break;
    default:
      break;
  }

  // 6. Token-stage outputs.
  if (active) {
    if (o.cand_e) {
      for (int j = team.rank; j < K; j += W) {
        o.cand_e[t * K + j] = cand_e[j];
        o.cand_s[t * K + j] = cand_s[j];
        o.cand_u[t * K + j] = cand_u[j];
      }
    }
    if (team.rank == 0) {
      if (o.invalid) o.invalid[t] = invalid ? 1 : 0;
      if (o.score_entropy) o.score_entropy[t] = score_entropy;
      if (o.norm) o.norm[t] = norm;
    }
    if (o.full_key) {
#pragma unroll
      for (int q = 0; q < kPer; ++q) {
        const int e = team.rank + W * q;
        if (e >= E) continue;
        o.full_key[t * E + e] = key[q];
        o.full_score[t * E + e] = s[q];
        o.full_logit[t * E + e] = u[q];
      }
    }
  }
  if (o.top_scores) {
    // The K largest scores among the experts the group mask left (threshold's calibration).
    float* top = o.top_scores + t * K;
    const int found = select_first(team, s, absent | masked, K, [&](int j, int, int q) {
      if (active) top[j] = pick(s, q);
    });
    if (active)
      for (int j = found + team.rank; j < K; j += W) top[j] = -INFINITY;
  }

  // 7. Loss terms of valid rows: p, logsumexp(u), H(p).
  if (o.losses) {
    const bool valid = active && !invalid;
    double score_sum = 0;
    if (c.scoring == MOE_SCORING_SIGMOID) {
#pragma unroll
      for (int q = 0; q < kPer; ++q) score_sum += s[q];
      score_sum = team.sum(score_sum);
    }
    double entropy = 0;
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const double p = c.scoring == MOE_SCORING_SOFTMAX ? static_cast<double>(s[q])
                                                        : (score_sum > 0 ? s[q] / score_sum : 0.0);
      if (valid) acc.p[q] += p;
      if (p > 0) entropy -= p * log(p);
    }
    entropy = team.sum(entropy);
    const double lse = static_cast<double>(max_u) + log(static_cast<double>(exp_sum));
    if (valid) {
      acc.lse2 += lse * lse;
      acc.entropy += entropy;
      ++acc.valid;
      if (o.lse && team.rank == 0) {
        o.lse[t] = lse;
        o.loss_entropy[t] = entropy;
      }
    }
  }

  // 8. Decisions: k_t, the slots' experts, their weights and the counts.
  if (o.decide && decided) {
    for (int j = team.rank; j < K; j += W) slot_e[j] = j < k ? cand_e[j] : -1;
    team.sync();
    if (active) {
      for (int j = team.rank; j < K; j += W) {
        const int e = slot_e[j];
        o.experts[t * K + j] = e;
        if (o.weigh) o.weights[t * K + j] = slot_weight(c, slot_e, cand_s, cand_u, j);
        if (e >= 0) {
          atomicAdd(&hist[e], 1);
          if (!invalid) atomicAdd(&hist_valid[e], 1);
        }
      }
      if (team.rank == 0) {
        o.k[t] = k;
        acc.sum_k += static_cast<unsigned long long>(k);
      }
    }
  }
}

// Adds a block's expert counts and sum of k_t to the totals (every thread calls it, after a barrier).
// Integer atomics: the totals do not depend on the order in which blocks arrive.
__device__ inline void flush_counts(const int* hist, const int* hist_valid, unsigned long long sum_k, int E,
                                    Totals* totals) {
  for (int e = threadIdx.x; e < E; e += kThreads) {
    if (hist[e]) atomicAdd(&totals->counts_before[e], hist[e]);
    if (hist_valid[e]) atomicAdd(&totals->counts_valid[e], hist_valid[e]);
  }
  if (threadIdx.x == 0 && sum_k) atomicAdd(&totals->sum_k, sum_k);
}

// Adds the block's accumulators to the route's totals (every thread calls it). block_index is the
// block's entry in o.block_partials (relative to o.block_base).
template <class Team, int kPer>
__device__ void flush_block(const Team& team, const RowConfig& c, const RowOutputs& o, unsigned char* smem,
                            const RowSmem& L, const RowAccum<kPer>& acc, int block_index) {
  auto* p_fixed = reinterpret_cast<unsigned long long*>(smem + L.p_fixed);
  auto* team_sums = reinterpret_cast<double*>(smem + L.team_sums);
  auto* block_sums = reinterpret_cast<unsigned long long*>(smem + L.block_sums);
  const int* hist = reinterpret_cast<const int*>(smem + L.hist);
  const int* hist_valid = reinterpret_cast<const int*>(smem + L.hist_valid);
  if (o.losses) {
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      const int e = team.rank + Team::kWidth * q;
      if (e < c.E && acc.p[q] > 0) atomicAdd(&p_fixed[e], __double2ull_rn(acc.p[q] * kFixedOne));
    }
  }
  if (team.rank == 0) {
    team_sums[2 * team.id()] = acc.lse2;
    team_sums[2 * team.id() + 1] = acc.entropy;
    atomicAdd(&block_sums[0], acc.sum_k);
    atomicAdd(&block_sums[1], acc.valid);
  }
  __syncthreads();
  if (o.losses && threadIdx.x == 0) {
    double lse2 = 0, entropy = 0;
    for (int i = 0; i < Team::kPerBlock; ++i) {
      lse2 += team_sums[2 * i];
      entropy += team_sums[2 * i + 1];
    }
    o.block_partials[2 * (o.block_base + block_index)] = lse2;
    o.block_partials[2 * (o.block_base + block_index) + 1] = entropy;
  }
  for (int e = threadIdx.x; e < c.E; e += kThreads)
    if (p_fixed[e]) atomicAdd(&o.totals->p_fixed[e], p_fixed[e]);
  if (threadIdx.x == 0 && block_sums[1]) atomicAdd(&o.totals->valid, block_sums[1]);
  flush_counts(hist, hist_valid, block_sums[0], c.E, o.totals);
}

// Counts and scalars of the route from the totals, then clears the totals for the next call. One
// block of kThreads threads; reads what other blocks wrote through L2 (__ldcg).
__device__ inline void finalize_route(const Finalize& f) {
  const BlockTeam team;
  Totals* totals = f.totals;
  long long valid_assignments = 0;
  for (int e = threadIdx.x; e < f.E; e += kThreads) {
    const int before = __ldcg(&totals->counts_before[e]);
    f.result->counts_before[e] = before;
    f.expert_counts[e] = f.kept ? __ldcg(&f.kept[e]) : before;
    valid_assignments += __ldcg(&totals->counts_valid[e]);
  }
  valid_assignments = team.sum(valid_assignments);
  const double valid = static_cast<double>(__ldcg(&totals->valid));
  double aux = 0;
  if (f.losses && valid > 0 && valid_assignments > 0) {
    for (int e = threadIdx.x; e < f.E; e += kThreads) {
      const double share = static_cast<double>(__ldcg(&totals->counts_valid[e])) / valid_assignments;
      aux += share * (static_cast<double>(__ldcg(&totals->p_fixed[e])) / kFixedOne / valid);
    }
  }
  aux = team.sum(aux);
  double lse2 = 0, entropy = 0;
  if (f.losses) {
    for (int b = threadIdx.x; b < f.blocks; b += kThreads) {
      lse2 += __ldcg(&f.block_partials[2 * b]);
      entropy += __ldcg(&f.block_partials[2 * b + 1]);
    }
  }
  lse2 = team.sum(lse2);
  entropy = team.sum(entropy);
  if (threadIdx.x == 0) {
    Result* r = f.result;
    r->aux_loss = f.losses && valid > 0 && valid_assignments > 0 ? f.E * aux : 0.0;
    r->z_loss = f.losses && valid > 0 ? lse2 / valid : 0.0;
    r->entropy = f.losses && valid > 0 && f.E > 1 ? entropy / valid / log(static_cast<double>(f.E)) : 0.0;
    const double slots = static_cast<double>(f.tokens) * f.K;
    r->flop_reduction = f.tokens > 0 ? 1.0 - static_cast<double>(__ldcg(&totals->sum_k)) / slots : 0.0;
    r->dropped = static_cast<long long>(__ldcg(&totals->dropped));
  }
  __syncthreads();
  for (int e = threadIdx.x; e < f.E; e += kThreads) {
    totals->counts_before[e] = 0;
    totals->counts_valid[e] = 0;
    totals->p_fixed[e] = 0;
  }
  if (threadIdx.x == 0) {
    totals->sum_k = 0;
    totals->valid = 0;
    totals->dropped = 0;
  }
}

// Single-launch routes: after flush_block, the last of f.arrivals blocks to get here runs the finalize
// step (the others' atomics and partials are visible to it after the fences).
__device__ inline void finalize_if_last(const Finalize& f) {
  __shared__ int last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&f.totals->ticket, 1u) == static_cast<unsigned>(f.arrivals) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  finalize_route(f);
  if (threadIdx.x == 0) f.totals->ticket = 0;
}

}  // namespace moe::cuda
