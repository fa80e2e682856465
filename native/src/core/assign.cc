#include "assign.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "scratch.h"
#include "thread_pool.h"

namespace moe {

namespace {

// Weights of one token's K slots from the slots' s and u (docs/semantics.md §6–§7); an empty slot
// (expert -1) gets 0 and takes no part. The slots' u: logit[K], or logit(j) for slot j, read only
// where the weights come from the logits (expert choice's are in a [T, E] matrix: a miss each).
template <class Logits>
void slot_weights(const Config& c, const int32_t* experts, const float* score, const Logits& logits,
                  float* weights) {
  constexpr double kMinusInf = -std::numeric_limits<double>::infinity();
  const auto logit = [&](int j) -> float {
    if constexpr (std::is_invocable_v<const Logits&, int>) return logits(j);
    else return logits[j];
  };
  const int K = c.K;
  int survivors = 0;
  double score_sum = 0;
  for (int j = 0; j < K; ++j) {
    if (experts[j] < 0) continue;
    ++survivors;
    score_sum += score[j];
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
  double max_logit = kMinusInf, exp_sum = 0;
  if (from_logits) {
    for (int j = 0; j < K; ++j)
      if (experts[j] >= 0) max_logit = std::max(max_logit, static_cast<double>(logit(j)));
    if (max_logit != kMinusInf)
      for (int j = 0; j < K; ++j)
        if (experts[j] >= 0) exp_sum += std::exp(logit(j) - max_logit);
  }
  for (int j = 0; j < K; ++j) {
    if (experts[j] < 0) {
      weights[j] = 0.0f;  // not scaled: a negative scale must not give -0
      continue;
    }
    double w;
    if (from_logits) {
      w = exp_sum > 0 ? std::exp(logit(j) - max_logit) / exp_sum : 1.0 / survivors;
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

// Bands from a sample: a group of keys (an expert's keys in expert choice, an overflowing expert's
// slots' scores in capacity by score) keeps its `keep` best of `count`; the keep-th best key is
// bracketed from the order statistics of a sample, and only the keys in that band need selecting
// among (bench/NOTES.md items 100 and 101).

// From this many tokens the bands come from a sample: one token in kSampleStride, at most kMaxSample.
constexpr int64_t kSampleFromTokens = 2048;
constexpr int64_t kSampleStride = 32;
constexpr int64_t kMaxSample = 2048;
// The band's half-width in standard deviations of the sample's count past the keep-th best key.
constexpr double kBandDeviations = 4.5;

// The key whose descending_rank is `rank` (+0 for that of -0 and +0).
inline float key_of_rank(uint32_t rank) {
  const uint32_t m = ~rank;
  const uint32_t bits = (m & 0x80000000u) ? m & 0x7fffffffu : ~m;
  float key;
  std::memcpy(&key, &bits, sizeof key);
  return key;
}

// A group's band from the ranks (descending_rank) of n sampled keys (reordered), q the fraction it
// keeps: keys above *above are surely kept, keys in [*from, *above] may be, keys below *from are not.
// The ends are the sample's order statistics kBandDeviations either side of where the keep-th best
// falls among them (+inf and -inf past the sample's ends). That count is binomial, so the band
// misses with a chance of ~1e-5 on data without a period of the sample's stride; the caller then
// takes the group's whole list. (Keys are finite or -inf: float comparisons order them as
// descending_rank does.)
void band_ends(uint32_t* rank, int64_t n, double q, float* above, float* from) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const double half = kBandDeviations * std::sqrt(static_cast<double>(n) * q * (1 - q)) + 1;
  const int64_t lo = static_cast<int64_t>(std::floor(q * static_cast<double>(n) - half));
  const int64_t hi = static_cast<int64_t>(std::ceil(q * static_cast<double>(n) + half));
  *above = kInf;
  *from = -kInf;
  if (lo >= 0) {
    std::nth_element(rank, rank + lo, rank + n);
    *above = key_of_rank(rank[lo]);
  }
  if (hi < n) {
    std::nth_element(rank + std::max<int64_t>(lo + 1, 0), rank + hi, rank + n);
    *from = key_of_rank(rank[hi]);
  }
}

// Appends a band entry field by field. A braced temporary was built on the stack by two 4-byte
// stores and copied out by an 8-byte load, which cannot take its data from two stores and waits for
// them to reach the cache (bench/NOTES.md item 102).
inline void list_entry(std::vector<Workspace::BandEntry>& entries, uint32_t rank, int64_t item, int group) {
  Workspace::BandEntry& entry = entries.emplace_back();
  entry.rank = rank;
  entry.item = static_cast<int32_t>(item);
  entry.group = group;
}

// A banded pass's lists by group: from its chunks' tallies (`words` a chunk: at 0 each group's keys
// above its band, at `listed` its keys listed in ws.band_entries, at `in_band` those of them in its
// band), each group's list at [begin[g], begin[g + 1]) of ws.expert_ranks and ws.band_items (ranks
// and items, in chunk order, the chunks on the pool), and sure[g]: its count above the band where
// its keep-th best key lies in the band, else -1. place: [chunks][groups] scratch.
void group_lists(Workspace& ws, int64_t chunks, int groups, int threads, const int64_t* tallies, int64_t words,
                 int64_t listed, int64_t in_band, int64_t keep, int64_t* begin, int64_t* sure, int64_t* place) {
  begin[0] = 0;
  for (int g = 0; g < groups; ++g) {
    int64_t next = begin[g], above_count = 0, band_count = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t* tally = tallies + chunk * words;
      place[chunk * groups + g] = next;
      above_count += tally[g];
      next += tally[listed + g];
      band_count += tally[in_band + g];
    }
    begin[g + 1] = next;
    sure[g] = above_count < keep && above_count + band_count >= keep ? above_count : -1;
  }
  uint32_t* rank = grown(ws.expert_ranks, begin[groups]);
  int32_t* item = grown(ws.band_items, begin[groups]);
  auto gather = [&](int64_t chunk, int) {
    int64_t* at = place + chunk * groups;
    for (const Workspace::BandEntry& entry : ws.band_entries[chunk]) {
      const int64_t i = at[entry.group]++;
      rank[i] = entry.rank;
      item[i] = entry.item;
    }
  };
  ThreadPool::instance().run(chunks, threads, gather);
}

// dropPolicy 'score': each expert keeps its `capacity` highest-score assignments (ties: lower token).
// Only the experts with more assignments than that drop any. Their bands (band_ends, from the slots
// of a sample of the tokens; below kSampleFromTokens tokens, none: every assignment is listed) and a
// pass over the slots, in chunks of tokens on the pool, count each one's scores above its band and
// list the others, which go by expert in slot order; an expert whose capacity-th score lies in its band keeps
// the best of them (smallest_ranks on descending_rank), one whose band missed takes from all its
// slots; the rest become expert -1, weight 0, the experts on the pool. Then reweigh(t) for each
// token that lost one (once a slot lost: a token that lost two is reweighed twice, the last time with
// both gone). (Until bench/NOTES.md item 101 every overflowing expert's slots were gathered, serially;
// until item 97, std::nth_element on them, serially.)
template <class Reweigh>
void drop_by_score(const Config& c, int64_t T, int64_t capacity, Workspace& ws, moe_route_outputs* out,
                   const Reweigh& reweigh) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int E = c.E, K = c.K;
  const float* score = ws.stage().candidate_score;
  int32_t* experts = out->experts;
  const int64_t* count = ws.counts_before.data();
  const int threads = pass_threads(c, T * K, kParallelSlots);
  ThreadPool& pool = ThreadPool::instance();

  // Bands, [E + 1]: an expert that keeps all its slots, and the spare entry past them for empty
  // slots, surely keeps every score (above -inf: the pass takes no branch on the expert).
  float* above = grown(ws.expert_bands, 2 * (E + 1));
  float* from = above + E + 1;
  std::fill(above, above + E + 1, -kInf);
  std::fill(from, from + E + 1, -kInf);
  const auto overflows = [&](int e) { return count[e] > capacity; };
  if (T >= kSampleFromTokens) {
    const int64_t n = std::min(T / kSampleStride, kMaxSample);
    int64_t* sampled = zeroed(ws.cursor, 2 * E + 1);  // the sample's slots by expert [E + 1], places [E]
    int64_t* place = sampled + E + 1;
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < K; ++j) {
        const int32_t e = experts[i * T / n * K + j];
        if (e >= 0) ++sampled[e + 1];
      }
    for (int e = 0; e < E; ++e) sampled[e + 1] += sampled[e];
    std::copy(sampled, sampled + E, place);
    uint32_t* samples = grown(ws.expert_ranks, sampled[E]);
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < K; ++j) {
        const int64_t slot = i * T / n * K + j;
        if (experts[slot] >= 0) samples[place[experts[slot]]++] = descending_rank(score[slot]);
      }
    for (int e = 0; e < E; ++e)
      if (overflows(e))
        band_ends(samples + sampled[e], sampled[e + 1] - sampled[e],
                  static_cast<double>(capacity) / static_cast<double>(count[e]), &above[e], &from[e]);
  } else {
    for (int e = 0; e < E; ++e)
      if (overflows(e)) above[e] = kInf;
  }

  // The pass: per chunk of tokens, each expert's scores above its band, its other slots listed (in
  // slot order) and how many of those lie in the band.
  const int64_t chunks = (T + kChunkTokens - 1) / kChunkTokens;
  const int64_t words = 3 * (E + 1);  // a chunk's tallies: above [E + 1], listed [E + 1], in band [E + 1]
  int64_t* tallies = zeroed(ws.chunk_tallies, chunks * words);
  if (static_cast<int64_t>(ws.band_entries.size()) < chunks) ws.band_entries.resize(static_cast<size_t>(chunks));
  auto classify = [&](int64_t chunk, int) {
    int64_t* above_band = tallies + chunk * words;
    int64_t* listed = above_band + E + 1;
    int64_t* in_band = listed + E + 1;
    std::vector<Workspace::BandEntry>& entries = ws.band_entries[chunk];
    entries.clear();
    const int64_t i1 = std::min(T, (chunk + 1) * kChunkTokens) * K;
    for (int64_t i = chunk * kChunkTokens * K; i < i1; ++i) {
      const int32_t e = experts[i] < 0 ? E : experts[i];
      const float s = score[i];
      const bool surely = s > above[e];
      above_band[e] += surely;
      if (!surely && e < E) {
        list_entry(entries, descending_rank(s), i, e);
        ++listed[e];
        in_band[e] += s >= from[e];
      }
    }
  };
  pool.run(chunks, threads, classify);

  // Each overflowing expert's listed slots at [begin[e], begin[e + 1]) of ws.expert_ranks and
  // ws.band_items, in slot order (group_lists); one whose band missed (sure[e] = -1) then lists all
  // its slots at [begin[E] + whole[e], + count[e]). ws.cursor: begin [E + 1], sure [E], whole [E],
  // places [chunk][E].
  int64_t* begin = grown(ws.cursor, (chunks + 3) * E + 1);
  int64_t* sure = begin + E + 1;
  int64_t* whole = sure + E;
  int64_t* place = whole + E;
  group_lists(ws, chunks, E, threads, tallies, words, E + 1, 2 * (E + 1), capacity, begin, sure, place);
  const int64_t listed_total = begin[E];
  int64_t wholes = 0, most = 0;
  for (int e = 0; e < E; ++e) {
    if (!overflows(e)) continue;
    if (sure[e] < 0) {
      whole[e] = wholes;
      wholes += count[e];
    }
    most = std::max(most, sure[e] >= 0 ? begin[e + 1] - begin[e] : count[e]);
  }
  // An overflowing expert's list: [first, first + size) of rank and item.
  const auto list_of = [&](int64_t e) {
    return sure[e] >= 0 ? std::pair{begin[e], begin[e + 1] - begin[e]} : std::pair{listed_total + whole[e], count[e]};
  };
  uint32_t* rank = grown(ws.expert_ranks, listed_total + wholes);
  int32_t* item = grown(ws.band_items, listed_total + wholes);
  // The whole lists, read before any slot is dropped (the drops write the experts).
  auto list_whole = [&](int64_t e, int) {
    if (!overflows(static_cast<int>(e)) || sure[e] >= 0) return;
    int64_t n = listed_total + whole[e];
    for (int64_t i = 0; i < T * K; ++i)
      if (experts[i] == e) {
        rank[n] = descending_rank(score[i]);
        item[n++] = static_cast<int32_t>(i);
      }
  };
  if (wholes > 0) pool.run(E, threads, list_whole);

  // Each overflowing expert keeps the best of its list (all its slots above the band kept), the rest
  // dropped.
  int32_t* indexes = grown(ws.rank_scratch, threads * (2 * most + 1));  // pending, taken
  uint8_t* marks = grown(ws.chosen, threads * most);
  auto split = [&](int64_t e, int slot) {
    if (!overflows(static_cast<int>(e))) return;
    const auto [first, n] = list_of(e);
    const int64_t keep = sure[e] >= 0 ? capacity - sure[e] : capacity;
    int32_t* pending = indexes + slot * (2 * most + 1);
    int32_t* taken = pending + n;
    uint8_t* kept = marks + slot * most;
    std::fill(kept, kept + n, uint8_t{0});
    if (keep > 0) smallest_ranks(rank + first, n, keep, pending, taken, taken);
    for (int64_t i = 0; i < keep; ++i) kept[taken[i]] = 1;
    for (int64_t i = 0; i < n; ++i) {
      if (kept[i]) continue;
      experts[item[first + i]] = -1;
      out->weights[item[first + i]] = 0.0f;
    }
  };
  pool.run(E, threads, split);
  for (int e = 0; e < E; ++e) {
    if (!overflows(e)) continue;
    out->dropped_assignments += count[e] - capacity;
    const auto [first, n] = list_of(e);
    for (int64_t i = first; i < first + n; ++i)
      if (experts[item[i]] < 0) reweigh(item[i] / K);
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
// From this many experts (and kSampleFromTokens tokens) each expert's band comes from a sample.
constexpr int kSampleFromExperts = 32;
// Tokens a chunk of the sample's gathering by expert, or of the whole columns' transpose, takes.
constexpr int64_t kTransposeTokens = 256;
// Experts a step of the pass that marks and lists the keys takes.
constexpr int kBandBlock = 64;
// Tokens whose counts a byte holds.
constexpr int64_t kByteCountTokens = 255;
// From this many experts the per-token pass fetches the key rows two tokens ahead: it reads ~K
// scattered keys of a row many lines long, which the hardware's stream prefetch does not follow.
constexpr int kPrefetchFromExperts = 128;
// From and to this many choices a token's are put in order by counting, each against all (branch-free:
// an insertion mispredicts about once a choice); fewer or more, by an insertion into K slots.
constexpr int kCountedFrom = 4, kCountedTo = 24;

// Bit i set where flag[i] (0 or 1), i < count (a multiple of 8, at most 64): each 8 flags' bytes
// times 0x0102040810204080 hold those 8 bits in their top byte (no two partial products overlap).
inline uint64_t byte_bits(const uint8_t* flag, int64_t count) {
  uint64_t bits = 0;
  for (int64_t i = 0; i < count; i += 8) {
    uint64_t bytes;
    std::memcpy(&bytes, flag + i, sizeof bytes);
    bits |= (bytes * 0x0102040810204080u) >> 56 << i;
  }
  return bits;
}

// Each expert's band (band_ends) from a sample of every kSampleStride-th token, gathered by expert.
void expert_bands(const Config& c, int64_t T, int64_t capacity, int threads, Workspace& ws, float* above,
                  float* from) {
  const int E = c.E;
  const int64_t n = std::min(T / kSampleStride, kMaxSample);
  const double q = static_cast<double>(capacity) / static_cast<double>(T);
  const float* key = ws.stage().full_key;
  uint32_t* samples = grown(ws.expert_ranks, E * n);  // [E][n]
  auto gather = [&](int64_t chunk, int) {
    const int64_t i1 = std::min(n, (chunk + 1) * kTransposeTokens);
    for (int64_t i = chunk * kTransposeTokens; i < i1; ++i) {
      const float* token_key = key + i * T / n * E;
      for (int e = 0; e < E; ++e) samples[e * n + i] = descending_rank(token_key[e]);
    }
  };
  ThreadPool::instance().run((n + kTransposeTokens - 1) / kTransposeTokens, threads, gather);
  auto bound = [&](int64_t e, int) { band_ends(samples + e * n, n, q, &above[e], &from[e]); };
  ThreadPool::instance().run(E, threads, bound);
}

// mark_expert_choices' bands (expert_bands): a pass over the tokens, in chunks on the pool, marks
// each expert's keys above its band, counts them and lists those in it; group_lists then puts the
// lists by expert, in token order, and sets sure[e].
void band_choices(const Config& c, int64_t T, int64_t capacity, int threads, Workspace& ws, uint8_t* chosen,
                  int64_t row, int64_t* begin, int64_t* sure, int64_t* place) {
  const int E = c.E;
  ThreadPool& pool = ThreadPool::instance();
  const float* key = ws.stage().full_key;
  float* above = grown(ws.expert_bands, 2 * E);
  float* from = above + E;
  expert_bands(c, T, capacity, threads, ws, above, from);

  const int64_t chunks = (T + kChunkTokens - 1) / kChunkTokens;
  int64_t* tallies = grown(ws.chunk_tallies, chunks * 2 * E);  // [chunk] above the band [E], in it [E]
  if (static_cast<int64_t>(ws.band_entries.size()) < chunks) ws.band_entries.resize(static_cast<size_t>(chunks));
  uint8_t* byte_counts = grown(ws.byte_counts, threads * E);
  auto classify = [&](int64_t chunk, int slot) {
    int64_t* above_band = tallies + chunk * 2 * E;
    int64_t* in_band = above_band + E;
    std::fill(above_band, above_band + 2 * E, 0);
    std::vector<Workspace::BandEntry>& entries = ws.band_entries[chunk];
    entries.clear();
    const int64_t t0 = chunk * kChunkTokens, t1 = std::min(T, t0 + kChunkTokens);
    const float* __restrict band_above = above;  // (locals: the byte stores alias the captures)
    const float* __restrict band_from = from;
    // Each expert's count above its band a byte for up to kByteCountTokens tokens, then added to
    // the tally (int64 counts took ~100 operations a token of widening, adds and stores; bench/NOTES.md
    // item 102).
    uint8_t* __restrict run = byte_counts + slot * E;
    std::fill(run, run + E, uint8_t{0});
    int64_t counted = 0;  // tokens in run
    for (int64_t t = t0; t < t1; ++t) {
      const float* __restrict token_key = key + t * E;
      uint8_t* __restrict marks = chosen + t * row;
      for (int e0 = 0; e0 < E; e0 += kBandBlock) {
        const int m = std::min(kBandBlock, E - e0), whole = (m + 7) / 8 * 8;
        uint8_t band[kBandBlock];
        for (int i = 0; i < m; ++i) {  // (a plain loop the compiler vectorizes)
          const float x = token_key[e0 + i];
          const bool taken = x > band_above[e0 + i];
          marks[e0 + i] = taken;
          run[e0 + i] += taken;
          band[i] = !taken & (x >= band_from[e0 + i]);
        }
        std::fill(band + m, band + whole, uint8_t{0});
        for (uint64_t bits = byte_bits(band, whole); bits != 0; bits &= bits - 1) {
          const int e = e0 + __builtin_ctzll(bits);
          list_entry(entries, descending_rank(token_key[e]), t, e);
          ++in_band[e];
        }
      }
      std::fill(marks + E, marks + row, uint8_t{0});
      if (++counted == kByteCountTokens || t + 1 == t1) {
        for (int e = 0; e < E; ++e) {
          above_band[e] += run[e];
          run[e] = 0;
        }
        counted = 0;
      }
    }
  };
  pool.run(chunks, threads, classify);

  group_lists(ws, chunks, E, threads, tallies, 2 * E, E, E, capacity, begin, sure, place);  // (listed: the band)
}

// Expert choice's marks (docs/semantics.md §5): chosen[t·row + e] = 1 where expert e takes token t,
// one of its `capacity` smallest ranks (descending_rank of the keys), ties to the lower token. An
// expert whose capacity-th key lies in its band (band_choices) takes the rest of its tokens from
// the band, the others from their whole column (smallest_ranks, the experts on the pool). (Until
// bench/NOTES.md item 100, every expert's whole column: a transpose of the [T, E] keys, then
// smallest_ranks over T.)
void mark_expert_choices(const Config& c, int64_t T, int64_t capacity, int threads, Workspace& ws, uint8_t* chosen,
                         int64_t row) {
  const int E = c.E;
  ThreadPool& pool = ThreadPool::instance();
  const float* key = ws.stage().full_key;
  // Expert e's band entries at [begin[e], begin[e + 1]) of band_rank and band_token, chunk by chunk;
  // sure[e] its keys above the band, or -1 where it takes from its whole column: every expert below
  // kSampleFromTokens tokens or kSampleFromExperts experts (where a band would save little).
  const bool sampled = T >= kSampleFromTokens && E >= kSampleFromExperts;
  const int64_t chunks = (T + kChunkTokens - 1) / kChunkTokens;
  int64_t* begin = grown(ws.cursor, (chunks + 2) * E + 1);  // begin [E + 1], sure [E], places [chunk][E]
  int64_t* sure = begin + E + 1;
  int64_t* place = sure + E;
  std::fill(begin, begin + E + 1, 0);
  std::fill(sure, sure + E, -1);
  if (sampled) band_choices(c, T, capacity, threads, ws, chosen, row, begin, sure, place);
  else std::memset(chosen, 0, static_cast<size_t>(T * row));

  // The whole columns' ranks, [columns][T] after the bands', the experts' column place[e]; their
  // marks from the bands cleared. (A transpose, in chunks of tokens.)
  const int64_t total = begin[E];
  int64_t columns = 0, most = 0;
  for (int e = 0; e < E; ++e) {
    if (sure[e] < 0) place[e] = columns++;
    most = std::max(most, sure[e] >= 0 ? begin[e + 1] - begin[e] : T);
  }
  uint32_t* band_rank = grown(ws.expert_ranks, total + columns * T);
  const int32_t* band_token = ws.band_items.data();
  uint32_t* column_rank = band_rank + total;
  auto transpose = [&](int64_t chunk, int) {
    const int64_t t0 = chunk * kTransposeTokens, t1 = std::min(T, t0 + kTransposeTokens);
    for (int e = 0; e < E; ++e) {
      if (sure[e] >= 0) continue;
      uint32_t* column = column_rank + place[e] * T;
      for (int64_t t = t0; t < t1; ++t) column[t] = descending_rank(key[t * E + e]);
      if (sampled)
        for (int64_t t = t0; t < t1; ++t) chosen[t * row + e] = 0;
    }
  };
  if (columns > 0) pool.run((T + kTransposeTokens - 1) / kTransposeTokens, threads, transpose);

  const int64_t per_thread = 2 * most + 1;  // pending, taken
  int32_t* scratch = grown(ws.rank_scratch, threads * per_thread);
  auto choose = [&](int64_t e, int slot) {
    int32_t* pending = scratch + slot * per_thread;
    int32_t* taken = pending + most;
    if (sure[e] >= 0) {
      const int64_t need = capacity - sure[e];
      smallest_ranks(band_rank + begin[e], begin[e + 1] - begin[e], need, pending, taken, taken);
      for (int64_t i = 0; i < need; ++i) chosen[band_token[begin[e] + taken[i]] * row + e] = 1;
    } else {
      smallest_ranks(column_rank + place[e] * T, T, capacity, pending, taken, taken);
      for (int64_t i = 0; i < capacity; ++i) chosen[taken[i] * row + e] = 1;
    }
  };
  pool.run(E, threads, choose);
}

// Expert choice (docs/semantics.md §5): each expert's C best tokens marked in a [T, E] byte matrix
// (mark_expert_choices); then each token reads its row of it, experts ascending, and keeps its K best
// choices by key (ties to the lower expert) with an insertion into K slots, the tokens in chunks on
// the pool (tokens_in_chunks). (Until bench/NOTES.md item 91 a partial sort per expert compared
// strided keys: 3.8 us a token at E = 64; until item 96 a serial counting pass listed each token's
// choices.)
void assign_expert_choice(const Config& c, const StageParams& p, Workspace& ws, moe_route_outputs* out) {
  const int64_t T = p.tokens;
  const int E = c.E, K = c.K;
  const TokenStage& st = ws.stage();
  const int64_t capacity = T > 0 ? capacity_per_expert(c, T) : 0;
  const int threads = pass_threads(c, T * E, kParallelChoiceKeys);

  const int64_t row = (E + 7) / 8 * 8;  // a token's bytes of the marks: whole 8-byte words
  uint8_t* chosen = grown(ws.chosen, T * row);
  if (capacity > 0) mark_expert_choices(c, T, capacity, threads, ws, chosen, row);
  else std::memset(chosen, 0, static_cast<size_t>(T * row));

  // Each token on its own, on the pool in chunks of tokens: its choices (experts ascending), put in
  // order by key (by counting or an insertion, see kCountedFrom) and the first K kept, their weights.
  // Where the keys are the scores (StageParams::scores_are_keys, no s matrix), a kept slot's s comes
  // from its key, in cache (reading the [T, E] s cost a miss a slot at E = 256).
  constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
  const bool scores_are_keys = st.full_score == nullptr;
  uint32_t* rank_scratch = grown(ws.expert_ranks, threads * (E + K));
  int32_t* list_scratch = grown(ws.rank_scratch, threads * 2 * E);
  float* slot_scratch = grown(ws.slot_values, threads * K);
  tokens_in_chunks(c, T, threads, ws, out, [&](int64_t t0, int64_t t1, const ChunkTally& tally, int slot) {
    uint32_t* rank = rank_scratch + slot * (E + K);  // a choice's descending_rank; [K] kept ones' after
    int32_t* expert = list_scratch + slot * 2 * E;   // a choice's expert, then those in order
    int32_t* order = expert + E;
    float* score = slot_scratch + slot * K;
    for (int64_t t = t0; t < t1; ++t) {
      const float* token_key = st.full_key + t * E;
      const uint8_t* marks = chosen + t * row;
      if (E >= kPrefetchFromExperts && t + 2 < t1)  // (the few keys read of a long row: no stream)
        for (int e = 0; e < E; e += 16) __builtin_prefetch(token_key + 2 * E + e);
      int n = 0;
      for (int e0 = 0; e0 < E; e0 += 64) {
        for (uint64_t bits = byte_bits(marks + e0, std::min<int64_t>(64, row - e0)); bits != 0; bits &= bits - 1) {
          const int e = e0 + __builtin_ctzll(bits);
          rank[n] = descending_rank(token_key[e]);
          expert[n++] = e;
        }
      }
      const int k = std::min(n, K);
      int32_t* experts = out->experts + t * K;
      if (n >= kCountedFrom && n <= kCountedTo) {  // (an equal rank: the lower expert first)
        for (int i = 0; i < n; ++i) {
          int place = 0;
          for (int j = 0; j < i; ++j) place += rank[j] <= rank[i];
          for (int j = i + 1; j < n; ++j) place += rank[j] < rank[i];
          order[place] = expert[i];
        }
        for (int j = 0; j < k; ++j) experts[j] = order[j];  // (std::copy: a memmove call)
      } else {
        uint32_t* kept = rank + n;
        int filled = 0;
        for (int i = 0; i < n; ++i) {
          const uint32_t x = rank[i];
          if (filled == K && !(x < kept[K - 1])) continue;  // (an equal rank: the lower expert stays)
          int j = filled < K ? filled++ : K - 1;
          for (; j > 0 && kept[j - 1] > x; --j) {
            kept[j] = kept[j - 1];
            experts[j] = experts[j - 1];
          }
          kept[j] = x;
          experts[j] = expert[i];
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
        score[j] = scores_are_keys ? (token_key[e] == kMinusInf ? 0.0f : token_key[e]) : st.full_score[t * E + e];
      }
      out->experts_per_token[t] = k;
      *tally.dropped += n - k;
      ++tally.k_histogram[k];
      // u from the [T, E] matrix, or from the input (StageParams::logits_in_input), where a
      // non-finite logit is a sanitized one's -inf.
      const float* token_logit = (st.full_logit ? st.full_logit : static_cast<const float*>(p.input)) + t * E;
      const auto logit = [&](int j) {
        const float u = token_logit[experts[j]];
        return std::isfinite(u) ? u : kMinusInf;
      };
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
  int64_t entries = 0;
  for (const std::vector<BandEntry>& chunk : band_entries) entries += capacity_bytes(chunk);
  return entries + capacity_bytes(counts_before, counts_before_valid, cursor, k_histogram, slot_values,
                                  expert_ranks, rank_scratch, chosen, byte_counts, expert_bands, band_entries,
                                  band_items, chunk_tallies, candidate_expert_, candidate_score_, candidate_logit_,
                                  top_scores_, full_key_, full_score_, full_logit_, score_entropy_, norm_,
                                  logsumexp_, loss_entropy_, p_sum_, invalid_);
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
    if (!p.scores_are_keys) stage_.full_score = grown(full_score_, T * E);
    if (!p.logits_in_input()) stage_.full_logit = grown(full_logit_, T * E);
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
    assign_expert_choice(c, p, ws, out);
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
