#include "assign.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "scratch.h"
#include "thread_pool.h"

namespace moe {

namespace {

// Weights of one token's K slots from the slots' s and u (docs/semantics.md §6–§7); an empty slot
// (expert -1) gets 0 and takes no part.
void slot_weights(const Config& c, const int32_t* experts, const float* score, const float* logit,
                  float* weights) {
  constexpr double kMinusInf = -std::numeric_limits<double>::infinity();
  const int K = c.K;
  int survivors = 0;
  double score_sum = 0, max_logit = kMinusInf;
  for (int j = 0; j < K; ++j) {
    if (experts[j] < 0) continue;
    ++survivors;
    score_sum += score[j];
    max_logit = std::max(max_logit, static_cast<double>(logit[j]));
  }
  // With softmax scores s_j = exp(u_j - max u) / Z, the softmax of the selected logits is s_j / sum s
  // within a few ulps while every selected s_j is a normal float: no exponentials then (they cost
  // the core's pass over the candidates half its time, bench/NOTES.md item 93); from the logits
  // where one underflowed (docs/semantics.md §6).
  bool from_logits = c.weights_from_logits;
  if (from_logits && c.options.scoring == MOE_SCORING_SOFTMAX) {
    from_logits = false;
    for (int j = 0; j < K; ++j)
      if (experts[j] >= 0 && !(score[j] >= std::numeric_limits<float>::min())) from_logits = true;
  }
  double exp_sum = 0;
  if (from_logits && max_logit != kMinusInf) {
    for (int j = 0; j < K; ++j)
      if (experts[j] >= 0) exp_sum += std::exp(logit[j] - max_logit);
  }
  for (int j = 0; j < K; ++j) {
    if (experts[j] < 0) {
      weights[j] = 0.0f;  // not scaled: a negative scale must not give -0
      continue;
    }
    double w;
    if (from_logits) {
      w = exp_sum > 0 ? std::exp(logit[j] - max_logit) / exp_sum : 1.0 / survivors;
    } else if (c.normalize) {
      w = score_sum > 0 ? score[j] / score_sum : 1.0 / survivors;
    } else {
      w = score[j];
    }
    weights[j] = static_cast<float>(w * c.options.scale);
  }
}

// A fused token's survivors' weights after a drop, from its weights before: normalized, those were
// scale·r_j with the r_j summing to one over the selected slots, so the survivors' renormalized
// scale·r_j / Σ r_i is w_j · scale / Σ w_i (a zero or non-finite sum: scale / survivors each, as
// slot_weights rules for its own). Without normalization a survivor's weight does not change.
void renormalize_survivors(const Config& c, const int32_t* experts, float* weights) {
  if (!c.normalize) return;
  const int K = c.K;
  int survivors = 0;
  double sum = 0;
  for (int j = 0; j < K; ++j) {
    if (experts[j] < 0) continue;
    ++survivors;
    sum += weights[j];
  }
  const double scale = c.options.scale;
  const bool usable = sum != 0 && std::isfinite(sum);
  for (int j = 0; j < K; ++j)
    if (experts[j] >= 0)
      weights[j] = static_cast<float>(usable ? weights[j] * scale / sum : scale / survivors);
}

// The order of an expert's candidates' keys (expert choice) or scores (capacity by score) as an
// integer, smallest first: descending keys' bits made order-preserving (-0 taken as +0, as the float
// comparison ties them).
inline uint32_t descending_rank(float key) {
  uint32_t bits;
  const float k = key + 0.0f;  // (-0 + 0 is +0)
  std::memcpy(&bits, &k, sizeof bits);
  return ~((bits & 0x80000000u) ? ~bits : bits | 0x80000000u);
}

// Up to this many entries smallest_ranks sorts (rank, index) pairs instead.
constexpr int64_t kSmallRanks = 64;

// The `count` (1 <= count <= n) smallest of rank[0, n), ties to the lower index, into out[0, count)
// in no order, by radix selection: a histogram of the candidates' next digit (from the top, about
// log2(n) bits, 4 to 11) finds the bucket where the count is reached; the candidates below it are
// taken, those in it (in index order, in pending[0, n)) go on to the next digit; after the last, the
// first ones of equal rank. Branch-free, into taken[0, n + 1) (every candidate is stored, the index
// advanced by whether it belongs), where std::nth_element on (rank, index) took ~6 ns an entry
// (bench/NOTES.md item 91).
void smallest_ranks(const uint32_t* rank, int64_t n, int64_t count, int32_t* pending, int32_t* taken,
                    int32_t* out) {
  if (n <= kSmallRanks) {  // (a histogram a digit costs more than these few entries)
    uint64_t ranked[kSmallRanks];
    for (int64_t i = 0; i < n; ++i) ranked[i] = static_cast<uint64_t>(rank[i]) << 32 | static_cast<uint64_t>(i);
    std::nth_element(ranked, ranked + count - 1, ranked + n);
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(ranked[i] & 0xffffffffu);
    return;
  }
  const int digit_bits = std::clamp(64 - __builtin_clzll(static_cast<uint64_t>(n)), 4, 11);
  int64_t below_total = 0, m = n, need = count;
  bool all = true;  // the candidates are [0, n), not yet pending
  const auto level = [&](int shift, uint32_t mask, auto index) {
    int32_t histogram[1 << 11];
    std::fill(histogram, histogram + mask + 1, 0);
    for (int64_t i = 0; i < m; ++i) ++histogram[(rank[index(i)] >> shift) & mask];
    uint32_t bucket = 0;
    int64_t below = 0;
    while (below + histogram[bucket] < need) below += histogram[bucket++];
    int64_t kept = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int32_t t = index(i);
      const uint32_t digit = (rank[t] >> shift) & mask;
      taken[below_total] = t;
      below_total += digit < bucket;
      pending[kept] = t;  // (kept <= i: in place)
      kept += digit == bucket;
    }
    m = kept;
    need -= below;
  };
  for (int high = 32; high > 0 && need < m;) {
    const int width = std::min(digit_bits, high);
    high -= width;
    const uint32_t mask = (1u << width) - 1;
    if (all) level(high, mask, [](int64_t i) { return static_cast<int32_t>(i); });
    else level(high, mask, [&](int64_t i) { return pending[i]; });
    all = false;
  }
  std::copy(taken, taken + below_total, out);
  for (int64_t i = 0; i < need; ++i) out[below_total + i] = all ? static_cast<int32_t>(i) : pending[i];
}

// Below this many slots (T·K) the passes over the slots (the dispatch scatter, ~2 ns a slot from
// DRAM) or the tokens stay on the calling thread: waking the pool's workers costs a few microseconds.
constexpr int64_t kParallelSlots = int64_t{1} << 14;

// The pool's threads for a pass of `work` items: the calling thread alone below `parallel_from`.
int pass_threads(const Config& c, int64_t work, int64_t parallel_from) {
  return work < parallel_from ? 1 : ThreadPool::resolve_threads(c.options.threads);
}

// Tokens a chunk of a per-token pass on the pool takes (expert choice's choices, token choice's
// assignment when the token stage did not fuse it).
constexpr int64_t kChunkTokens = 1024;

// A chunk's counts, apart from the other chunks': added in chunk order after the pass (integers: the
// sums do not depend on the threads either way).
struct ChunkTally {
  int64_t* counts;        // [E] assignments
  int64_t* counts_valid;  // [E] of them, of valid tokens
  int64_t* k_histogram;   // [K + 1] tokens by k_t
  int64_t* dropped;       // [1] choices dropped (expert choice)
};

// body(t0, t1, tally, slot) for the tokens [t0, t1) of each chunk of kChunkTokens, the chunks on the
// pool (`threads` of it), each with its own zeroed tally; then the tallies into ws.counts_before,
// ws.counts_before_valid, ws.k_histogram and out->dropped_assignments.
template <class Body>
void tokens_in_chunks(const Config& c, int64_t T, int threads, Workspace& ws, moe_route_outputs* out, const Body& body) {
  const int E = c.E, K = c.K;
  const int64_t chunks = (T + kChunkTokens - 1) / kChunkTokens;
  const int64_t words = 2 * E + K + 2;
  int64_t* tallies = zeroed(ws.chunk_tallies, chunks * words);
  auto run = [&](int64_t chunk, int slot) {
    int64_t* tally = tallies + chunk * words;
    const int64_t t0 = chunk * kChunkTokens;
    body(t0, std::min(T, t0 + kChunkTokens), ChunkTally{tally, tally + E, tally + 2 * E, tally + 2 * E + K + 1},
         slot);
  };
  ThreadPool::instance().run(chunks, threads, run);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t* tally = tallies + chunk * words;
    for (int e = 0; e < E; ++e) {
      ws.counts_before[e] += tally[e];
      ws.counts_before_valid[e] += tally[E + e];
    }
    for (int k = 0; k <= K; ++k) ws.k_histogram[k] += tally[2 * E + k];
    out->dropped_assignments += tally[2 * E + K + 1];
  }
}

// dropPolicy 'position' (docs/semantics.md §7): each expert keeps its first `capacity` assignments
// in slot order, so the dropped ones are each expert's last count - capacity. A pass from the last
// token back drops them (expert -1, weight 0 in place) and stops once none is left: it covers only
// the tail of the batch where they lie. reweigh(t) follows for each token that lost a slot.
template <class Reweigh>
void drop_by_position(const Config& c, int64_t T, int64_t capacity, Workspace& ws, moe_route_outputs* out,
                      const Reweigh& reweigh) {
  const int K = c.K;
  std::vector<int64_t>& excess = ws.cursor;
  int64_t left = 0;
  for (int e = 0; e < c.E; ++e) {
    excess[e] = std::max<int64_t>(ws.counts_before[e] - capacity, 0);
    left += excess[e];
  }
  for (int64_t t = T - 1; t >= 0 && left > 0; --t) {
    bool dropped = false;
    for (int j = 0; j < K; ++j) {  // (an expert holds one slot of a token at most)
      int32_t& e = out->experts[t * K + j];
      if (e < 0 || excess[e] == 0) continue;
      --excess[e];
      --left;
      e = -1;
      out->weights[t * K + j] = 0.0f;
      ++out->dropped_assignments;
      dropped = true;
    }
    if (dropped) reweigh(t);
  }
}

// dropPolicy 'score': each expert keeps its `capacity` highest-score assignments (ties: lower token).
// Only the experts with more assignments than that drop any: their slots are gathered by expert (in
// slot order), and each such expert's kept ones come from smallest_ranks on the scores' ranks
// (descending_rank), the experts on the pool; the others become expert -1, weight 0. Then reweigh(t)
// for each token that lost one (once a slot lost: a token that lost two is reweighed twice, the last
// time with both gone). (Until bench/NOTES.md item 97, std::nth_element on the records, serially.)
template <class Reweigh>
void drop_by_score(const Config& c, int64_t T, int64_t capacity, Workspace& ws, moe_route_outputs* out,
                   const Reweigh& reweigh) {
  const int E = c.E, K = c.K;
  const float* score = ws.stage().candidate_score;
  const std::vector<int64_t>& count = ws.counts_before;
  // An overflowing expert's fill position; the others share a spare entry past them, so that the
  // gathering takes no branch on the expert (half of them overflow at capacityFactor 1).
  std::vector<int64_t>& end = ws.cursor;
  int64_t total = 0, most = 0;
  for (int e = 0; e < E; ++e) {
    end[e] = total;
    if (count[e] > capacity) {
      total += count[e];
      most = std::max(most, count[e]);
    }
  }
  for (int e = 0; e < E; ++e)
    if (count[e] <= capacity) end[e] = total;
  ws.choices.resize(static_cast<size_t>(total) + 1);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < K; ++j) {
      const int64_t i = t * K + j;
      const int32_t e = out->experts[i];
      if (e < 0) continue;
      ws.choices[end[e]] = {score[i], static_cast<int32_t>(t), static_cast<int32_t>(i)};
      end[e] += count[e] > capacity;
    }
  }
  const int threads = pass_threads(c, total, kParallelSlots);
  uint32_t* ranks = grown(ws.expert_ranks, threads * most);
  int32_t* indexes = grown(ws.rank_scratch, threads * (2 * most + 1));  // pending, taken
  uint8_t* marks = grown(ws.chosen, threads * most);
  auto split = [&](int64_t e, int slot) {
    const int64_t n = count[e];
    if (n <= capacity) return;
    const Workspace::Choice* first = ws.choices.data() + end[e] - n;
    uint32_t* rank = ranks + slot * most;
    int32_t* pending = indexes + slot * (2 * most + 1);
    int32_t* taken = pending + n;
    uint8_t* kept = marks + slot * most;
    for (int64_t i = 0; i < n; ++i) {
      rank[i] = descending_rank(first[i].key);
      kept[i] = 0;
    }
    if (capacity > 0) smallest_ranks(rank, n, capacity, pending, taken, taken);
    for (int64_t i = 0; i < capacity; ++i) kept[taken[i]] = 1;
    for (int64_t i = 0; i < n; ++i) {
      if (kept[i]) continue;
      out->experts[first[i].slot] = -1;
      out->weights[first[i].slot] = 0.0f;
    }
  };
  ThreadPool::instance().run(E, threads, split);
  for (int e = 0; e < E; ++e) {
    if (count[e] <= capacity) continue;
    out->dropped_assignments += count[e] - capacity;
    for (int64_t i = end[e] - count[e]; i < end[e]; ++i)
      if (out->experts[ws.choices[i].slot] < 0) reweigh(ws.choices[i].token);
  }
}

// Token choice: k_t, the first k_t candidates of each token and their weights (a fused token stage
// wrote them already), then capacity, which reweighs only the tokens that lost a slot: from their
// candidates (slot_weights), or after a fused stage (dropPolicy 'position' only) from their own
// weights. Capacity drops nothing when no expert has more than `capacity` assignments.
void assign_token_choice(const Config& c, const StageParams& p, const KParams& kp, Workspace& ws,
                         moe_route_outputs* out) {
  const int64_t T = p.tokens;
  const int K = c.K;
  const TokenStage& st = ws.stage();
  const bool fused = p.fused_out != nullptr;
  if (!fused) {
    const int threads = pass_threads(c, T * K, kParallelSlots);
    tokens_in_chunks(c, T, threads, ws, out, [&](int64_t t0, int64_t t1, const ChunkTally& tally, int) {
      for (int64_t t = t0; t < t1; ++t) {
        int32_t* experts = out->experts + t * K;
        const int k = assign_token(c, token_row(c, st, t), kp, experts, out->weights + t * K);
        out->experts_per_token[t] = k;
        ++tally.k_histogram[k];
        for (int j = 0; j < k; ++j) {
          ++tally.counts[experts[j]];
          if (!st.invalid[t]) ++tally.counts_valid[experts[j]];
        }
      }
    });
  }
  if (!c.capacity) return;

  const int64_t capacity = capacity_per_expert(c, T);
  const bool overflow = std::any_of(ws.counts_before.begin(), ws.counts_before.begin() + c.E,
                                    [&](int64_t count) { return count > capacity; });
  if (!overflow) return;
  const auto reweigh = [&](int64_t t) {
    int32_t* experts = out->experts + t * K;
    float* weights = out->weights + t * K;
    if (fused) renormalize_survivors(c, experts, weights);
    else slot_weights(c, experts, st.candidate_score + t * K, st.candidate_logit + t * K, weights);
  };
  if (c.options.drop_policy == MOE_DROP_POSITION) drop_by_position(c, T, capacity, ws, out, reweigh);
  else drop_by_score(c, T, capacity, ws, out, reweigh);
}

// Expert choice: every expert takes its best tokens, then each token keeps at most K of them.

// Below this many keys (T·E) expert choice stays on the calling thread.
constexpr int64_t kParallelChoiceKeys = int64_t{1} << 15;
// Tokens a chunk of the keys' transpose takes.
constexpr int64_t kTransposeTokens = 256;

// Expert choice (docs/semantics.md §5). The keys' ranks (descending_rank) go by expert (a transpose
// of the [T, E] keys, in chunks of tokens); each expert's C best tokens come from smallest_ranks, the
// experts in parallel, and are marked in a [T, E] byte matrix; then each token reads its row of it,
// experts ascending, and keeps its K best choices by key (ties to the lower expert) with an insertion
// into K slots, the tokens in chunks on the pool (tokens_in_chunks). (Until
// bench/NOTES.md item 91 a partial sort per expert compared strided keys: 3.8 us a token at E = 64;
// until item 96 a serial counting pass listed each token's choices.)
void assign_expert_choice(const Config& c, int64_t T, Workspace& ws, moe_route_outputs* out) {
  const int E = c.E, K = c.K;
  const TokenStage& st = ws.stage();
  const int64_t capacity = T > 0 ? capacity_per_expert(c, T) : 0;
  const int threads = pass_threads(c, T * E, kParallelChoiceKeys);
  ThreadPool& pool = ThreadPool::instance();

  const int64_t row = (E + 7) / 8 * 8;  // a token's bytes of the marks: whole 8-byte words
  uint32_t* by_expert = grown(ws.expert_ranks, T * E);  // [E][T]
  uint8_t* chosen = grown(ws.chosen, T * row);          // [T][row] 1 where expert e took token t
  auto transpose = [&](int64_t chunk, int) {
    const int64_t t0 = chunk * kTransposeTokens, t1 = std::min(T, t0 + kTransposeTokens);
    for (int e = 0; e < E; ++e)
      for (int64_t t = t0; t < t1; ++t) by_expert[e * T + t] = descending_rank(st.full_key[t * E + e]);
    std::memset(chosen + t0 * row, 0, static_cast<size_t>((t1 - t0) * row));
  };
  pool.run((T + kTransposeTokens - 1) / kTransposeTokens, threads, transpose);

  const int64_t per_thread = 2 * T + 1;  // pending, taken
  int32_t* scratch = grown(ws.rank_scratch, threads * per_thread);
  auto choose = [&](int64_t e, int slot) {
    int32_t* pending = scratch + slot * per_thread;
    int32_t* taken = pending + T;
    smallest_ranks(by_expert + e * T, T, capacity, pending, taken, taken);
    for (int64_t i = 0; i < capacity; ++i) chosen[taken[i] * row + e] = 1;
  };
  if (capacity > 0) pool.run(E, threads, choose);

  // Each token on its own, on the pool in chunks of tokens: its choices in key order, the first K
  // kept, their weights.
  float* slot_scratch = grown(ws.slot_values, 3 * threads * K);
  tokens_in_chunks(c, T, threads, ws, out, [&](int64_t t0, int64_t t1, const ChunkTally& tally, int slot) {
    float* key = slot_scratch + 3 * slot * K;
    float* score = key + K;
    float* logit = score + K;
    for (int64_t t = t0; t < t1; ++t) {
      const float* token_key = st.full_key + t * E;
      int32_t* experts = out->experts + t * K;
      int k = 0;
      int64_t n = 0;
      for (int e0 = 0; e0 < E; e0 += 8) {
        uint64_t marks;  // bytes 0 or 1: one bit each
        std::memcpy(&marks, chosen + t * row + e0, sizeof marks);
        for (; marks != 0; marks &= marks - 1) {
          const int e = e0 + __builtin_ctzll(marks) / 8;
          const float x = token_key[e];
          ++n;
          if (k == K && !(x > key[K - 1])) continue;  // (an equal key: the lower expert stays)
          int j = k < K ? k++ : K - 1;
          for (; j > 0 && key[j - 1] < x; --j) {
            key[j] = key[j - 1];
            experts[j] = experts[j - 1];
          }
          key[j] = x;
          experts[j] = e;
        }
      }
      for (int j = 0; j < K; ++j) {
        if (j >= k) {
          experts[j] = -1;
          continue;
        }
        const int32_t e = experts[j];
        ++tally.counts[e];
        if (!st.invalid[t]) ++tally.counts_valid[e];
        score[j] = st.full_score[t * E + e];
        logit[j] = st.full_logit[t * E + e];
      }
      out->experts_per_token[t] = k;
      *tally.dropped += n - k;
      ++tally.k_histogram[k];
      slot_weights(c, experts, score, logit, out->weights + t * K);
    }
  });
}

// The expert-major layout (docs/semantics.md §8): slot i goes to its expert's next place in slot
// order. Its slots are cut in pairs of chunks: the first of a pair fills each expert's places from
// the front of the pair's share, the second from the back, so the two need no count of each other's.
// Only the shares of the pairs before the last take a counting pass (none with two threads).
void assign_dispatch(const Config& c, int64_t T, Workspace& ws, moe_route_outputs* out) {
  const int E = c.E, K = c.K;
  const int64_t block = c.options.block_size;
  int32_t* offsets = out->dispatch_offsets;
  int32_t* slots = out->dispatch_slots;
  const int32_t* experts = out->experts;
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) {
    const int64_t padded = (out->expert_counts[e] + block - 1) / block * block;
    offsets[e + 1] = static_cast<int32_t>(offsets[e] + padded);
  }
  const int64_t n = T * K;
  // A pair for every two threads the option asks for, even beyond the machine's (the pool runs them
  // on the threads it has, a few pairs apiece): the layout does not depend on them.
  const bool parallel = n >= kParallelSlots;
  const int threads = pass_threads(c, n, kParallelSlots);
  const int pairs = parallel ? std::max(1, (c.options.threads > 0 ? c.options.threads : threads) / 2) : 1;
  const int chunks = 2 * pairs;
  const auto chunk_begin = [&](int64_t chunk) { return n * chunk / chunks; };
  int64_t* cursor = grown(ws.cursor, static_cast<int64_t>(chunks) * E);  // [chunk][E]
  if (pairs > 1) {  // chunk j's assignments to each expert, for the chunks of every pair but the last
    auto count = [&](int64_t chunk, int) {
      int64_t* counts = cursor + chunk * E;
      std::fill(counts, counts + E, 0);
      for (int64_t i = chunk_begin(chunk); i < chunk_begin(chunk + 1); ++i)
        if (experts[i] >= 0) ++counts[experts[i]];
    };
    ThreadPool::instance().run(chunks - 2, threads, count);
  }
  // Each pair's share of expert e: [front, back), the next pair's front its back.
  for (int e = 0; e < E; ++e) {
    int64_t front = offsets[e];
    for (int pair = 0; pair < pairs; ++pair) {
      int64_t* share = cursor + 2 * pair * E;
      const int64_t back = pair + 1 < pairs ? front + share[e] + share[E + e] : offsets[e] + out->expert_counts[e];
      share[e] = front;
      share[E + e] = back;
      front = back;
    }
  }
  auto scatter = [&](int64_t chunk, int) {
    int64_t* place = cursor + chunk * E;
    const int64_t begin = chunk_begin(chunk), end = chunk_begin(chunk + 1);
    if (chunk % 2 == 0) {
      for (int64_t i = begin; i < end; ++i) {
        const int32_t e = experts[i];
        if (e >= 0) slots[place[e]++] = static_cast<int32_t>(i);
      }
    } else {
      for (int64_t i = end - 1; i >= begin; --i) {
        const int32_t e = experts[i];
        if (e >= 0) slots[--place[e]] = static_cast<int32_t>(i);
      }
    }
  };
  ThreadPool::instance().run(chunks, threads, scatter);
  const int32_t sentinel = static_cast<int32_t>(n);
  for (int e = 0; e < E; ++e) std::fill(slots + offsets[e] + out->expert_counts[e], slots + offsets[e + 1], sentinel);
  out->dispatch_length = offsets[E];
}

void assign_losses(const Config& c, int64_t T, const Workspace& ws, moe_route_outputs* out) {
  const int E = c.E;
  const TokenStage& st = ws.stage();
  out->aux_loss = out->z_loss = out->entropy = 0;
  int64_t valid = 0;
  double z = 0, h = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (st.invalid[t]) continue;
    ++valid;
    z += st.logsumexp[t] * st.logsumexp[t];
    h += st.loss_entropy[t];
  }
  if (valid == 0) return;
  int64_t total = 0;
  for (int e = 0; e < E; ++e) total += ws.counts_before_valid[e];
  if (total > 0) {
    // E sum_e (count_e / total) (p_sum_e / valid), with the two divisions taken out of the sum.
    double aux = 0;
    for (int e = 0; e < E; ++e) aux += static_cast<double>(ws.counts_before_valid[e]) * st.p_sum[e];
    out->aux_loss = E * aux / (static_cast<double>(total) * valid);
  }
  out->z_loss = z / valid;
  out->entropy = E > 1 ? h / valid / std::log(static_cast<double>(E)) : 0.0;
}

}  // namespace

int64_t Workspace::host_bytes() const {
  return capacity_bytes(counts_before, counts_before_valid, cursor, k_histogram, choices, slot_values,
                        expert_ranks, rank_scratch, chosen, chunk_tallies, candidate_expert_, candidate_score_, candidate_logit_, top_scores_,
                        full_key_, full_score_, full_logit_, score_entropy_, norm_, logsumexp_,
                        loss_entropy_, p_sum_, invalid_);
}

const TokenStage& Workspace::prepare(const Config& c, const StageParams& p) {
  const int64_t T = p.tokens, K = c.K, E = c.E;
  stage_ = TokenStage{};
  stage_.invalid = grown(invalid_, T);
  zeroed(counts_before, E);
  zeroed(counts_before_valid, E);
  zeroed(k_histogram, K + 1);
  grown(cursor, E + 1);  // (each user sets it)
  if (p.fused_out) {
    stage_.counts = counts_before.data();
    stage_.counts_valid = counts_before_valid.data();
    stage_.k_histogram = k_histogram.data();
  } else {
    stage_.candidate_expert = grown(candidate_expert_, T * K);
    stage_.candidate_score = grown(candidate_score_, T * K);
    stage_.candidate_logit = grown(candidate_logit_, T * K);
    if (p.want_top_scores) stage_.top_scores = grown(top_scores_, T * K);
    if (p.want_score_entropy) stage_.score_entropy = grown(score_entropy_, T);
  }
  if (p.want_norm) stage_.norm = grown(norm_, T);
  if (p.want_losses) {
    stage_.logsumexp = grown(logsumexp_, T);
    stage_.loss_entropy = grown(loss_entropy_, T);
    stage_.p_sum = grown(p_sum_, E);
  }
  if (p.want_full) {
    stage_.full_key = grown(full_key_, T * E);
    stage_.full_score = grown(full_score_, T * E);
    stage_.full_logit = grown(full_logit_, T * E);
  }
  return stage_;
}

void norm_statistics(const double* norms, int64_t tokens, double* mean, double* std_dev) {
  double sum = 0, sum_sq = 0;
  int64_t n = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    if (!std::isfinite(norms[t])) continue;
    sum += norms[t];
    ++n;
  }
  *mean = n > 0 ? sum / n : 0;
  for (int64_t t = 0; t < tokens; ++t) {
    if (!std::isfinite(norms[t])) continue;
    sum_sq += (norms[t] - *mean) * (norms[t] - *mean);
  }
  *std_dev = n > 0 ? std::sqrt(sum_sq / n) : 0;
}

TokenRow token_row(const Config& c, const TokenStage& st, int64_t t) {
  const int64_t K = c.K;
  TokenRow row;
  row.candidate_expert = st.candidate_expert + t * K;
  row.candidate_score = st.candidate_score + t * K;
  row.candidate_logit = st.candidate_logit + t * K;
  if (st.top_scores) row.top_scores = st.top_scores + t * K;
  if (st.score_entropy) row.score_entropy = st.score_entropy[t];
  if (st.norm) row.norm = st.norm[t];
  return row;
}

int decide_k(const Config& c, const TokenRow& row, const KParams& kp) {
  const int K = c.K, kmin = c.kmin;
  int k = K;
  switch (c.options.strategy) {
    case MOE_STRATEGY_TOP_K:
    case MOE_STRATEGY_EXPERT_CHOICE:
      return K;
    case MOE_STRATEGY_TOP_P: {
      double cumulative = 0;
      for (int j = 0; j < K; ++j) {
        cumulative += row.candidate_score[j];
        if (cumulative >= kp.top_p) {
          k = j + 1;
          break;
        }
      }
      break;
    }
    case MOE_STRATEGY_THRESHOLD: {
      k = 0;
      for (int j = 0; j < K; ++j)
        if (row.top_scores[j] >= kp.threshold) ++k;
      break;
    }
    case MOE_STRATEGY_ENTROPY: {
      if (c.E == 1) return kmin;
      const double ratio = row.score_entropy / std::log(static_cast<double>(c.E));
      k = kmin + static_cast<int>(std::floor((K - kmin) * ratio + 0.5));
      break;
    }
    case MOE_STRATEGY_NORM: {
      const double norm = row.norm;
      double complexity;
      if (!std::isfinite(norm)) {
        complexity = 0;
      } else if (kp.norm_std <= 0) {
        complexity = 0.5;
      } else {
        complexity = 0.5 * std::erfc(-((norm - kp.norm_mean) / kp.norm_std) / std::sqrt(2.0));
      }
      k = kmin + static_cast<int>(std::floor((K - kmin) * complexity + 0.5));
      break;
    }
  }
  return std::clamp(k, kmin, K);
}

int assign_token(const Config& c, const TokenRow& row, const KParams& kp, int32_t* experts,
                 float* weights) {
  const int k = decide_k(c, row, kp);
  for (int j = 0; j < c.K; ++j) experts[j] = j < k ? row.candidate_expert[j] : -1;
  slot_weights(c, experts, row.candidate_score, row.candidate_logit, weights);
  return k;
}

void assign(const Config& c, const StageParams& p, const KParams& kp, Workspace& ws,
            moe_route_outputs* out) {
  const int64_t T = p.tokens;
  const int K = c.K, E = c.E;
  const TokenStage& st = ws.stage();
  out->dropped_assignments = 0;

  if (c.expert_choice) {
    assign_expert_choice(c, T, ws, out);
  } else {
    assign_token_choice(c, p, kp, ws, out);
  }

  // Either drop policy leaves an expert min(assignments, capacity) of them.
  const int64_t capacity = c.capacity ? capacity_per_expert(c, T) : std::numeric_limits<int64_t>::max();
  for (int e = 0; e < E; ++e)
    out->expert_counts[e] = static_cast<int32_t>(std::min(ws.counts_before[e], capacity));
  if (c.options.dispatch) assign_dispatch(c, T, ws, out);

  // Invalid tokens are rare: memchr skips over the valid ones.
  out->invalid_count = 0;
  const uint8_t* const end = st.invalid + T;
  for (const uint8_t* bad = st.invalid; bad < end; ++bad) {
    bad = static_cast<const uint8_t*>(std::memchr(bad, 1, static_cast<size_t>(end - bad)));
    if (!bad) break;
    if (out->invalid_tokens) out->invalid_tokens[out->invalid_count] = static_cast<int32_t>(bad - st.invalid);
    ++out->invalid_count;
  }
  if (c.options.losses) assign_losses(c, T, ws, out);

  int64_t sum_k = 0;
  for (int k = 0; k <= K; ++k) sum_k += k * ws.k_histogram[k];
  out->flop_reduction = T > 0 ? 1.0 - static_cast<double>(sum_k) / (static_cast<double>(T) * K) : 0;
}

}  // namespace moe
