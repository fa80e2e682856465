// The token stage after the gate, for one block of tokens (simd_backend.h, RowBlock): validation,
// scores, keys, group mask, the K best candidates and what the strategies and losses need, and in a
// fused call the token's assignment (core/assign.h, assign_token). The vector twin of
// scalar/topk_softmax.cc; docs/semantics.md §2–§4 defines every quantity.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../../core/row_select.h"
#include "vec_math.h"

namespace moe {
namespace simd {
namespace MOE_SIMD_ISA {

constexpr float kInf = std::numeric_limits<float>::infinity();
alignas(64) constexpr int32_t kLaneIndex[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// The finiteness check of the selection paths: an accumulator that x * 0 + acc keeps at 0 unless
// some x is infinite or NaN (one FMA a vector), and whether every lane of it stayed 0.
inline F add_to_check(F check, F x) { return Vec::fmadd(x, Vec::zero(), check); }
inline bool check_passed(F check) { return Vec::bits(Vec::eq(check, Vec::zero())) == Vec::bits(Vec::first(kLanes)); }

// Whether every logit of a row is finite.
inline bool finite_row(const float* row, int E) {
  F check = Vec::zero();
  int e = 0;
  for (; e + kLanes <= E; e += kLanes) check = add_to_check(check, Vec::load(row + e));
  if (e < E) check = add_to_check(check, Vec::load_tail(row + e, E - e, 0.0f));
  return check_passed(check);
}

// The finiteness check of the selections across tokens, on the keys (logit_key): a logit that is
// not finite makes its w (= max - u, max the row's) +inf or NaN, and its key at least +inf's bits
// (keys have the sign bit clear, value_bits, so they compare as their floats do), whatever the row's
// max came out as. So does a w^p that overflows from finite logits: keys of +inf's bits | e, which
// order as the oracle's scores of 0 do (ties to the lower expert). So only when some lane's largest
// key over its real experts, `worst`, is that large are the rows [0, rows) checked one by one.
// Sigmoid keys (logit_key) are signed: there a logit of +inf (d = -inf), or a NaN with its sign bit
// set, gives a key below every finite d's, kLeastFiniteKey (-FLT_MAX's image), and so the least one,
// `least` (best[0]).
constexpr int32_t kLeastFiniteKey = static_cast<int32_t>(0x80800000u);
inline bool keys_finite(Vec::I worst, const float* base, int64_t stride, int rows, int E, const Vec::I* least = nullptr) {
  uint32_t suspect = Vec::bits(Vec::int_gt(worst, Vec::int_set1(0x7f7fffff)));
  if (least) suspect |= Vec::bits(Vec::int_gt(Vec::int_set1(kLeastFiniteKey), *least));
  if (suspect == 0) return true;
  for (int l = 0; l < rows; ++l)
    if (!finite_row(base + l * stride, E)) return false;
  return true;
}

// An order-preserving int32 image of a float (no NaN): a larger float gives a larger int, and -0 a
// smaller one than +0 (select_in_vector, where that would break a tie, makes its -0 keys +0 first).
// The same operation maps it back.
inline Vec::I sortable(Vec::I bits) {
  return Vec::int_xor(bits, Vec::int_and(Vec::shift_right_arith<31>(bits), Vec::int_set1(0x7fffffff)));
}

// The bitonic sorting network of kLanes lanes, descending: each stage compares every lane with
// lane ^ distance and keeps the larger or the smaller value.
struct SortStage {
  int32_t partner[kLanes];
  uint32_t keeps_max;  // a bit per lane
};
constexpr int log2_lanes() { return kLanes == 16 ? 4 : kLanes == 8 ? 3 : 2; }
constexpr int kSortStages = log2_lanes() * (log2_lanes() + 1) / 2;
struct SortNetwork {
  SortStage stage[kSortStages];
};
constexpr SortNetwork make_sort_network() {
  SortNetwork net{};
  int at = 0;
  for (int block = 2; block <= kLanes; block *= 2) {
    for (int distance = block / 2; distance > 0; distance /= 2, ++at) {
      net.stage[at].keeps_max = 0;
      for (int lane = 0; lane < kLanes; ++lane) {
        const int partner = lane ^ distance;
        net.stage[at].partner[lane] = partner;
        if (((lane & block) == 0) == (lane < partner)) net.stage[at].keeps_max |= 1u << lane;
      }
    }
  }
  return net;
}
constexpr SortNetwork kSortNetwork = make_sort_network();

// The network's stages [first, kSortStages): all of them sort any v; the last log2_lanes() (blocks of
// kLanes) sort a bitonic v.
inline Vec::I sort_descending(Vec::I v, int first = 0) {
#pragma GCC unroll 16
  for (int i = first; i < kSortStages; ++i) {
    const Vec::I other = Vec::permute(v, Vec::int_load(kSortNetwork.stage[i].partner));
    v = Vec::blend_bits(kSortNetwork.stage[i].keeps_max, Vec::int_max(v, other), Vec::int_min(v, other));
  }
  return v;
}

// kLanes - 1 - lane, for each lane (the last kLanes entries for kLanes lanes).
alignas(64) constexpr int32_t kReversedLane[16] = {15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0};

// The sortable image of keys (a float vector) with its low `bits` bits replaced by `low`: a lower
// `low` ranks after a higher one among keys equal in the remaining bits. The caller makes -0 +0 first
// (x + 0), since the sortable image puts -0 below +0 (u - max is -0 for a -0 logit where the max came
// out +0), so that exact ties resolve by `low` alone, as the oracle's do by position.
inline Vec::I key_image(F keys, int bits, Vec::I low) {
  return Vec::and_or(sortable(Vec::to_bits(keys)), Vec::int_set1(-(1 << bits)), low);
}

// The k <= kLanes best lanes of `keys` in key order: their `index` lanes into out[0..kLanes) and
// their keys into best[0..kLanes) (whole vectors; lanes past k are don't-care). Each key's sortable
// image with its low bits replaced by the lane (a lower lane ranks first) is sorted; keys that differ
// only in those bits (2^-19 relative at most) may come out in lane order, a near-tie that
// docs/semantics.md §13 allows. Exact ties resolve exactly as the oracle's (key_image).
inline void select_in_vector(F keys, Vec::I index, int32_t* out, float* best) {
  keys = Vec::add(keys, Vec::zero());
  const Vec::I lane_bits = Vec::int_set1(kLanes - 1);
  const Vec::I sorted = sort_descending(key_image(keys, log2_lanes(), Vec::int_load(kReversedLane + 16 - kLanes)));
  const Vec::I lane = Vec::int_sub(lane_bits, Vec::int_and(sorted, lane_bits));
  Vec::store_int(out, Vec::permute(index, lane));
  Vec::store(best, Vec::from_bits(Vec::permute(Vec::to_bits(keys), lane)));
}

// The k <= kLanes best of the 2 kLanes entries key/index[0, 2 kLanes) in key order (descending key,
// ties to the lower position) into out[0..k) and best[0..k): as select_in_vector, with the position
// in the low log2(2 kLanes) bits of each image (near-ties within 2^-(23 - log2(2 kLanes)) relative,
// docs/semantics.md §13); each vector sorted, the kLanes best of both are the larger of each lane of
// one and the mirror lane of the other, a bitonic sequence, which the network's last stages sort.
inline void select_in_two_vectors(const float* key, const int32_t* index, int k, int32_t* out, float* best) {
  constexpr int kPositions = 2 * kLanes;
  const Vec::I reversed = Vec::int_load(kReversedLane + 16 - kLanes);
  const auto sorted = [&](int v) {  // low bits: kPositions - 1 - position
    const Vec::I low = Vec::int_add(reversed, Vec::int_set1((1 - v) * kLanes));
    return sort_descending(key_image(Vec::add(Vec::load(key + v * kLanes), Vec::zero()), log2_lanes() + 1, low));
  };
  const Vec::I first = sorted(0);
  alignas(64) int32_t top[kLanes];
  Vec::store_int(top, sort_descending(Vec::int_max(first, Vec::permute(sorted(1), reversed)), kSortStages - log2_lanes()));
  for (int j = 0; j < k; ++j) {
    const int p = kPositions - 1 - (top[j] & (kPositions - 1));
    out[j] = index[p];
    best[j] = key[p];
  }
}

// The m > kLanes entries of key/index in key order (descending key, ties to the lower position)
// into out[0..k) and best[0..k), by counting for each entry the entries before it. key[m..) up to a
// whole vector must hold -inf; order[] is scratch of padded(m) words.
inline void rank_place(const float* key, const int32_t* index, int m, int k, int32_t* out, float* best,
                       int32_t* order) {
  const int vectors = (m + kLanes - 1) / kLanes;
  for (int p = 0; p < m; ++p) {
    const F x = Vec::set1(key[p]);
    int rank = 0;
    for (int v = 0; v < vectors; ++v) {
      const F block = Vec::load(key + v * kLanes);
      const uint32_t before = v < p / kLanes ? ~0u : v == p / kLanes ? (1u << (p % kLanes)) - 1 : 0u;
      rank += __builtin_popcount(Vec::bits(Vec::gt(block, x))) +
              __builtin_popcount(Vec::bits(Vec::eq(block, x)) & before);
    }
    order[rank] = p;
  }
  for (int j = 0; j < k; ++j) {
    out[j] = index[order[j]];
    best[j] = key[order[j]];
  }
}

// Each lane's largest and second largest of the vectors added (-inf where there were fewer).
struct LaneMaxima {
  F first = Vec::set1(-kInf), second = Vec::set1(-kInf);
  void add(F x) {
    second = Vec::max(second, Vec::min(first, x));
    first = Vec::max(first, x);
  }
  void add(const LaneMaxima& o) {
    second = Vec::max(Vec::max(second, o.second), Vec::min(first, o.first));
    first = Vec::max(first, o.first);
  }
};

// Group-limited routing (core/row_select.h, mask_groups, whose choice this is exactly): each group's
// score is the sum of its two largest keys (in double), taken from its lanes' (LaneMaxima over its
// vectors, the tail's padding -inf), then across lanes: the largest of the lanes' largest, and the
// second is that value again if two lanes hold it, otherwise the largest of the other lanes' largest
// and every lane's second; keep_top_groups then keeps the best `select`. In place of the scalar loop
// (a branch a key) and its stable sort (an allocation a token), which took half of the DeepSeek-V3-
// style routing's time (bench/NOTES.md item 59). score and order: scratch of `groups`.
inline void keep_best_groups(float* key, int groups, int size, int select, double* score, int32_t* order) {
  for (int g = 0; g < groups; ++g) {
    const float* k = key + static_cast<int64_t>(g) * size;
    LaneMaxima m;
    for (int i = 0; i < size; i += kLanes) m.add(Vec::load_tail(k + i, size - i < kLanes ? size - i : kLanes, -kInf));
    const float first = Vec::reduce_max(m.first);
    const M top = Vec::eq(m.first, Vec::set1(first));
    const float others = __builtin_popcount(Vec::bits(top)) > 1
                             ? first
                             : Vec::reduce_max(Vec::select(top, Vec::set1(-kInf), m.first));
    const float second = std::max(others, Vec::reduce_max(m.second));
    score[g] = size == 1 ? first : static_cast<double>(first) + second;
  }
  keep_top_groups(key, groups, size, select, score, order);
}

// The k best of key[0..n) in key order (descending key, ties to the lower index): their indices into
// idx[0..) and keys into best[0..), each with room for max(k, kLanes) entries. key[n..) up to a whole
// vector must hold -inf; `keys`, `index` and `order` are scratch of padded(n) words.
// For k <= kLanes, the k-th largest of the lane-wise maxima bounds the k-th largest key from below
// (those maxima are k distinct entries), so only the keys at or above it remain: about 1.3k of them
// for random keys where 2k <= kLanes. For 2k > kLanes (AVX2's k = 5-8) that bound let ~2.3k through
// (k = 8: 18 of E = 64, 21 of 1024), so there the bound is the k-th largest of the lanes' largest and
// second largest together (2 kLanes distinct entries): ~1.1k survivors, more than a vector in ~45% of
// rows, at most two in all but ~1e-4 (random keys). The survivors are compressed into keys[] and
// index[] (each vector's survivors stored at the running count, so that the only chain from vector
// to vector is that count) and sorted in one vector, or two. (Appending them to a vector in registers
// made each vector wait on the previous one's expand, and on AVX2 and NEON looped over the set bits:
// logits of E = 1024 from DRAM, one thread, AVX-512 1.85-1.95 -> 1.72-1.76 ms, AVX2 3.4 -> 2.4; E = 300
// on AVX2 6.5 -> 2.6.) Larger k, or more than two vectors of survivors: the shared partial sort, or
// counting ranks (which, before the second maxima and the two vectors, took a third of the engine's
// instructions in AVX2's sigmoid scoring of E = 64, K = 8: bench/NOTES.md item 57).
// With an offset (k <= kLanes only), the keys are key[e] - offset, computed as they are read, and
// lane_max, when given, holds the lanes' two largest of key[] (so that the rows_by_logit_order phase
// selects on v = u - max without a pass that stores v and a pass for the maxima).
inline void select_best(const float* key, int n, int k, int32_t* idx, float* best, float* keys,
                        int32_t* index, int32_t* order, std::vector<int32_t>& sort_order, float offset = 0.0f,
                        const LaneMaxima* lane_max = nullptr) {
  const Vec::I lanes_index = Vec::int_load(kLaneIndex);
  if (k > kLanes) {
    select_top(key, n, k, sort_order, idx);
    for (int j = 0; j < k; ++j) best[j] = key[idx[j]];
    return;
  }
  const F off = Vec::set1(offset);  // x - 0 is x, -inf included
  if (n <= kLanes) {
    select_in_vector(Vec::sub(Vec::load(key), off), lanes_index, idx, best);
    return;
  }
  LaneMaxima maxima;
  if (lane_max) {
    maxima = *lane_max;
  } else {
    LaneMaxima acc[2];  // two chains of max latency, not one
    int e0 = 0;
    for (; e0 + 2 * kLanes <= n; e0 += 2 * kLanes) {
      acc[0].add(Vec::load(key + e0));
      acc[1].add(Vec::load(key + e0 + kLanes));
    }
    if (e0 < n) acc[0].add(Vec::load(key + e0));
    maxima = acc[0];
    maxima.add(acc[1]);
  }
  // x - offset is non-decreasing in x, so the maxima of the keys are those of key[] less the offset.
  const auto sorted = [&](F x, int32_t* to) { Vec::store_int(to, sort_descending(sortable(Vec::to_bits(Vec::sub(x, off))))); };
  alignas(64) int32_t first[kLanes], second[kLanes];
  sorted(maxima.first, first);
  int32_t kth = first[k - 1];
  if (2 * k > kLanes) {  // the k largest of both sorted lists: the larger of first[j] and second[k - 1 - j]
    sorted(maxima.second, second);
    kth = std::max(first[0], second[k - 1]);
    for (int j = 1; j < k; ++j) kth = std::min(kth, std::max(first[j], second[k - 1 - j]));
  }
  const F bound = Vec::from_bits(sortable(Vec::int_set1(kth)));
  // Survivors so far never outnumber the keys before e0, so each whole-vector store stays inside
  // padded(n).
  int m = 0;
  for (int e0 = 0; e0 < n; e0 += kLanes) {
    const int lanes = n - e0 < kLanes ? n - e0 : kLanes;
    const F block = Vec::sub(Vec::load(key + e0), off);
    m += Vec::compress(keys + m, index + m, block, e0, Vec::bits(Vec::ge(block, bound)) & ((1u << lanes) - 1));
  }
  // Lanes past m, up to 2 kLanes: -inf keys, which rank after every survivor (k <= m of them reach
  // the bound), and padded(n) holds them.
  Vec::store(keys + m, Vec::set1(-kInf));
  if (m <= kLanes) {
    select_in_vector(Vec::load(keys), Vec::int_load(index), idx, best);
  } else if (m <= 2 * kLanes) {
    select_in_two_vectors(keys, index, k, idx, best);
  } else {  // rare
    rank_place(keys, index, m, k, idx, best, order);
  }
}

// sum over the first n lanes of the vectors of `terms(e0, lanes) -> F`, accumulated in double.
template <typename Terms>
inline double sum_double(int n, Terms&& terms) {
  double acc[kLanes] = {};
  for (int e0 = 0; e0 < n; e0 += kLanes) {
    const int lanes = n - e0 < kLanes ? n - e0 : kLanes;
    Vec::add_to_double(acc, terms(e0, lanes), lanes);
  }
  return Vec::reduce_add_double(acc);
}

// -sum x ln x over the entries 0 < x (subnormal x, whose terms are below 1e-36, count as 0).
inline double entropy(const float* x, int n) {
  return -sum_double(n, [&](int e0, int) {
    const F v = Vec::load(x + e0);
    const M positive = Vec::ge(v, Vec::set1(std::numeric_limits<float>::min()));
    const F safe = Vec::max(v, Vec::set1(std::numeric_limits<float>::min()));
    return Vec::select(positive, Vec::mul(v, vlog(safe)), Vec::zero());
  });
}

// exp(u - max) of each of the E entries of u (the padding up to a whole vector -inf) into e; returns
// their sum.
inline float softmax_numerators(const float* u, int E, float max, float* e) {
  F sum = Vec::zero();
  const F vm = Vec::set1(max);
  for (int e0 = 0; e0 < E; e0 += kLanes) {
    const F x = vexp(Vec::sub(Vec::load(u + e0), vm));
    Vec::store(e + e0, x);
    sum = Vec::add(sum, x);
  }
  return Vec::reduce_add(sum);
}

// In the loss terms' exp(v) v: exp(v) is 0 where it would not be a normal float (the general path's
// entropy counts such p_e as 0 too), and v is clamped there (it is even -inf where u - m overflows).
constexpr float kLossFloor = -88.0f;

// exp(u - max) summed lane by lane over the E entries of u, a vector at a time (the tail past E
// read as -inf); reduce_add gives softmax_numerators' sum, bit for bit, without storing the terms.
// kDot: also exp(v) v (v = u - max, clamped at kLossFloor) summed into *dot the same way.
template <bool kDot = false>
inline F lane_exp_sums(const float* u, int E, F max, F* dot = nullptr) {
  F sum = Vec::zero(), terms = Vec::zero();
  const auto add = [&](F v) {
    const F x = vexp(v);
    sum = Vec::add(sum, x);
    if constexpr (kDot) terms = Vec::fmadd(x, Vec::max(v, Vec::set1(kLossFloor)), terms);
  };
  int e0 = 0;
  for (; e0 + kLanes <= E; e0 += kLanes) add(Vec::sub(Vec::load(u + e0), max));
  if (e0 < E) add(Vec::sub(Vec::load_tail(u + e0, E - e0, -kInf), max));
  if constexpr (kDot) *dot = terms;
  return sum;
}

// The sigmoid scores 1 / (1 + exp(-x)); 0, as the oracle's f32 formula gives it, where exp(-x)
// overflows (vexp's value there is finite), and so where x is -inf (a sanitized logit).
inline F vsigmoid(F x) {
  const F s = Vec::div(Vec::set1(1.0f), Vec::add(Vec::set1(1.0f), vexp(Vec::sub(Vec::zero(), x))));
  return Vec::zero_where(Vec::lt(x, Vec::set1(-88.7228394f)), s);
}

// p_sum[0, E) += the vectors probabilities(e0) (experts [e0, e0 + kLanes)), in double.
template <class Probabilities>
inline void add_to_p_sum(double* p_sum, int E, Probabilities&& probabilities) {
  for (int e0 = 0; e0 < E; e0 += kLanes)
    Vec::add_to_double(p_sum + e0, probabilities(e0), E - e0 < kLanes ? E - e0 : kLanes);
}

// A valid token's loss terms (SPEC §7): its logsumexp, H(p) of its probabilities p[0, E), and p added
// to the chunk's p_sum.
inline void add_losses(const float* p, int E, double logsumexp, const TokenStage& out, int64_t t, double* p_sum) {
  out.logsumexp[t] = logsumexp;
  out.loss_entropy[t] = entropy(p, E);
  add_to_p_sum(p_sum, E, [&](int e0) { return Vec::load(p + e0); });
}

// ||row||_2 of a row of n elements of any input dtype, squares summed in double.
inline double norm_of(const void* row, moe_dtype dtype, int64_t n) {
  Vec::D acc = Vec::zero_double();
  with_loader(dtype, [&](auto loader) {
    using L = decltype(loader);
    const typename L::T* x = static_cast<const typename L::T*>(row);
    for (int64_t i = 0; i < n; i += kLanes) {
      const int lanes = n - i < kLanes ? static_cast<int>(n - i) : kLanes;
      acc = Vec::add_squares_double(acc, lanes == kLanes ? L::load(x + i) : L::tail(x + i, lanes));  // (tail: 0s)
    }
  });
  return std::sqrt(Vec::reduce_double(acc));
}

// Validation of one row: copies src[0..E) into u with every non-finite entry, and the padding up to a
// whole vector, at -inf. Returns whether an entry was non-finite; *max gets the row's maximum.
// Fetches the row at `ahead` unless null (E floats, read later; a prefetch never faults) into L2, a
// line per line of src: the token-by-token paths read rows one after another with a selection
// between them that reads nothing, and the hardware prefetcher alone left a third of the time on
// this function's loads (logits of E = 1024 from DRAM). row_ahead() says which. lane_max, unless
// null, gets the lanes' two largest of u (padding included).
inline bool sanitized_copy(const float* src, int E, float* u, float* max, const float* ahead, LaneMaxima* lane_max) {
  LaneMaxima vmax;
  bool invalid = false;
  for (int e0 = 0; e0 < E; e0 += kLanes) {
    if (ahead && e0 % 16 == 0) __builtin_prefetch(ahead + e0, 0, 2);
    const int lanes = E - e0 < kLanes ? E - e0 : kLanes;
    const F x = lanes == kLanes ? Vec::load(src + e0) : Vec::load_tail(src + e0, lanes, 0.0f);
    const M finite = Vec::lt(Vec::abs(x), Vec::set1(kInf));
    const uint32_t real = Vec::bits(Vec::first(lanes));
    invalid |= (Vec::bits(finite) & real) != real;
    const F v = Vec::select(Vec::mask_and(finite, Vec::first(lanes)), x, Vec::set1(-kInf));
    Vec::store(u + e0, v);
    vmax.add(v);
  }
  *max = Vec::reduce_max(vmax.first);
  if (lane_max) *lane_max = vmax;
  return invalid;
}

// The row sanitized_copy fetches while it copies row i of a block: about 64 KiB on in the input
// (logits of E = 1024 from DRAM, one thread: 4 rows (16 KiB) into L1 1.38-1.40 ms, 16 rows into L2
// 0.98-1.06, none 1.44-1.98; 32-64 rows measured the same as 16 within the noise); none when the
// block's u is scratch (a gate block, widened logits), which nothing follows.
inline const float* row_ahead(const RowBlock& b, int i) {
  if (!b.u_is_input) return nullptr;
  const int64_t rows = 1 + (int64_t{64} << 10) / (b.u_stride * static_cast<int64_t>(sizeof(float)));
  return b.u + (i + rows) * b.u_stride;
}

// Rows per phase of rows_by_logit_order.
constexpr int kPhaseRows = 4;

// Up to these E and K, rows_by_logit_order works across tokens: E so that an expert index fits in
// the 10 low bits of a key (rows_across_tokens; docs/semantics.md §13 bounds what they cost); on NEON
// (four lanes, not measured beyond 256) up to 256. On AVX2 the columns take E = 257-1024 too (at E =
// 1024 the columns are 32 KiB, L1's size): against token by token, from DRAM, two threads,
// E = 300 -63%, E = 512 -46%, E = 1024 -43% (bench/NOTES.md item 56).
constexpr int kAcrossMaxE = kLanes >= 8 ? 1024 : 256, kAcrossMaxK = kLanes < 8 ? kLanes : 8;
// select-then-softmax's near-ties are on its keys u, not on the scores: truncating w = max - u (up to
// 2 max|u|) to 23 - b bits stays within SPEC §10's 1e-5 max|u| for b <= 5 (E <= 32) only (docs/
// semantics.md §13).
constexpr int kSelectThenSoftmaxAcrossMaxE = 32;
// Above it, up to kScaledKeyMaxE, select-then-softmax's tokens still go across tokens, from the
// columns, on keys of w' = (max - u) / (2 m), m = max |u| of the row (w' <= 1), raised to the power
// p = scaled_key_power(E): b bits of position then cost |u1 - u2| < 2^(b-22) / p max|u| = 7.6e-6
// max|u| whatever the logits' scale (bench/NOTES.md item 84). Above that, one by one, on keys of
// u - max that keep 18 bits.
constexpr int kScaledKeyMaxE = 128;
constexpr int scaled_key_power(int E) { return E <= 64 ? 2 : 4; }
// Sigmoid or softmax scores with a selection bias or groups (DeepSeek-V3's routing and its kin,
// DeepSeek-V2's, ERNIE 4.5's): up to this E and this many groups across tokens
// (score_keys_across_tokens), on keys of the scores s + bias scaled the same way: w' = (max - key) /
// (2 m), m = max |key| of the token's kept experts, and p = score_key_power(E), 8 (of 16 w', exact)
// for b = 8, and for b = 9 the 32nd power of 1 + w' (w'^16 would underflow where the keys must stay
// apart; 1 + w' in [1, 2] cannot), within across_rows' bound (NEON: 256). Above, and with more
// groups (whose ranks are counted pair by pair), one by one.
constexpr int kScoreKeyMaxE = std::min(512, kAcrossMaxE), kScoreKeyMaxGroups = 16;
constexpr int score_key_power(int E) { return E <= 32 ? 1 : E <= 64 ? 2 : E <= 128 ? 4 : E <= 256 ? 8 : 32; }
// Up to this E, rows_across_tokens selects from the columns (column_keys); above it, knockout_keys,
// which pays on AVX-512 from three vectors of experts on (in cache, one thread, with gathers in its
// descent: E = 256 -28%, E = 128 -20%, E = 64 unchanged, E = 32 3-13% slower; with the permutes that
// replaced them, E = 24 and 32 were still 15-20% slower than the columns) but not on AVX2 (eight
// lanes, sixteen registers: E = 32 to 200 10-40% slower, E = 256 -8%, with gathers), and NEON has
// neither gathers nor two-source permutes.
constexpr int kColumnMaxE = kLanes >= 16 ? 2 * kLanes : kAcrossMaxE;
// Sigmoid scores' keys (logit_key) on d = min(max, 0) - u, signed, raised to key_power(E) with its
// sign kept: b bits of position cost up to 0.56 2^(b-23) / p max_s (max <= 0) or 0.45 2^(b-23) / p
// max_s (max > 0), within SPEC §10's 1e-5 max_s for every E, as the softmax keys' powers are
// (docs/semantics.md §13). Up to kSigmoidAcrossMaxE their rows go across tokens: from the columns on
// every ISA up to kSigmoidColumnsMaxE, AVX-512's 33-128 too (until item 80 of bench/NOTES.md those
// went token by token there: logits-64x8 took 4.6x the columns' time), and above it by AVX-512's
// knockout_keys. (Until item 99 sigmoid rows above E = 128 went token by token on every ISA; at
// E = 1024 across tokens took the token path's time, -9 to +5% on AVX-512, +3% on AVX2.)
constexpr int kSigmoidAcrossMaxE = std::min(512, kAcrossMaxE);
constexpr int kSigmoidColumnsMaxE = kLanes >= 16 ? 128 : kSigmoidAcrossMaxE;
// The most experts whose columns rows_across_tokens keeps (column_keys), by scoring (softmax's
// include select-then-softmax's scaled keys).
template <bool kSigmoid>
constexpr int kColumnsMaxE =
    kSigmoid ? kSigmoidColumnsMaxE : kColumnMaxE > kScaledKeyMaxE ? kColumnMaxE : kScaledKeyMaxE;
// Whether rows_across_tokens keys a row of c.E experts on the scaled keys, and whether it takes the
// row from the columns: up to kColumnMaxE, and for the scaled keys, which knockout_keys lacks.
template <bool kSigmoid>
inline bool scaled_keys(const Config& c) {
  return !kSigmoid && c.weights_are_softmax && c.E > kSelectThenSoftmaxAcrossMaxE;
}
template <bool kSigmoid>
inline bool by_columns(const Config& c) {
  return c.E <= (kSigmoid ? kSigmoidColumnsMaxE : kColumnMaxE) || scaled_keys<kSigmoid>(c);
}

// Sorting networks over vectors of int keys, lane by lane (ascending).
inline void compare_swap(Vec::I& a, Vec::I& b) {
  const Vec::I low = Vec::int_min(a, b);
  b = Vec::int_max(a, b);
  a = low;
}

// k[0..L) sorted: the optimal networks (19 comparators for 8, 5 for 4).
template <int L>
inline void sort_keys(Vec::I* k) {
  static constexpr int kPairs8[19][2] = {{0, 2}, {1, 3}, {4, 6}, {5, 7}, {0, 4}, {1, 5}, {2, 6},
                                         {3, 7}, {0, 1}, {2, 3}, {4, 5}, {6, 7}, {2, 4}, {3, 5},
                                         {1, 4}, {3, 6}, {1, 2}, {3, 4}, {5, 6}};
  static constexpr int kPairs4[5][2] = {{0, 1}, {2, 3}, {0, 2}, {1, 3}, {1, 2}};
  if constexpr (L == 8) {
#pragma GCC unroll 19
    for (const auto& p : kPairs8) compare_swap(k[p[0]], k[p[1]]);
  }
  if constexpr (L == 4) {
#pragma GCC unroll 5
    for (const auto& p : kPairs4) compare_swap(k[p[0]], k[p[1]]);
  }
  if constexpr (L == 2) compare_swap(k[0], k[1]);
}

// best[0..L) <- the L smallest of the sorted lists best and k, sorted: min(best[i], k[L-1-i]) are
// those L keys as a bitonic sequence, which the bitonic merger then sorts (8 + 12 comparators for
// L = 8, where inserting 8 keys one by one costs 64).
template <int L>
inline void merge_keys(Vec::I* best, const Vec::I* k) {
#pragma GCC unroll 8
  for (int i = 0; i < L; ++i) best[i] = Vec::int_min(best[i], k[L - 1 - i]);
#pragma GCC unroll 3
  for (int d = L / 2; d > 0; d /= 2)
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i)
      if ((i & d) == 0) compare_swap(best[i], best[i + d]);
}

// best[0..L) <- the L smallest of the sorted list best and the keys k[0..L) (unsorted; sorted
// afterwards), sorted; with `first`, the keys alone.
template <int L>
inline void add_keys(Vec::I* best, Vec::I* k, bool first) {
  sort_keys<L>(k);
  if (first) {
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i) best[i] = k[i];
  } else {
    merge_keys<L>(best, k);
  }
}

// v[0..N) holds N * kLanes floats in order, rows of N (N a power of two): afterwards v[c] holds
// column c, lane r being row r. N log2 N unzips.
template <int N>
[[gnu::always_inline]] inline void to_columns(F* v) {
  if constexpr (N > 1) {
    F even[N / 2], odd[N / 2];
#pragma GCC unroll 8
    for (int i = 0; i < N / 2; ++i) Vec::unzip(v[2 * i], v[2 * i + 1], even[i], odd[i]);
    to_columns<N / 2>(even);  // the even columns, as rows of N / 2
    to_columns<N / 2>(odd);
#pragma GCC unroll 8
    for (int c = 0; c < N / 2; ++c) {
      v[2 * c] = even[c];
      v[2 * c + 1] = odd[c];
    }
  }
}

// The inverse of to_columns: columns v[0..N) back to N * kLanes floats in order, rows of N.
template <int N>
[[gnu::always_inline]] inline void to_rows(F* v) {
  if constexpr (N > 1) {
    F even[N / 2], odd[N / 2];
#pragma GCC unroll 8
    for (int c = 0; c < N / 2; ++c) {
      even[c] = v[2 * c];
      odd[c] = v[2 * c + 1];
    }
    to_rows<N / 2>(even);
    to_rows<N / 2>(odd);
#pragma GCC unroll 8
    for (int i = 0; i < N / 2; ++i) Vec::zip(even[i], odd[i], v[2 * i], v[2 * i + 1]);
  }
}

// Rows of E <= kLanes logits stored back to back are one stream, of which a group of kLanes rows is
// read in a few hundred cycles, less than DRAM's latency: each group fetches the lines of its `vectors`
// vectors kNarrowAheadBytes on into L2, one request a line. 4 KiB is eight groups of E = 8, where
// three (1.5 KiB) left the loads waiting on DRAM (AVX-512 logits-8x2 from DRAM, two threads, 0.164 ->
// 0.146 ms; 3 to 16 groups: bench/NOTES.md item 17; AVX2's E = 8, a whole vector, -5%: item 49).
constexpr int kNarrowAheadBytes = 4096;
[[gnu::always_inline]] inline void fetch_rows_ahead(const float* base, int vectors) {
  const char* ahead = reinterpret_cast<const char*>(base) + kNarrowAheadBytes;
  const int bytes = vectors * kLanes * static_cast<int>(sizeof(float));
#pragma GCC unroll 16
  for (int at = 0; at < bytes; at += 64) __builtin_prefetch(ahead + at, 0, 2);
}

// The columns of kLanes rows of E < kLanes experts (E a power of two) stored back to back, into
// column[0..E): the rows are E whole vectors, which to_columns turns into columns, where loading
// kLanes rows of E lanes would take kLanes masked loads and a full kLanes x kLanes transpose. The
// next group is fetched into L1, and the stream ahead into L2 (fetch_rows_ahead).
template <int E>
[[gnu::always_inline]] inline void narrow_columns(const float* base, F* column) {
  static_assert(E < kLanes && (E & (E - 1)) == 0, "narrow rows: a power of two below kLanes");
  fetch_rows_ahead(base, E);
#pragma GCC unroll 8
  for (int i = 0; i < E; ++i) {
    __builtin_prefetch(base + (E + i) * kLanes);
    column[i] = Vec::load(base + i * kLanes);
  }
  to_columns<E>(column);
}

// Rows of E logits back to back whose width the narrow paths take as a constant: f(width), width a
// std::integral_constant of E for E = 8 (kLanes >= 8), 4 (kLanes > 4) or 2, and of 0 for any other
// rows (groups_across_tokens' runs and group_losses: narrow_columns below kLanes, load_columns with
// every bound known at kLanes).
template <class Fn>
[[gnu::always_inline]] inline auto with_fixed_width(int E, int64_t stride, Fn&& f) {
  if (stride == E) {
    if constexpr (kLanes >= 8)
      if (E == 8) return f(std::integral_constant<int, 8>{});
    if constexpr (kLanes > 4)
      if (E == 4) return f(std::integral_constant<int, 4>{});
    if (E == 2) return f(std::integral_constant<int, 2>{});
  }
  return f(std::integral_constant<int, 0>{});
}

// The slots of kLanes tokens, slot j of every token in weight[j] and expert[j] (one lane per token),
// stored as kLanes rows of K: for K a power of two by to_rows into K whole vectors; otherwise back to
// rows through a transpose, the weights in rows [0, K) and, when they fit beside them (2K <= kLanes),
// the experts in rows [kLanes/2, ..) of the same one, and kLanes partial stores of each. Always
// inlined: GCC left store_slots<5..8> out of line in rows_across_tokens' larger instantiations, the
// slots passed through memory (in cache, one thread, logits E = 64, K = 8 -10 to -14%; bench/NOTES.md
// item 55).
template <int K>
[[gnu::always_inline]] inline void store_slots(const F* weight, const Vec::I* expert, float* weights_out, int32_t* experts_out) {
  if constexpr ((K & (K - 1)) == 0) {
    F w[K], x[K];
    for (int j = 0; j < K; ++j) {
      w[j] = weight[j];
      x[j] = Vec::from_bits(expert[j]);
    }
    to_rows<K>(w);
    to_rows<K>(x);
    for (int j = 0; j < K; ++j) {
      Vec::store(weights_out + j * kLanes, w[j]);
      Vec::store_int(experts_out + j * kLanes, Vec::to_bits(x[j]));
    }
  } else {
    constexpr bool kPaired = 2 * K <= kLanes;
    constexpr int kExpertRow = kPaired ? kLanes / 2 : 0;
    F rows[kLanes], experts[kPaired ? 1 : kLanes];
    F* expert_rows = kPaired ? rows : experts;
    for (int j = 0; j < kLanes; ++j) {
      rows[j] = Vec::zero();
      if constexpr (!kPaired) experts[j] = Vec::zero();
    }
    for (int j = 0; j < K; ++j) {
      rows[j] = weight[j];
      expert_rows[kExpertRow + j] = Vec::from_bits(expert[j]);
    }
    Vec::transpose(rows);
    if constexpr (!kPaired) Vec::transpose(experts);
    const Vec::I half_turn = Vec::int_and(Vec::int_add(Vec::int_load(kLaneIndex), Vec::int_set1(kExpertRow)), Vec::int_set1(kLanes - 1));
    for (int l = 0; l < kLanes; ++l) {
      Vec::store_tail(weights_out + l * K, rows[l], K);
      const Vec::I row = kPaired ? Vec::permute(Vec::to_bits(rows[l]), half_turn) : Vec::to_bits(experts[kPaired ? 0 : l]);
      Vec::store_int_tail(experts_out + l * K, row, K);
    }
  }
}

// Whether V has add_counts (AVX-512), which comes with kCountMaxE.
template <class V, class = void>
struct HasAddCounts : std::false_type {};
template <class V>
struct HasAddCounts<V, std::void_t<decltype(V::kCountMaxE)>> : std::true_type {};

// Whether V has gather (AVX2).
template <class V, class = void>
struct HasGather : std::false_type {};
template <class V>
struct HasGather<V, decltype(void(V::gather(nullptr, typename V::I{})))> : std::true_type {};

// counts[e] += how many lanes of expert[0..n) hold e, where no lane holds an expert twice.
template <class V = Vec>
inline void add_slot_counts(const Vec::I* expert, int n, int E, int32_t* counts) {
  if constexpr (HasAddCounts<V>::value) {
    if (E <= V::kCountMaxE) return V::add_counts(expert, n, E, counts);
  }
  for (int j = 0; j < n; ++j) {
    alignas(64) int32_t index[kLanes];
    Vec::store_int(index, expert[j]);
    for (int l = 0; l < kLanes; ++l) ++counts[index[l]];
  }
}

// The expert counts of a run of whole groups of at most kTallyMaxE experts, kept in a register: each
// lane holds eight 4-bit counters, expert e's in bits [4e, 4e + 4), and each slot adds 1 << 4e to its
// lane (three operations a slot, where comparing every expert's key with the K-th took about six an
// expert and an add to memory: logits E = 8, K = 2, in cache, one thread, counting was 14% of the
// time; bench/NOTES.md item 61). Every kTallyGroups groups, a counter's most, and at the end of the
// run, flush() adds them to counts: the even and the odd experts' counters as bytes, summed over the
// lanes as words (a byte's sum is at most 16 lanes x 15 = 240, so no carry crosses bytes).
constexpr int kTallyMaxE = 8, kTallyGroups = 15;
struct NibbleTally {
  Vec::I nibbles = Vec::int_set1(0);
  int groups = 0;

  template <int K>
  [[gnu::always_inline]] void add(const Vec::I* chosen) {
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j)
      nibbles = Vec::int_add(nibbles, Vec::shift_left_by(Vec::int_set1(1), Vec::shift_left<2>(chosen[j])));
  }
  // After a group's add: its counters into counts when they may be full.
  [[gnu::always_inline]] void group_done(int E, int32_t* counts) {
    if (++groups == kTallyGroups) flush(E, counts);
  }
  void flush(int E, int32_t* counts) {
    alignas(64) int32_t lane[kLanes];
    Vec::store_int(lane, nibbles);
    uint32_t even = 0, odd = 0;
    for (int l = 0; l < kLanes; ++l) {
      even += static_cast<uint32_t>(lane[l]) & 0x0f0f0f0fu;
      odd += static_cast<uint32_t>(lane[l]) >> 4 & 0x0f0f0f0fu;
    }
    for (int e = 0; e < E; ++e) counts[e] += static_cast<int32_t>(((e % 2 ? odd : even) >> (8 * (e / 2))) & 0xffu);
    nibbles = Vec::int_set1(0);
    groups = 0;
  }
};

// The packed int key of rows_across_tokens for a logit u of a token whose largest logit is max:
//   (bits of w^p, low b bits cleared) | expert,  w = max - u, b = bits of E - 1,
//   p = key_power(E): 1 up to b = 7 (E <= 128), then 2, 4, 8 for b = 8, 9, 10,
// smaller for a better expert, distinct within a token, and an exact tie goes to the lower expert as
// in the oracle. Keys within b bits of each other compare by expert instead: near-ties, within SPEC
// §10 because each index bit more comes with a power twice as high, |w1 - w2| < 2^(b-23)/p w
// (docs/semantics.md §13; the square was one operation of ~5 a logit: without it, in cache, logits
// E = 8 -4%, E = 64 -3%, E = 128 -5%). The eighth power is taken of 16w (exact): w^8 is subnormal
// below w = 1.9e-5, and its keys tie below 5.9e-6 (below 1.9e-5 where a thread flushes subnormals to
// zero), where those of (16w)^8 tie below 3.7e-7 and overflow above w = 4096, whose scores are 0
// (the multiply cost E = 1024 in cache ~4%). value_bits clears the low b bits and the sign bit too:
// w is -0 where the row's largest logit is -0 and u is +0 (a max of -0 and +0 may give either), and
// its key must tie with those of the row's other zeros, lower expert first, as the oracle's equal
// scores do (with the sign, a +0 logit ranked before every -0 one, whatever the experts).
constexpr int kPlainKeyMaxE = 128;
constexpr int key_power(int width) { return width <= kPlainKeyMaxE ? 1 : width <= 256 ? 2 : width <= 512 ? 4 : 8; }
//
// Sigmoid scores (kSigmoid) key instead on d = m - u with m = min(max, 0), +0 for a zero
// (key_offset), as the token-by-token path does (docs/semantics.md §13): d < 0 where max > 0, so the
// key is the sortable image (signed) of d, or of |d|^p (of (16 |d|)^8) with d's sign, its low b bits
// the expert (value_bits then keeps the sign bit). m is +0 rather than -0, so that d is +0 for both
// zeros, one value as above.
template <bool kSigmoid>
inline F key_offset(F row_max) {
  if constexpr (kSigmoid) return Vec::add(Vec::min(row_max, Vec::zero()), Vec::zero());
  return row_max;
}
// A negative kPower: the scaled keys (select-then-softmax's, kScaledKeyMaxE, and the score keys',
// kScoreKeyMaxE), w = (max - u) * scale raised to -kPower (the eighth power of 16 w, as above, and the
// 32nd of 1 + w), scale = scaled_key_scale's.
template <int kPower, bool kSigmoid = false>
inline Vec::I logit_key(F max, F u, Vec::I value_bits, Vec::I expert, F scale = Vec::zero()) {
  constexpr int kP = kPower < 0 ? -kPower : kPower;
  static_assert(kPower != 32, "the 32nd power is of 1 + w for the scaled keys, w <= 1");
  static_assert(!kSigmoid || kPower > 0, "sigmoid keys are not scaled");
  const F d = Vec::sub(max, u);
  F w = kSigmoid && kP > 1 ? Vec::abs(d) : d;  // (sigmoid's d is signed: its power takes |d|, then d's sign)
  if constexpr (kPower < 0) w = Vec::mul(w, scale);
  if (kP == 8) w = Vec::mul(w, Vec::set1(16.0f));
  if (kP == 32) w = Vec::add(w, Vec::set1(1.0f));
#pragma GCC unroll 5
  for (int p = 1; p < kP; p *= 2) w = Vec::mul(w, w);
  if constexpr (!kSigmoid) return Vec::and_or(Vec::to_bits(w), value_bits, expert);
  Vec::I bits = Vec::to_bits(w);
  const Vec::I sign = Vec::int_set1(static_cast<int32_t>(0x80000000u));
  if constexpr (kP > 1) bits = Vec::int_or(bits, Vec::int_and(Vec::to_bits(d), sign));
  return Vec::and_or(sortable(bits), value_bits, expert);
}
// The scale of the scaled keys: 1 / (2 m), m = max(|row max|, |row min|), at most FLT_MAX (m = 0,
// or subnormal). A non-finite logit makes m infinite or NaN and the keys of its row NaN (0 * inf,
// or NaN), above +inf's bits: keys_finite sees them.
inline F scaled_key_scale(F row_max, F row_min) {
  const F m = Vec::max(Vec::abs(row_max), Vec::abs(row_min));
  return Vec::min(Vec::div(Vec::set1(0.5f), m), Vec::set1(std::numeric_limits<float>::max()));
}

// For L slots of kLanes tokens held as rows (to_rows: kLanes / L tokens a vector, token t's slots in
// lanes [tL, tL + L)), each lane's position `at` replaced by lane `at` of M vectors of its own
// token's: the vectors load(token, 0..M) (M a power of two, positions below M * kLanes). Masked
// permutes for M = 1; for more, two-source permutes over pairs of vectors and blends on the
// position's higher bits. (V: descend's.)
template <int L, int M, class V, class Load>
[[gnu::always_inline]] inline void pick_in_rows(F* rows, Load&& load) {
  constexpr int kTokens = kLanes / L;  // tokens a vector of rows holds
#pragma GCC unroll 8
  for (int i = 0; i < L; ++i) {
    const Vec::I at = Vec::to_bits(rows[i]);
    Vec::I fetched = at;  // every lane is replaced
#pragma GCC unroll 16
    for (int t = 0; t < kTokens; ++t) {
      const int token = i * kTokens + t;
      const uint32_t lanes = ((1u << L) - 1) << (t * L);
      if constexpr (M == 1) {
        fetched = V::int_permute_masked(fetched, lanes, at, load(token, 0));
      } else {
        Vec::I pick[M / 2];
#pragma GCC unroll 16
        for (int q = 0; q < M / 2; ++q) pick[q] = V::int_permute2(load(token, 2 * q), at, load(token, 2 * q + 1));
        // (A counted loop: GCC left the one over span *= 2 rolled, pick[] on the stack.)
#pragma GCC unroll 4
        for (int level = 0; (2 << level) < M; ++level) {
          const int span = 1 << level;
          const uint32_t upper = Vec::bits(V::int_test(at, Vec::int_set1(2 * kLanes * span)));
#pragma GCC unroll 16
          for (int q = 0; q < M / 2; q += 2 * span) pick[q] = Vec::blend_bits(upper, pick[q + span], pick[q]);
        }
        fetched = Vec::blend_bits(lanes, pick[0], fetched);
      }
    }
    rows[i] = Vec::from_bits(fetched);
  }
}

// One level of knockout_keys' descent, and the levels below it: the round whose losers are M
// vectors a token (stored at (N - 2M) * kLanes in each token's kLost words of `losers`). The L best
// keys of the level are among the L best above it, best[0, L), and their losers, each at its
// winner's position (expert index modulo the level's width, M * kLanes); the L-th best's loser is
// worse than it, cannot enter, and is not fetched. The fetch, lane l = token l's loser at the
// position in lane l of best[j], was a vpgatherdd per slot, ~38 cycles each on Zen 4 (a build with
// plain loads in their place, wrong results, took logits E = 64 in cache 0.150 -> 0.110 ms and
// E = 256 0.091 -> 0.072). Instead the positions are turned into rows, each token's lanes are picked
// from its own losers by permutes (pick_in_rows), and the result is turned back into columns: in
// cache, one thread, E = 64 -12%, E = 128 -13%, E = 256 unchanged (its row pass, from L3,
// dominates); from DRAM, two threads, logits-64x8 1.47 -> 1.33 ms. kPartial: tokens [live, kLanes)
// read token 0's losers (see knockout_keys).
template <int L, int N, int kLost, int M, bool kPartial, class V>
[[gnu::always_inline]] inline void descend(const int32_t* losers, int live, Vec::I* best) {
  const Vec::I position = Vec::int_set1(M * kLanes - 1);
  F rows[L];
#pragma GCC unroll 8
  for (int j = 0; j < L; ++j) rows[j] = Vec::from_bits(Vec::int_and(best[j], position));
  to_rows<L>(rows);
  pick_in_rows<L, M, V>(rows, [&](int token, int q) {
    return Vec::int_load(losers + (kPartial && token >= live ? 0 : token) * kLost + (N - 2 * M + q) * kLanes);
  });
  to_columns<L>(rows);
  Vec::I partner[L];
#pragma GCC unroll 8
  for (int j = 0; j < L - 1; ++j) partner[j] = Vec::to_bits(rows[j]);
  partner[L - 1] = Vec::int_set1(std::numeric_limits<int32_t>::max());
  add_keys<L>(best, partner, false);
  if constexpr (2 * M < N) descend<L, N, kLost, 2 * M, kPartial, V>(losers, live, best);
}

// The L smallest keys of kLanes tokens (one per lane) of N/2 * kLanes < E <= N * kLanes experts (N a power
// of two, at least 4), sorted, into best[0..L), and each token's largest logit into row_max. Per token, in
// its row's own layout: the keys of N vectors, then a knockout: vector i against vector i + n/2, the
// smaller key of each position going on and the larger stored as that position's loser, until one vector of
// kLanes winners is left. Only the winners are transposed, and networks take the L smallest of their kLanes
// columns. Then level by level back down (descend): the L best keys of a level are among the L best of the
// level above and their L losers (a key among the L best that lost did so to a key among them), each at its
// winner's position (its expert index modulo the level's width). Exactly the L smallest keys, as
// column_keys gives them: a vector of keys costs a min, a max and a store, where the columns cost a quarter
// of a transpose, a store, a load and ~9 network operations (19 comparators sort 8 keys, 8 mins and 12
// comparators merge them). The first N/2 vectors hold whole experts; positions past E (N * kLanes <= 2^b,
// so every position is an index the keys can hold) get keys above every real key (+inf's bits | position,
// where a real key is at most +inf's bits | a lower expert), and meet only the first round, as the second
// of a pair (round_one, which also keys the row's vectors). Of N = 64 the first two rounds go a position at
// a time (i, i + 16, i + 32, i + 48), so that only sixteen vectors of keys are live. kPartial (a gathered
// group of fewer tokens, across_rows): only rows [0, live) are read, the lanes past them get row 0's
// winners and losers, and their answers are dropped (a whole group's instantiation has no test of live:
// with it, logits-256x8 in cache took 5-9% longer). False, with best and row_max unset, when a logit of the
// group is not finite. (V is Vec, a parameter so that the ISAs that never instantiate this, for want of
// V::int_permute2, can compile it.)
template <int L, bool kPartial, bool kSigmoid, int N = 4, class V = Vec>
inline bool knockout_keys(const float* base, int E, int64_t stride, int live, Vec::I value_bits, Vec::I* best,
                          F& row_max) {
  if constexpr (N * kLanes < kAcrossMaxE) {
    if (N * kLanes < E)
      return knockout_keys<L, kPartial, kSigmoid, 2 * N, V>(base, E, stride, live, value_bits, best, row_max);
  }
  const int rows_read = kPartial ? live : kLanes;
  constexpr int kPower = key_power(N * kLanes);  // (that of every E it takes)
  constexpr int H = N / 2;                    // vectors after the first round
  constexpr int R = H < kLanes ? H : kLanes;  // of them, those kept in registers
  static_assert(H == R || H == 2 * R, "N up to 4 * kLanes");
  constexpr int kLost = (N - 1) * kLanes;  // a token's losers, level by level: N/2 vectors, N/4, .. 1
  alignas(64) int32_t losers[kLanes * kLost];
  alignas(64) float winners[kLanes][kLanes];
  alignas(64) float maxes[kLanes];
  const Vec::I lane = Vec::int_load(kLaneIndex);
  const int whole = E / kLanes, tail = E % kLanes, real = whole + (tail > 0);  // vectors holding experts
  const Vec::I tail_lanes = Vec::blend_bits(Vec::bits(Vec::first(tail)), Vec::int_set1(-1), Vec::int_set1(0));
  Vec::I worst = Vec::int_set1(0);  // each lane's largest key of its experts
  // The rows, instantiated apart for E = N * kLanes (kWhole), whose pairs all hold experts: the
  // tests for the padding in round_one took E = 256 in cache 10% longer.
  const auto rows = [&](auto whole_rows) {
    constexpr bool kWhole = decltype(whole_rows)::value;
    for (int l = 0; l < rows_read; ++l) {
      const float* row = base + l * stride;
      // The same line of the next group's row into L2 (a prefetch never faults). Not into L1, as
      // column_keys does: a group of E = 256 is 16 KiB, and fetching the next one into L1 evicted
      // the losers the descent reads (logits-256x8 in cache 0.091 -> 0.080 ms without it; from
      // DRAM, two threads, the next group 1.12-1.23 ms, two groups ahead 1.25-1.39, four 1.19-1.24).
      // Each line is asked for twice, in the maximum pass and again in the first round: one request
      // (in either place) left rows read from DRAM at 2/3 of the rate (one thread, E = 512 1.87-2.03
      // ms against 1.33-1.54, E = 1024 1.00 -> 0.77, E = 300 1.52 -> 1.07, E = 256 0.73-0.84 ->
      // 0.66-0.72; two threads logits-64x8 1.12 -> 1.07 ms; bench/NOTES.md item 33), as if many a
      // first request were dropped.
      const float* next = row + kLanes * stride;
      // The row's vector i, loaded again from L1 for its keys.
      const auto load = [&](int i) {
        return kWhole || i < H || i < whole
                   ? Vec::load(row + i * kLanes)
                   : Vec::load_tail(row + i * kLanes, tail, std::numeric_limits<float>::lowest());
      };
      // (Four accumulators, each set: a knockout of four vectors may hold three.)
      F top[4] = {Vec::set1(-kInf), Vec::set1(-kInf), Vec::set1(-kInf), Vec::set1(-kInf)};
#pragma GCC unroll 64
      for (int i = 0; i < N; ++i) {
        if (!kWhole && i >= H && i >= real) break;
        __builtin_prefetch(next + i * kLanes, 0, 2);
        top[i % 4] = i < 4 ? load(i) : Vec::max(top[i % 4], load(i));
      }
      maxes[l] = Vec::reduce_max(Vec::max(Vec::max(top[0], top[1]), Vec::max(top[2], top[3])));
      const F offset = key_offset<kSigmoid>(Vec::set1(maxes[l]));
      const auto key = [&](int i) {
        return logit_key<kPower, kSigmoid>(offset, load(i), value_bits, Vec::int_add(lane, Vec::int_set1(i * kLanes)));
      };
      int32_t* lost = losers + l * kLost;
      // Vector x against x + H: the loser into lost[x], the winner returned; `worst` takes the
      // larger key of each pair, or the real one of a pair with padding.
      const auto round_one = [&](int x) {
        __builtin_prefetch(next + x * kLanes, 0, 2);
        const Vec::I a = key(x);
        const int y = x + H;
        if (!kWhole && y >= real) {
          const Vec::I padding = Vec::int_or(Vec::int_set1(0x7f800000), Vec::int_add(lane, Vec::int_set1(y * kLanes)));
          Vec::store_int(lost + x * kLanes, padding);
          worst = Vec::int_max(worst, a);
          return a;
        }
        __builtin_prefetch(next + y * kLanes, 0, 2);
        const Vec::I b = key(y), loser = Vec::int_max(a, b);
        Vec::store_int(lost + x * kLanes, loser);
        worst = Vec::int_max(worst, kWhole || y < whole ? loser : Vec::int_max(a, Vec::int_and(b, tail_lanes)));
        return Vec::int_min(a, b);
      };
      Vec::I winner[R];
#pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        winner[i] = round_one(i);
        if constexpr (H > R) {
          const Vec::I other = round_one(i + R);
          Vec::store_int(lost + (H + i) * kLanes, Vec::int_max(winner[i], other));
          winner[i] = Vec::int_min(winner[i], other);
        }
      }
      lost += (H > R ? H + R : H) * kLanes;
#pragma GCC unroll 6
      for (int n = R; n > 1; lost += n / 2 * kLanes, n /= 2)
#pragma GCC unroll 16
        for (int i = 0; i < R / 2; ++i) {
          if (i >= n / 2) break;
          Vec::store_int(lost + i * kLanes, Vec::int_max(winner[i], winner[i + n / 2]));
          winner[i] = Vec::int_min(winner[i], winner[i + n / 2]);
        }
      Vec::store(winners[l], Vec::from_bits(winner[0]));
    }
  };
  if (E == N * kLanes) {
    rows(std::true_type{});
  } else {
    rows(std::false_type{});
  }
  for (int l = rows_read; l < kLanes; ++l) {
    std::memcpy(winners[l], winners[0], sizeof winners[0]);
    maxes[l] = maxes[0];
  }
  row_max = Vec::load(maxes);

  F column[kLanes];
#pragma GCC unroll 16
  for (int l = 0; l < kLanes; ++l) column[l] = Vec::load(winners[l]);
  Vec::transpose(column);
#pragma GCC unroll 16
  for (int c0 = 0; c0 < kLanes; c0 += L) {
    Vec::I key[L];
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i) key[i] = Vec::to_bits(column[c0 + i]);
    add_keys<L>(best, key, c0 == 0);
  }
  // The finiteness check, on the keys (keys_finite; it replaces an FMA a vector and a sum a token:
  // bench/NOTES.md item 26), sigmoid keys' also on their least, as column_keys does.
  if (!keys_finite(worst, base, stride, rows_read, E, kSigmoid ? &best[0] : nullptr)) return false;
  // (The best key of all is the best winner.)
  if constexpr (L > 1) descend<L, N, kLost, 1, kPartial, V>(losers, live, best);
  return true;
}

// The columns (one expert, kLanes tokens) of experts [e0, e0 + kLanes) of kLanes rows into block:
// the rows loaded a vector at a time and transposed; past E, columns of the lowest float, which
// change neither the maximum nor the check and whose keys come out above every real key. The rows
// are read a vector of experts at a time, a pattern the hardware prefetcher follows late: the same
// vectors of the next group's rows are fetched (they may lie past this block; a prefetch never
// faults), spread over the pass rather than all at the start of the group (256 lines for E = 256,
// more than the core keeps in flight): logits-256x8 from DRAM, one thread, 4.4 -> 2.7 ms;
// logits-64x8 5.4 -> 3.4-4.4 ms.
[[gnu::always_inline]] inline void load_columns(const float* base, int E, int e0, int64_t stride, F* block) {
  const int width = E - e0 < kLanes ? E - e0 : kLanes;
  const float* ahead = base + kLanes * stride + e0;  // (a running pointer: no product a row)
  for (int l = 0; l < kLanes; ++l, ahead += stride) __builtin_prefetch(ahead);
  for (int l = 0; l < kLanes; ++l)
    block[l] = width == kLanes ? Vec::load(base + l * stride + e0)
                               : Vec::load_tail(base + l * stride + e0, width, std::numeric_limits<float>::lowest());
  Vec::transpose(block);
}

// Each lane's maximum over columns; four accumulators, so that no chain of E dependent steps bounds
// the pass. (Whether the logits are finite is read off their keys: add_column_keys, keys_finite.)
struct ColumnMax {
  F max[4] = {Vec::set1(-kInf), Vec::set1(-kInf), Vec::set1(-kInf), Vec::set1(-kInf)};

  // block[0, n), n <= kLanes.
  [[gnu::always_inline]] void add(const F* block, int n) {
#pragma GCC unroll 16
    for (int i = 0; i < kLanes; ++i) {
      if (i >= n) break;
      max[i % 4] = Vec::max(max[i % 4], block[i]);
    }
  }
  [[gnu::always_inline]] F maximum() const { return Vec::max(Vec::max(max[0], max[1]), Vec::max(max[2], max[3])); }
};

// The expert indices 0, 1, ... in memory, so that a column's index vector is a broadcast load: on
// Zen 3 a broadcast from a register takes the one pipe that also runs the transposes' cross-lane
// shuffles (vperm2f128, one a cycle each, the two together half as fast), and from memory only the
// load unit (in cache, one thread: logits E = 64 -3%, E = 256 -3 to -16%; bench/NOTES.md item 50).
constexpr int kExpertIndexes = std::max({kColumnsMaxE<false>, kColumnsMaxE<true>, kScoreKeyMaxE});
struct ExpertIndex {
  int32_t of[kExpertIndexes];
};
constexpr ExpertIndex make_expert_index() {
  ExpertIndex x{};
  for (int e = 0; e < kExpertIndexes; ++e) x.of[e] = e;
  return x;
}
alignas(64) constexpr ExpertIndex kExpertIndex = make_expert_index();

// The keys (logit_key) of columns [e0, e0 + L) into key[0, L), and into keys[e0, e0 + L) unless
// keys is null; offset: key_offset's.
template <int L, int kPower, bool kSigmoid>
[[gnu::always_inline]] inline void column_block_keys(const F* column, int e0, F offset, F scale, Vec::I value_bits,
                                                     F* keys, Vec::I* key) {
#pragma GCC unroll 8
  for (int i = 0; i < L; ++i) {
    key[i] = logit_key<kPower, kSigmoid>(offset, column[e0 + i], value_bits, Vec::int_set1(kExpertIndex.of[e0 + i]),
                                         scale);
    if (keys) keys[e0 + i] = Vec::from_bits(key[i]);
  }
}

// The keys of columns [e0, e0 + L) (column_block_keys), sorted by a network and merged into each
// lane's list of the L smallest, best[0, L) (with e0 = 0, the list's start), and each lane's largest
// key of experts [e0, e0 + L) below E into worst, for keys_finite: after a whole block's sort, its
// last key, one operation a block where checking every logit had taken an FMA each (bench/NOTES.md
// item 50); past E, the padding's keys may be +inf's bits and are left out.
template <int L, int kPower, bool kSigmoid>
[[gnu::always_inline]] inline void add_column_keys(const F* column, int e0, int E, F offset, F scale,
                                                   Vec::I value_bits, F* keys, Vec::I* best, Vec::I& worst) {
  Vec::I key[L];
  column_block_keys<L, kPower, kSigmoid>(column, e0, offset, scale, value_bits, keys, key);
  const bool whole = e0 + L <= E;
  if (!whole)
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i)
      if (e0 + i < E) worst = Vec::int_max(worst, key[i]);
  add_keys<L>(best, key, e0 == 0);
  if (whole) worst = Vec::int_max(worst, key[L - 1]);  // (sorted: the block's largest)
}

// The L smallest keys of kLanes tokens (one per lane) of E <= kLanes experts, sorted, into
// best[0..L), and each token's largest logit into row_max: the one vector of columns (load_columns,
// or for kFixedE = E < kLanes, rows back to back, narrow_columns; rows back to back fetch their
// stream ahead) into column[0, kLanes) and their keys into keys[0, E), both the caller's registers.
// False, best and row_max then meaningless, when a logit of the group is not finite. (Against
// column_keys, which kept them in memory, in cache, one thread: E = 8, K = 2 -38%, E = 16, K = 4
// -17%; logits-8x2 from DRAM 0.50 -> 0.35 ms one thread, 0.31 -> 0.23 two; AVX2 E = 8 -11%.)
template <int L, int kFixedE, bool kSigmoid>
[[gnu::always_inline]] inline bool vector_keys(const float* base, int E, int64_t stride, Vec::I value_bits, F* column,
                                               F* keys, Vec::I* best, F& row_max) {
  if constexpr (kFixedE > 0 && kFixedE < kLanes) {
    narrow_columns<kFixedE>(base, column);
  } else {
    if (E == kLanes && stride == E) fetch_rows_ahead(base, kLanes);  // (a whole vector a row)
    load_columns(base, E, 0, stride, column);
  }
  const int used = (E + L - 1) / L * L;  // whole L
  ColumnMax check;
  check.add(column, used);
  row_max = check.maximum();
  const F offset = key_offset<kSigmoid>(row_max);
  Vec::I worst = Vec::int_set1(0);
#pragma GCC unroll 16
  for (int e0 = 0; e0 < kLanes; e0 += L) {
    if (e0 >= used) break;
    add_column_keys<L, 1, kSigmoid>(column, e0, E, offset, Vec::zero(), value_bits, keys, best, worst);
  }
  return keys_finite(worst, base, stride, kLanes, E, kSigmoid ? &best[0] : nullptr);
}

// The L smallest keys of kLanes tokens (one per lane) of kLanes < E <= kColumnsMaxE experts, sorted,
// into best[0..L), and each token's largest logit into row_max, from the columns: a first pass
// loads them a vector of experts at a time into columns[0, E) (and up to a whole L) and takes each
// lane's maximum, the second their keys (into keys[0, E) unless null), and from them the check
// (add_column_keys, keys_finite). False, best and row_max then meaningless, when a logit of the
// group is not finite. kPower: key_power(E).
template <int L, int kPower, bool kSigmoid>
[[gnu::always_inline]] inline bool column_keys(const float* base, int E, int64_t stride, Vec::I value_bits, F* columns,
                                               F* keys, Vec::I* best, F& row_max) {
  ColumnMax check;
  F low = Vec::set1(kInf);  // scaled keys: the row's least logit (not the padding's)
  for (int e0 = 0; e0 < E; e0 += kLanes) {
    F block[kLanes];
    load_columns(base, E, e0, stride, block);
    const int width = E - e0 < kLanes ? E - e0 : kLanes;
    const int used = (width + L - 1) / L * L;  // pass 2 reads whole L
#pragma GCC unroll 16
    for (int i = 0; i < kLanes; ++i) {
      if (i >= used) break;
      columns[e0 + i] = block[i];
      if (kPower < 0 && i < width) low = Vec::min(low, block[i]);
    }
    check.add(block, used);
  }
  row_max = check.maximum();
  const F offset = key_offset<kSigmoid>(row_max);
  const F scale = kPower < 0 ? scaled_key_scale(row_max, low) : Vec::zero();
  Vec::I worst = Vec::int_set1(0);
  for (int e0 = 0; e0 < E; e0 += L) {
    // The group two ahead into L2, a vector of each row every kLanes experts: pass 2 issued no
    // memory requests at all while it was as long as pass 1, and pass 1 issued these together with
    // the next group's (when they were three groups ahead). Spread over both passes, DRAM is read
    // during the whole group: logits-256x8 (columns, before knockout_keys), A/B interleaved, one
    // thread 2.6-2.8 -> 2.1-2.3 ms (in cache 1.9), two threads 1.59-1.95 -> 1.12-1.58 ms in five pairs.
    if (e0 % kLanes == 0) {
      const float* ahead = base + 2 * kLanes * stride + e0;
      for (int l = 0; l < kLanes; ++l, ahead += stride) __builtin_prefetch(ahead, 0, 2);
    }
    add_column_keys<L, kPower, kSigmoid>(columns, e0, E, offset, scale, value_bits, keys, best, worst);
  }
  return keys_finite(worst, base, stride, kLanes, E, kSigmoid ? &best[0] : nullptr);
}

// The logits of experts chosen[first, K) (4 < K <= 8, first 0 or 1) of kLanes tokens (lane l: token
// l, whose E <= M * kLanes logits are the row at base + l * stride; tokens [live, kLanes) read row 0)
// into weight[first, K): the experts turned into rows, picked from the token's row (pick_in_rows) and
// turned back into columns. (V: descend's.)
template <int K, int M, int first, class V = Vec>
[[gnu::always_inline]] inline void pick_logits(const float* base, int64_t stride, int E, int live, const Vec::I* chosen,
                                               F* weight) {
  constexpr int L = 8;
  static_assert(K > 4 && K <= L, "slots: five to eight");
  F rows[L];
#pragma GCC unroll 8
  for (int j = 0; j < L; ++j) rows[j] = Vec::from_bits(chosen[j < K ? j : 0]);
  to_rows<L>(rows);
  pick_in_rows<L, M, V>(rows, [&](int token, int q) {
    const int left = E - q * kLanes;  // (the same masks for every token)
    const float* row = base + (token < live ? token : 0) * stride;
    return Vec::to_bits(Vec::load_tail(row + q * kLanes, left > 0 ? left : 0, 0.0f));
  });
  to_columns<L>(rows);
#pragma GCC unroll 8
  for (int j = first; j < K; ++j) weight[j] = rows[j];
}

// The logits of experts chosen[first, K) of kLanes tokens (lane l: token l, whose row is at base + l *
// stride; tokens [live, kLanes) read row 0) into weight[first, K), one gather a slot. (V: a Vec with
// gather, HasGather.)
template <int K, int first, class V = Vec>
[[gnu::always_inline]] inline void gather_logits(const float* base, int64_t stride, int live, const Vec::I* chosen,
                                                 F* weight) {
  alignas(64) int32_t offset[kLanes];  // (kLanes rows of a group: far below 2^31 values)
  for (int l = 0; l < kLanes; ++l) offset[l] = static_cast<int32_t>((l < live ? l : 0) * stride);
  const Vec::I row = Vec::int_load(offset);
  for (int j = first; j < K; ++j) weight[j] = V::gather(base, Vec::int_add(row, chosen[j]));
}

// The sums of v[0, kLanes), lane j of the result that of v[j]'s lanes (v is overwritten): pairs
// unzipped and added, log2(kLanes) rounds, kLanes - 1 unzips and adds in all.
inline F sum_lanes(F* v) {
  for (int n = kLanes; n > 1; n /= 2)
    for (int i = 0; i < n / 2; ++i) {
      F even, odd;
      Vec::unzip(v[2 * i], v[2 * i + 1], even, odd);
      v[i] = Vec::add(even, odd);
    }
  return v[0];
}

// The softmax denominators Z = sum_e exp(u_e - max) of kLanes tokens, lane l token l's (max: lane l
// of row_max), for the weights of `normalize: false`, which are the scores themselves, and for the
// candidates' scores: from the columns[0, E) of E <= kLanes experts, in registers. kDot: also
// sum_e exp(v_e) v_e (lane_exp_sums') into *dot, for the entropy ln Z - dot / Z.
template <bool kDot = false>
inline F column_exp_sums(const F* columns, int E, F row_max, F* dot = nullptr) {
  F sum[2] = {Vec::zero(), Vec::zero()}, terms[2] = {Vec::zero(), Vec::zero()};
#pragma GCC unroll 16
  for (int e = 0; e < kLanes; ++e)
    if (e < E) {
      const F v = Vec::sub(columns[e], row_max);
      const F x = vexp(v);
      sum[e % 2] = Vec::add(sum[e % 2], x);
      if constexpr (kDot) terms[e % 2] = Vec::fmadd(x, Vec::max(v, Vec::set1(kLossFloor)), terms[e % 2]);
    }
  if constexpr (kDot) *dot = Vec::add(terms[0], terms[1]);
  return Vec::add(sum[0], sum[1]);
}

// The same from the kLanes rows at base (row stride `stride`): each row's lane_exp_sums, the rows'
// vectors summed across lanes together (sum_lanes). Tokens [live, kLanes) read row 0.
template <bool kDot = false>
inline F row_exp_sums(const float* base, int64_t stride, int E, int live, F row_max, F* dot = nullptr) {
  alignas(64) float max[kLanes];
  Vec::store(max, row_max);
  F sums[kLanes], terms[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    const int row = l < live ? l : 0;
    sums[l] = lane_exp_sums<kDot>(base + row * stride, E, Vec::set1(max[row]), &terms[l]);
  }
  if constexpr (kDot) *dot = sum_lanes(terms);
  return sum_lanes(sums);
}

// rows_by_logit_order for kLanes tokens at once, one per lane: the kLanes rows of E logits at base
// (row stride `stride`) give each token's K slots, stored as kLanes rows of K in weights_out and
// experts_out, and add its experts to tally, or else to counts unless null. Each logit becomes a key
// (logit_key); vector_keys (kOneVector: E <= kLanes), column_keys or knockout_keys find the L = (K
// rounded up to a power of two) smallest of each lane, and the weights come from the exact logits of
// the K selected experts. kFixedE, when not 0, is E known at compile time, with the rows back to back
// (stride = E), so that every bound and address offset is a constant (run_across_tokens). Pure
// throughput: no per-token chain of dependent steps. Returns false, writing nothing, when a token of
// the group has a non-finite logit. Rows [live, kLanes) of a gathered group stand for copies of row
// 0: the knockout and the picks of the weights do not read them; the columns do (across_rows).
// With logits_out (softmax keys only, and no counts), the K slots are candidates instead: their
// softmax scores exp(u_j - max) / Z (Z over every expert, as the token-by-token path forms them) in
// weights_out and their logits in logits_out, for a strategy to decide k from (candidates_across_rows).
// With picks (normalized softmax or sigmoid weights, no logits_out), the selection is kept there and
// nothing is stored: run_across_tokens weighs it later.
// (GCC 12 reports column[used..) after narrow_columns, and the columns and best that the selection
// fills, as maybe uninitialized: none is read before it is written.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// A group's selection, kept by rows_across_tokens for run_across_tokens to weigh later (normalized
// softmax or sigmoid weights): its row maxima, the logits of its K experts and the experts.
template <int K>
struct GroupPicks {
  F row_max;
  F logit[K];
  Vec::I chosen[K];
};

// The logits of the slots chosen[kFirst, K) of kLanes tokens (lane l: token l, whose E logits are the
// row at base + l * stride; tokens [live, kLanes) read row 0) into weight[kFirst, K): on AVX-512 for
// 4 < K and E <= 64 from the rows by permutes (pick_logits); on AVX2 by a vgatherdps per slot (Zen 3,
// in cache, one thread: logits E = 64 and 256 -7 to -9% against scalar loads; bench/NOTES.md item
// 45); otherwise by scalar loads (measured faster than a vgatherdps per slot on Zen 4).
template <int K, int kFirst>
[[gnu::always_inline]] inline void slot_logits(const float* base, int64_t stride, int E, int live, const Vec::I* chosen,
                                               F* weight) {
  constexpr bool kPermutePicks = K > 4 && kLanes >= 16;  // (AVX-512: V::int_permute2, int_permute_masked)
  if constexpr (kFirst < K) {
    if (kPermutePicks && E <= 4 * kLanes) {
      if constexpr (kPermutePicks) {
        if (E <= kLanes) pick_logits<K, 1, kFirst>(base, stride, E, live, chosen, weight);
        else if (E <= 2 * kLanes) pick_logits<K, 2, kFirst>(base, stride, E, live, chosen, weight);
        else pick_logits<K, 4, kFirst>(base, stride, E, live, chosen, weight);
      }
    } else if constexpr (HasGather<Vec>::value) {
      gather_logits<K, kFirst>(base, stride, live, chosen, weight);
    } else {
      alignas(64) int32_t index[K][kLanes];
      for (int j = kFirst; j < K; ++j) Vec::store_int(index[j], chosen[j]);
      alignas(64) float picked[K][kLanes];
      for (int l = 0; l < kLanes; ++l)
        for (int j = kFirst; j < K; ++j) picked[j][l] = base[(l < live ? l : 0) * stride + index[j][l]];
      for (int j = kFirst; j < K; ++j) weight[j] = Vec::load(picked[j]);
    }
  }
}

// The softmax weights of slots whose logits are `weight`, before their scaling: exp(u_j - max), the
// first slot's 1 (see rows_across_tokens). Returns their sum.
template <int K>
[[gnu::always_inline]] inline F slot_exponentials(F row_max, F* weight) {
  weight[0] = Vec::set1(1.0f);
  F sum = weight[0];
  for (int j = 1; j < K; ++j) {
    weight[j] = vexp(Vec::sub(weight[j], row_max));
    sum = Vec::add(sum, weight[j]);
  }
  return sum;
}

// The weights times scale / sum, stored with their experts as kLanes rows of K.
template <int K>
[[gnu::always_inline]] inline void store_scaled_slots(const Config& c, F sum, F* weight, const Vec::I* chosen,
                                                      float* weights_out, int32_t* experts_out) {
  const F factor = Vec::div(Vec::set1(static_cast<float>(c.options.scale)), sum);
  for (int j = 0; j < K; ++j) weight[j] = Vec::mul(weight[j], factor);
  store_slots<K>(weight, chosen, weights_out, experts_out);
}

// Softmax scores lane by lane: each lane's largest logit and 1 / Z, Z = sum_e exp(u_e - max).
struct SoftmaxLanes {
  F max, inv;
};

// The weights of slots whose logits are `weight` from their scores s_j, as the token-by-token path
// weighs them (rows_by_logit_order, assign_token): sigma(u_j); with `softmax` (its max and 1 / Z)
// exp(u_j - max) / Z, or normalized the softmax of the slots' logits, exp(u_j - max_j u_j) / sum
// (Config::weights_from_logits). Normalized, a zero sum (every sigmoid 0) gives scale / K each; the
// sum runs over the slots in order, in f32 (within 2 ulp of the double sums there). Stored with their
// experts as kLanes rows of K.
template <int K>
[[gnu::always_inline]] inline void store_score_slots(const Config& c, F* weight, const Vec::I* chosen,
                                                     const SoftmaxLanes* softmax, float* weights_out,
                                                     int32_t* experts_out) {
  const F scale = Vec::set1(static_cast<float>(c.options.scale));
  F sum = Vec::zero();
  F slot_max = weight[0];
  if (softmax && c.normalize)
    for (int j = 1; j < K; ++j) slot_max = Vec::max(slot_max, weight[j]);
  for (int j = 0; j < K; ++j) {
    if (!softmax) weight[j] = vsigmoid(weight[j]);
    else if (c.normalize) weight[j] = vexp(Vec::sub(weight[j], slot_max));
    else weight[j] = Vec::mul(vexp(Vec::sub(weight[j], softmax->max)), softmax->inv);
    sum = Vec::add(sum, weight[j]);
  }
  if (c.normalize) {
    const F factor = Vec::div(scale, sum), even = Vec::div(scale, Vec::set1(static_cast<float>(K)));
    const M none = Vec::eq(sum, Vec::zero());
    for (int j = 0; j < K; ++j) weight[j] = Vec::select(none, even, Vec::mul(weight[j], factor));
  } else {
    for (int j = 0; j < K; ++j) weight[j] = Vec::mul(weight[j], scale);
  }
  store_slots<K>(weight, chosen, weights_out, experts_out);
}

template <int K, bool kOneVector, int kFixedE = 0, bool kSigmoid = false>
[[gnu::always_inline]] inline bool rows_across_tokens(const Config& c, const float* base, int64_t stride, int live,
                                                      float* weights_out, int32_t* experts_out, int32_t* counts,
                                                      float* logits_out, float* entropy_out = nullptr,
                                                      NibbleTally* tally = nullptr, GroupPicks<K>* picks = nullptr) {
  constexpr int L = K <= 1 ? 1 : K <= 2 ? 2 : K <= 4 ? 4 : 8;
  const int E = kFixedE ? kFixedE : c.E;
  if constexpr (kFixedE > 0) stride = kFixedE;  // (the same value, now a constant for what follows)
  const int bits = E > 1 ? 32 - __builtin_clz(static_cast<uint32_t>(E - 1)) : 0;
  const int32_t sign_bit = kSigmoid ? static_cast<int32_t>(0x80000000u) : 0;  // (logit_key)
  const Vec::I expert_bits = Vec::int_set1((1 << bits) - 1),
               value_bits = Vec::int_set1((0x7fffffff | sign_bit) & ~((1 << bits) - 1));
  Vec::I best[L];
  F row_max;
  // The columns of E <= kColumnsMaxE, for E <= kLanes in registers with their keys (the weights of
  // E <= 8 are picked from them), otherwise in memory; and for the counts of E <= 6K the keys, which
  // are compared with the K-th smallest (about 6 operations an expert; otherwise add_slot_counts,
  // about 2 a slot: logits-256x8 spent a fifth of its operations on the first way). Where
  // add_slot_counts has its masks (AVX-512), the keys only up to E = kLanes: in cache, one thread,
  // the masks took E = 24, K = 6 3% less time and E = 32, K = 8 5% less, E = 16 the same, and E = 4
  // and 8 27% and 15% more (bench/NOTES.md item 20). In memory the keys are written over their
  // columns.
  constexpr int kColumns = kOneVector ? kLanes : kColumnsMaxE<kSigmoid>;
  constexpr int kKeyCountMaxE = HasAddCounts<Vec>::value ? kLanes : kColumnMaxE;
  alignas(64) F columns[kColumns];
  F vector_key[kOneVector ? kLanes : 1];
  F* keys = kOneVector ? vector_key : columns;
  const bool count_keys = counts && E <= kKeyCountMaxE && E <= 6 * K;
  bool finite = false;
  if constexpr (kOneVector) {
    finite = vector_keys<L, kFixedE, kSigmoid>(base, E, stride, value_bits, columns, keys, best, row_max);
  } else {
    const bool columns_path = by_columns<kSigmoid>(c);
    // (Only on AVX-512, kColumnMaxE < kAcrossMaxE: elsewhere knockout_keys is never instantiated.)
    if constexpr (kColumnMaxE < kAcrossMaxE && kColumnsMaxE<kSigmoid> < kAcrossMaxE)
      if (!columns_path)
        finite = live < kLanes ? knockout_keys<L, true, kSigmoid>(base, E, stride, live, value_bits, best, row_max)
                               : knockout_keys<L, false, kSigmoid>(base, E, stride, live, value_bits, best, row_max);
    F* column_keys_out = count_keys ? keys : nullptr;
    if (columns_path && scaled_keys<kSigmoid>(c)) {
      if constexpr (!kSigmoid) {
        if (scaled_key_power(E) == 2)
          finite = column_keys<L, -2, false>(base, E, stride, value_bits, columns, column_keys_out, best, row_max);
        else
          finite = column_keys<L, -4, false>(base, E, stride, value_bits, columns, column_keys_out, best, row_max);
      }
    } else if (columns_path) {
      // (One column_keys for each power of w that the ISA's columns reach: 1 and 2 on NEON, 1 to 8
      // on AVX2, 1 on AVX-512, for softmax's keys and sigmoid's.)
      const int power = key_power(E);
      constexpr int kMaxPower = key_power(kSigmoid ? kSigmoidColumnsMaxE : kColumnMaxE);
      if constexpr (kMaxPower >= 8)
        if (power == 8) finite = column_keys<L, 8, kSigmoid>(base, E, stride, value_bits, columns, column_keys_out, best, row_max);
      if constexpr (kMaxPower >= 4)
        if (power == 4) finite = column_keys<L, 4, kSigmoid>(base, E, stride, value_bits, columns, column_keys_out, best, row_max);
      if constexpr (kMaxPower >= 2)
        if (power == 2) finite = column_keys<L, 2, kSigmoid>(base, E, stride, value_bits, columns, column_keys_out, best, row_max);
      if (power == 1) finite = column_keys<L, 1, kSigmoid>(base, E, stride, value_bits, columns, column_keys_out, best, row_max);
    }
  }
  if (!finite) return false;

  Vec::I chosen[K];
  for (int j = 0; j < K; ++j) chosen[j] = Vec::int_and(best[j], expert_bits);
  if (tally) {
    tally->add<K>(chosen);
  } else if (count_keys) {  // (by whole vectors of experts, then the rest: no test of E an expert)
    const auto count = [&](int e) __attribute__((always_inline)) {
      counts[e] += kLanes - __builtin_popcount(Vec::bits(Vec::int_gt(Vec::to_bits(keys[e]), best[K - 1])));
    };
    int e0 = 0;
    for (; e0 + kLanes <= E; e0 += kLanes)
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) count(e0 + i);
    for (int e = e0; e < E; ++e) count(e);
  } else if (counts) {
    add_slot_counts(chosen, K, E, counts);
  }

  // Weights exp(u_j - max) / sum from the exact logits. The first slot's is 1: its key's value bits
  // are 0 like those of the largest logit's, so max - u (or its square) < 2^(b-149) and
  // exp(u - max) rounds to 1 (the oracle's expf too). Sigmoid weights sigma(u_j) (normalized or not)
  // take every slot's logit, the first's too (kFirstPick). For E <= 8 in registers the logit of expert
  // chosen[j] is picked from the columns by E - 1 selects; otherwise slot_logits reads it.
  constexpr int kFirstPick = kSigmoid ? 0 : 1;
  const bool candidates = !kSigmoid && logits_out;
  const int first_pick = candidates ? 0 : kFirstPick;
  F weight[K];
  if (kOneVector && E <= 8) {
    for (int j = first_pick; j < K; ++j) {
      weight[j] = columns[0];
#pragma GCC unroll 8
      for (int e = 1; e < 8; ++e) {
        if (e >= E) break;
        weight[j] = Vec::select(Vec::int_eq(chosen[j], Vec::int_set1(e)), columns[e], weight[j]);
      }
    }
  } else if (candidates) {  // (every slot's)
    slot_logits<K, 0>(base, stride, E, live, chosen, weight);
  } else {
    slot_logits<K, kFirstPick>(base, stride, E, live, chosen, weight);
  }
  // (Sigmoid's deferred picks are kept below with softmax's: this order leaves the softmax instance's
  // code as it was; keeping them first cost logits E = 8, K = 2 3%, bench/NOTES.md item 77.)
  if constexpr (kSigmoid) {
    if (!picks) {
      store_score_slots<K>(c, weight, chosen, nullptr, weights_out, experts_out);
      return true;
    }
  }
  if (candidates) {
    store_slots<K>(weight, chosen, logits_out, experts_out);
    F Z;
    if (entropy_out) {  // H = ln Z - sum_e p_e v_e, the same Z (bench/NOTES.md item 95)
      F dot;
      Z = kOneVector ? column_exp_sums<true>(columns, E, row_max, &dot)
                     : row_exp_sums<true>(base, stride, E, live, row_max, &dot);
      Vec::store(entropy_out, Vec::sub(vlog(Z), Vec::div(dot, Z)));
    } else {
      Z = kOneVector ? column_exp_sums(columns, E, row_max) : row_exp_sums(base, stride, E, live, row_max);
    }
    const F inv = Vec::div(Vec::set1(1.0f), Z);
    for (int j = 0; j < K; ++j) weight[j] = Vec::mul(vexp(Vec::sub(weight[j], row_max)), inv);
    store_slots<K>(weight, chosen, weights_out, experts_out);
    return true;
  }
  if (picks) {  // (sigmoid weights, or normalized softmax ones)
    picks->row_max = row_max;
    for (int j = 0; j < K; ++j) {
      picks->logit[j] = weight[j];
      picks->chosen[j] = chosen[j];
    }
    return true;
  }
  F sum = slot_exponentials<K>(row_max, weight);
  // normalize: false, the weights are the scores exp(u_j - max) / Z, Z over every expert (>= 1).
  if (!c.normalize)
    sum = kOneVector ? column_exp_sums(columns, E, row_max) : row_exp_sums(base, stride, E, live, row_max);
  store_scaled_slots<K>(c, sum, weight, chosen, weights_out, experts_out);
  return true;
}
#pragma GCC diagnostic pop

// rows_across_tokens as a call of its own, for E > kLanes (see run_across_tokens).
template <int K, int kFixedE, bool kSigmoid>
[[gnu::noinline]] bool rows_across_tokens_call(const Config& c, const float* base, int64_t stride, int live,
                                               float* weights_out, int32_t* experts_out, int32_t* counts,
                                               float* logits_out, float* entropy_out) {
  return rows_across_tokens<K, false, kFixedE, kSigmoid>(c, base, stride, live, weights_out, experts_out, counts,
                                                         logits_out, entropy_out);
}

// rows_across_tokens over a run of `groups` consecutive groups (kLanes rows of `stride` each), chosen
// once for the run: the choice, the call and the selection's constants were paid a group, a tenth
// of a group of logits E = 8 in cache. Inlined into the loop for E <= kLanes, a call for more (its
// knockout or columns inlined measured 2-5% slower; bench/NOTES.md item 28). Returns the groups
// routed before the first that holds a non-finite logit (which, like those after it, is left
// unwritten). live: rows_across_tokens' (kLanes but for a lone gathered group). The counts of E <=
// kTallyMaxE go through a NibbleTally (counts given only with whole groups: every lane a token).
// For kDeferMinE <= E <= kDeferMaxE (E <= kLanes), normalized softmax weights (1 < K <= kDeferMaxK)
// and sigmoid weights (K <= kDeferMaxSigmoidK) are computed kDeferGroups groups at a time after
// their selections (GroupPicks): such a group's selection is short, and the exponential (or sigmoid)
// and division of its weights, ~80 cycles of dependent steps at its end, did not overlap the next
// group's work (AVX2, logits E = 8, K = 2, in cache, one thread: 60% of the samples on that chain;
// deferred, -18%; bench/NOTES.md item 77). Softmax with K = 8, sigmoid with K = 4 and the column
// path's longer groups lost; softmax's K = 1 has no weights to compute. On AVX-512 (Zen 4, item 81)
// only softmax with K = 2 and 4 <= E <= 8 gained (E = 8 -5%, E = 4 -3%), while E = 2 and 16, K = 4
// and sigmoid lost 5-28%: only those defer there. (AVX2 on that Zen 4 gained as on Zen 3, but for
// K = 4: +27%, where Zen 3 measured -7%.)
constexpr bool kWideDefer = kLanes >= 16;
constexpr int kDeferGroups = 4, kDeferMaxK = kWideDefer ? 2 : 4, kDeferMaxSigmoidK = kWideDefer ? 0 : 2;
constexpr int kDeferMinE = kWideDefer ? 4 : 1, kDeferMaxE = kWideDefer ? 8 : kLanes;
template <int K, bool kOneVector, int kFixedE, bool kSigmoid>
inline int run_across_tokens(const Config& c, const float* base, int64_t stride, int groups, int live,
                             float* weights_out, int32_t* experts_out, int32_t* counts, float* logits_out,
                             float* entropy_out) {
  NibbleTally tally;
  const bool tallied = kOneVector && counts && c.E <= kTallyMaxE;
  constexpr bool kDeferable = kOneVector && (kSigmoid ? K <= kDeferMaxSigmoidK : K > 1 && K <= kDeferMaxK);
  const bool defer =
      kDeferable && !logits_out && (kSigmoid || c.normalize) && c.E >= kDeferMinE && c.E <= kDeferMaxE;
  GroupPicks<K> picks[kDeferable ? kDeferGroups : 1];
  const auto weigh = [&](int first, int end) {  // the deferred groups [first, end)
    for (int g = first; g < end; ++g) {
      GroupPicks<K>& p = picks[g % kDeferGroups];
      float* weights = weights_out + g * kLanes * K;
      int32_t* experts = experts_out + g * kLanes * K;
      if constexpr (kSigmoid) store_score_slots<K>(c, p.logit, p.chosen, nullptr, weights, experts);
      else store_scaled_slots<K>(c, slot_exponentials<K>(p.row_max, p.logit), p.logit, p.chosen, weights, experts);
    }
  };
  int g = 0;
  for (; g < groups; ++g) {
    const float* rows = base + g * kLanes * stride;
    float* weights = weights_out + g * kLanes * K;
    int32_t* experts = experts_out + g * kLanes * K;
    float* logits = logits_out ? logits_out + g * kLanes * K : nullptr;
    float* entropy = entropy_out ? entropy_out + g * kLanes : nullptr;
    bool routed;
    if constexpr (kOneVector) {
      routed = rows_across_tokens<K, true, kFixedE, kSigmoid>(c, rows, stride, live, weights, experts,
                                                              tallied ? nullptr : counts, logits, entropy,
                                                              tallied ? &tally : nullptr,
                                                              defer ? &picks[g % kDeferGroups] : nullptr);
      if (routed && tallied) tally.group_done(c.E, counts);
    } else {
      routed = rows_across_tokens_call<K, kFixedE, kSigmoid>(c, rows, stride, live, weights, experts, counts, logits,
                                                             entropy);
    }
    if (!routed) break;
    if (defer && g % kDeferGroups == kDeferGroups - 1) weigh(g + 1 - kDeferGroups, g + 1);
  }
  if (defer) weigh(g - g % kDeferGroups, g);
  if (tallied) tally.flush(c.E, counts);
  return g;
}

// run_across_tokens for rows of kLanes < E <= kColumnMaxE experts, with E known at compile time where
// the rows lie back to back and E is a power of two up to 256 (kE, 2 kE, ...): the column path's
// bounds, its fetches' addresses (constant offsets instead of a product a row) and its loops fold
// (AVX2, in cache, one thread: E = 64 -7 to -9%, E = 256 -5 to -10%; bench/NOTES.md item 54; 512
// and 1024, which take the columns since item 56, not measured that way).
constexpr int kFixedColumnsMaxE = 256;
template <int K, bool kSigmoid, int kE = 2 * kLanes>
inline int run_columns(const Config& c, const float* base, int64_t stride, int groups, int live, float* weights_out,
                       int32_t* experts_out, int32_t* counts, float* logits_out, float* entropy_out) {
  if constexpr (kE <= kFixedColumnsMaxE) {
    if (c.E == kE && stride == kE)
      return run_across_tokens<K, false, kE, kSigmoid>(c, base, stride, groups, live, weights_out, experts_out, counts,
                                                       logits_out, entropy_out);
    return run_columns<K, kSigmoid, 2 * kE>(c, base, stride, groups, live, weights_out, experts_out, counts, logits_out,
                                            entropy_out);
  } else {
    return run_across_tokens<K, false, 0, kSigmoid>(c, base, stride, groups, live, weights_out, experts_out, counts,
                                                    logits_out, entropy_out);
  }
}

// run_across_tokens for c.K, instantiated with K known at compile time, so that its lists live in
// registers, and with whether E <= kLanes, so that the columns of such E do too. Rows of 2, 4 or 8
// experts back to back (logits) get E itself: with narrow_columns' shape and every loop known, the
// columns stay in registers from the load on (otherwise its path and load_columns' met in a stack
// array: logits E = 8, K = 2 in cache, one thread, 0.067 -> 0.060 ms; logits-8x2 from DRAM, two
// threads, 0.250 -> 0.220). So do rows of exactly a vector of 8 (AVX2): with E and the stride known,
// the bounds' tests of the loops over experts fold away (l3-8x2 in cache, one thread, -11 to -13%;
// bench/NOTES.md item 54), and on AVX2 the wider rows of a power of two (run_columns; AVX-512 and
// NEON, not measured that way, keep E a run-time value there).
template <bool kSigmoid, int K = 1>
inline int groups_across_tokens(const Config& c, const float* base, int64_t stride, int groups, int live,
                                float* weights_out, int32_t* experts_out, int32_t* counts,
                                float* logits_out = nullptr, float* entropy_out = nullptr) {
  if constexpr (K < kAcrossMaxK) {
    if (c.K != K)
      return groups_across_tokens<kSigmoid, K + 1>(c, base, stride, groups, live, weights_out, experts_out, counts,
                                                   logits_out, entropy_out);
  }
  if (c.E > kLanes) {
    if constexpr (kLanes == 8)
      return run_columns<K, kSigmoid>(c, base, stride, groups, live, weights_out, experts_out, counts, logits_out,
                                      entropy_out);
    return run_across_tokens<K, false, 0, kSigmoid>(c, base, stride, groups, live, weights_out, experts_out, counts,
                                                    logits_out, entropy_out);
  }
  return with_fixed_width(c.E, stride, [&](auto width) {
    // (A width below K never comes, K <= E, and is not instantiated.)
    constexpr int kWidth = decltype(width)::value >= K ? decltype(width)::value : 0;
    return run_across_tokens<K, true, kWidth, kSigmoid>(c, base, stride, groups, live, weights_out, experts_out, counts,
                                                        logits_out, entropy_out);
  });
}

// What score_keys_across_tokens needs beyond the Config: the selection bias ([E], zeros where there
// is none) and the groups (count 0: none).
struct ScoreKeys {
  const float* bias;
  int groups, size, select;  // G, E / G and g of SPEC's groups
  bool softmax;              // softmax scores (else sigmoid)
};

// Each lane's kept groups (SPEC §3, keep_top_groups' choice exactly): group g's score is the sum in
// double of its two largest keys (its largest where it holds one expert), from each lane's two
// largest (top[g]); group g is kept where fewer than `select` groups come before it (a larger score,
// or an equal one and a lower index), counted pair by pair.
inline void keep_groups_across_tokens(const LaneMaxima* top, int groups, int size, int select, M* kept) {
  Vec::D score[kScoreKeyMaxGroups];
  F before[kScoreKeyMaxGroups];
  const F one = Vec::set1(1.0f), zero = Vec::zero();
  for (int g = 0; g < groups; ++g) {
    score[g] = Vec::sum_double(top[g].first, size == 1 ? zero : top[g].second);
    before[g] = zero;
  }
  for (int g = 1; g < groups; ++g)
    for (int h = 0; h < g; ++h) {
      const M h_first = Vec::ge_double(score[h], score[g]);
      before[g] = Vec::add(before[g], Vec::select(h_first, one, zero));
      before[h] = Vec::add(before[h], Vec::select(h_first, zero, one));
    }
  const F limit = Vec::set1(static_cast<float>(select));
  for (int g = 0; g < groups; ++g) kept[g] = Vec::lt(before[g], limit);
}

// The keys of kLanes tokens (one per lane; rows at base, row stride `stride`, E <= kScoreKeyMaxE,
// every row read) under sigmoid or softmax scores with a selection bias or groups, key = s + bias,
// s = sigma(u) as the token-by-token path computes it, or exp(u - max) / Z with Z summed lane by lane
// (the token path sums a vector of experts at a time: the scores can differ in their last bits, so
// near-ties within docs/semantics.md §13's bound can order otherwise), into columns[0, E)
// (load_columns), softmax's max and 1 / Z into *softmax, and for the kept experts
// (keep_groups_across_tokens; ungrouped, every expert) each lane's largest and least key into max and
// min and, grouped, the groups kept into kept[0, G). False, the rest unset, when a logit of the group is
// not finite. (Apart from score_keys_group, which is instantiated for every K and power: inlined there,
// this pass made the AVX-512 unit compile in 86 s instead of 71, and over 20 minutes under the
// sanitizers.)
template <bool kGrouped, bool kSoftmax>
[[gnu::noinline]] bool score_keys_columns(const ScoreKeys& sk, int E, const float* base, int64_t stride, F* columns,
                                          F& max, F& min, M* kept, SoftmaxLanes* softmax) {
  const int size = kGrouped ? sk.size : E;
  // Softmax: first each lane's largest logit and the numerators exp(u - max) (the token path's
  // softmax_numerators, term by term) into the columns, and 1 / Z, Z their sum lane by lane.
  F check = Vec::zero();
  if constexpr (kSoftmax) {
    F lane_max[2] = {Vec::set1(-kInf), Vec::set1(-kInf)};
    for (int e0 = 0; e0 < E; e0 += kLanes) {
      load_columns(base, E, e0, stride, columns + e0);  // (past E: the lowest float)
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) {
        check = add_to_check(check, columns[e0 + i]);
        lane_max[i % 2] = Vec::max(lane_max[i % 2], columns[e0 + i]);
      }
    }
    if (!check_passed(check)) return false;
    softmax->max = Vec::max(lane_max[0], lane_max[1]);
    F sums[2] = {Vec::zero(), Vec::zero()};
    for (int e = 0; e < E; ++e) {
      columns[e] = vexp(Vec::sub(columns[e], softmax->max));
      sums[e % 2] = Vec::add(sums[e % 2], columns[e]);
    }
    softmax->inv = Vec::div(Vec::set1(1.0f), Vec::add(sums[0], sums[1]));
  }
  // Each group's lanes' two largest and least keys: the current group's in registers (indexed
  // arrays went through memory, a store and a load on every key's chain), stored when it ends.
  // Ungrouped, the largest and least in two chains each.
  LaneMaxima top[kGrouped ? kScoreKeyMaxGroups : 1], current;
  F low[kGrouped ? kScoreKeyMaxGroups : 2], high[2], least = Vec::set1(kInf);
  for (F& x : low) x = Vec::set1(kInf);
  for (F& x : high) x = Vec::set1(-kInf);
  int g = 0, group_end = size;
  for (int e0 = 0; e0 < E; e0 += kLanes) {
    F block[kLanes];
    if constexpr (!kSoftmax) load_columns(base, E, e0, stride, block);
    const int width = E - e0 < kLanes ? E - e0 : kLanes;
#pragma GCC unroll 16
    for (int i = 0; i < kLanes; ++i) {
      if (i >= width) break;
      const int e = e0 + i;
      F score;
      if constexpr (kSoftmax) {
        score = Vec::mul(columns[e], softmax->inv);
      } else {
        check = add_to_check(check, block[i]);
        score = vsigmoid(block[i]);
      }
      const F key = Vec::add(score, Vec::set1(sk.bias[e]));
      columns[e] = key;
      if constexpr (kGrouped) {
        if (e == group_end) {
          top[g] = current;
          low[g++] = least;
          current = LaneMaxima{};
          least = Vec::set1(kInf);
          group_end += size;
        }
        current.add(key);
        least = Vec::min(least, key);
      } else {
        high[i % 2] = Vec::max(high[i % 2], key);
        low[i % 2] = Vec::min(low[i % 2], key);
      }
    }
  }
  if (!kSoftmax && !check_passed(check)) return false;
  if constexpr (kGrouped) {
    top[g] = current;
    low[g] = least;
    keep_groups_across_tokens(top, sk.groups, size, sk.select, kept);
    max = Vec::set1(-kInf);
    min = Vec::set1(kInf);
    for (int h = 0; h < sk.groups; ++h) {
      max = Vec::select(kept[h], Vec::max(max, top[h].first), max);
      min = Vec::select(kept[h], Vec::min(min, low[h]), min);
    }
  } else {
    max = Vec::max(high[0], high[1]);
    min = Vec::min(low[0], low[1]);
  }
  return true;
}

// The K slots of kLanes tokens under sigmoid or softmax scores with a selection bias or groups (rows at base,
// row stride `stride`, E <= kScoreKeyMaxE; a gathered group's rows past `live` are copies of its
// first), stored as kLanes rows of K in weights_out and experts_out, their experts added to counts
// unless null: the keys from score_keys_columns; their largest `max` and m = max |key| of the kept
// experts scale the packed keys (logit_key<-kPower>: w' = (max - key) / (2 m) to the power kPower =
// score_key_power(E)), an expert of a group not kept keyed above every kept one's; the network
// (add_keys) takes the L smallest, and the weights are the scores of the slots' own logits
// (store_score_slots). False, writing nothing, when a logit of the group is not finite.
// docs/semantics.md §13 bounds the keys' truncation.
// (GCC 12 reports best as maybe uninitialized: the first block's add_keys writes it.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
template <int K, int kPower, bool kGrouped>
[[gnu::noinline]] bool score_keys_group(const Config& c, const ScoreKeys& sk, const float* base, int64_t stride,
                                        int live, float* weights_out, int32_t* experts_out, int32_t* counts) {
  constexpr int L = K <= 1 ? 1 : K <= 2 ? 2 : K <= 4 ? 4 : 8;
  const int E = c.E, size = kGrouped ? sk.size : E;
  alignas(64) F columns[kScoreKeyMaxE];
  M kept[kGrouped ? kScoreKeyMaxGroups : 1];
  F max, min;
  SoftmaxLanes softmax;
  if (!(sk.softmax ? score_keys_columns<kGrouped, true>(sk, E, base, stride, columns, max, min, kept, &softmax)
                   : score_keys_columns<kGrouped, false>(sk, E, base, stride, columns, max, min, kept, nullptr)))
    return false;
  const F scale = scaled_key_scale(max, min);
  const int bits = E > 1 ? 32 - __builtin_clz(static_cast<uint32_t>(E - 1)) : 0;
  const Vec::I value_bits = Vec::int_set1(0x7fffffff & ~((1 << bits) - 1)), expert_bits = Vec::int_set1((1 << bits) - 1);
  const Vec::I dropped = Vec::int_set1(std::numeric_limits<int32_t>::max());  // (padding too)
  Vec::I best[L];
  int g = 0, group_end = size;
  M keep{};
  if constexpr (kGrouped) keep = kept[0];
  for (int e0 = 0; e0 < E; e0 += L) {
    Vec::I key[L];
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i) {
      const int e = e0 + i;
      if (e >= E) {
        key[i] = dropped;
        continue;
      }
      key[i] = logit_key<-kPower>(max, columns[e], value_bits, Vec::int_set1(kExpertIndex.of[e]), scale);
      if constexpr (kGrouped) {
        if (e == group_end) {
          keep = kept[++g];
          group_end += size;
        }
        key[i] = Vec::to_bits(Vec::select(keep, Vec::from_bits(key[i]), Vec::from_bits(dropped)));
      }
    }
    add_keys<L>(best, key, e0 == 0);
  }
  Vec::I chosen[K];
  for (int j = 0; j < K; ++j) chosen[j] = Vec::int_and(best[j], expert_bits);
  if (counts) add_slot_counts(chosen, K, E, counts);
  F weight[K];
  slot_logits<K, 0>(base, stride, E, live, chosen, weight);
  store_score_slots<K>(c, weight, chosen, sk.softmax ? &softmax : nullptr, weights_out, experts_out);
  return true;
}
#pragma GCC diagnostic pop

// score_keys_group over `groups` consecutive groups of kLanes rows, with K, the power of the keys and
// whether groups are on known at compile time; returns the groups routed before the first that holds
// a non-finite logit (run_across_tokens' contract).
template <int K = 1, int kPower = 1>
inline int score_keys_across_tokens(const Config& c, const ScoreKeys& sk, const float* base, int64_t stride,
                                    int groups, int live, float* weights_out, int32_t* experts_out, int32_t* counts) {
  if constexpr (K < kAcrossMaxK) {
    if (c.K != K)
      return score_keys_across_tokens<K + 1, kPower>(c, sk, base, stride, groups, live, weights_out, experts_out,
                                                     counts);
  }
  if constexpr (kPower < 32) {
    if (score_key_power(c.E) != kPower)
      return score_keys_across_tokens<K, kPower == 8 ? 32 : 2 * kPower>(c, sk, base, stride, groups, live,
                                                                         weights_out, experts_out, counts);
  }
  const auto run = [&](auto grouped) {
    int g = 0;
    for (; g < groups; ++g)
      if (!score_keys_group<K, kPower, decltype(grouped)::value>(c, sk, base + g * kLanes * stride, stride, live,
                                                                 weights_out + g * kLanes * K,
                                                                 experts_out + g * kLanes * K, counts))
        break;
    return g;
  };
  return sk.groups > 0 ? run(std::true_type{}) : run(std::false_type{});
}

// Rows [n, kLanes) of a gathered group (rows back to back, E floats each) made copies of its first.
inline void pad_group(float* rows, int n, int E) {
  for (int l = n; l < kLanes; ++l) std::memcpy(rows + l * E, rows, E * sizeof(float));
}

// A block's rows in groups of kLanes tokens, one per lane: runs of whole groups to whole(base, t0,
// groups) (the run's first row and token), which returns how many it took from the start; the rows
// of a group it did not take, and those after the last whole group, one by one to take(i), and the
// rows it accepts gathered into groups of their own making, rows back to back (stride E) in
// `gathered` (kLanes * E floats), each handed to part(gathered, n, tokens) with its n live rows'
// tokens when full, and the last one with fewer (rows [n, kLanes) unset: pad_group).
template <class Whole, class Take, class Part>
inline void by_groups(const RowBlock& b, float* gathered, Whole&& whole, Take&& take, Part&& part) {
  const int E = b.config->E;
  int64_t tokens[kLanes];
  int n = 0;
  const auto flush = [&] {
    part(gathered, n, tokens);
    n = 0;
  };
  const auto one_row = [&](int i) {
    if (!take(i)) return;
    std::memcpy(gathered + n * E, b.u + i * b.u_stride, E * sizeof(float));
    tokens[n++] = b.first + i;
    if (n == kLanes) flush();
  };
  const int whole_groups = b.rows / kLanes;
  for (int g = 0; g < whole_groups;) {
    g += whole(b.u + g * kLanes * b.u_stride, b.first + g * kLanes, whole_groups - g);
    if (g == whole_groups) break;
    for (int i = g * kLanes; i < (g + 1) * kLanes; ++i) one_row(i);  // a group not taken
    ++g;
  }
  for (int i = whole_groups * kLanes; i < b.rows; ++i) one_row(i);
  if (n > 0) flush();
}

// by_groups over the finite rows: a row with a non-finite logit goes to left(row) instead, and the
// rows past n of a gathered group are copies of its first (pad_group) where `pad` (the columns read
// them).
template <class Whole, class Left, class Part>
inline void by_finite_groups(const RowBlock& b, bool pad, float* gathered, Whole&& whole, Left&& left, Part&& part) {
  const int E = b.config->E;
  const auto take = [&](int i) {
    if (finite_row(b.u + i * b.u_stride, E)) return true;
    left(i);
    return false;
  };
  by_groups(b, gathered, whole, take, [&](float* rows, int n, const int64_t* tokens) {
    if (pad) pad_group(rows, n, E);
    part(rows, n, tokens);
  });
}

// A selection across tokens over a block (E <= kAcrossMaxE, K <= kAcrossMaxK): run(base, stride,
// groups, live, weights_out, experts_out, counts) routes `groups` groups of kLanes rows and returns how
// many it routed before one with a non-finite logit (groups_across_tokens, score_keys_across_tokens);
// `pad`: whether it reads a gathered group's rows past `live`. Whole groups of kLanes rows
// straight from u; the rows of a group that holds a non-finite logit, and those after the last
// whole group, one by one: each finite row is gathered into a group of its own making (the last one
// with fewer rows: the lanes past them are copies of its first row, whose answers are dropped; the
// knockout and the weights' picks take them as such without reading them, which saved a lone token
// of E = 1024 the keys of 15 rows, the columns read them, copied there), and the others are handed to
// left(row) for the token-by-token path (sanitize mode; reject mode only marks them). So every
// finite token gets the same lane-wise operations, and the same answer bit for bit, whatever batch
// or place in it it comes in: the token-by-token path sums its weights in another order and breaks
// near-ties by other keys, and the token-mode cache hands one batch's rows to another.
template <class Run, class Left>
inline void across_rows(const RowBlock& b, bool pad, Run&& run, Left&& left) {
  const Config& c = *b.config;
  moe_route_outputs* fused = b.params->fused_out;
  const int E = c.E, K = c.K;
  int32_t counts[kAcrossMaxE];  // the routed tokens' counts (all valid), added once; E of them used
  std::memset(counts, 0, E * sizeof(int32_t));  // (not all kAcrossMaxE: 4 KiB a block on AVX-512)
  alignas(64) float gathered[kLanes * kAcrossMaxE];
  alignas(64) float weights[kLanes * kAcrossMaxK];
  alignas(64) int32_t experts[kLanes * kAcrossMaxK];
  const auto whole = [&](const float* base, int64_t t0, int groups) {
    const int done = run(base, b.u_stride, groups, kLanes, fused->weights + t0 * K, fused->experts + t0 * K, counts);
    std::memset(b.out->invalid + t0, 0, done * kLanes);
    for (int g = 0; g < done; ++g) Vec::store_int(fused->experts_per_token + t0 + g * kLanes, Vec::int_set1(K));
    b.sums.k_histogram[K] += done * kLanes;
    return done;
  };
  const auto part = [&](float* rows, int n, const int64_t* tokens) {
    run(rows, E, 1, n, weights, experts, nullptr);  // finite rows: cannot fail
    for (int l = 0; l < n; ++l) {
      const int64_t t = tokens[l];
      std::memcpy(fused->weights + t * K, weights + l * K, K * sizeof(float));
      std::memcpy(fused->experts + t * K, experts + l * K, K * sizeof(int32_t));
      fused->experts_per_token[t] = K;
      b.out->invalid[t] = 0;
      for (int j = 0; j < K; ++j) ++counts[experts[l * K + j]];
    }
    b.sums.k_histogram[K] += n;
  };
  by_finite_groups(b, pad, gathered, whole, left, part);
  for (int e = 0; e < E; ++e) {
    b.sums.counts[e] += counts[e];
    b.sums.counts_valid[e] += counts[e];
  }
}

// Top-p's, threshold's, entropy's or norm's assignment of n <= kLanes tokens, one a lane, from their K
// candidates in rows of K (candidates_across_rows' buffers; scores in descending order): k_t into
// k_out (entropy and norm: k_given's, decided by the caller), the slots (expert -1 past k_t) and the
// weights into experts_out and weights_out (rows of K), as assign_token gives them for scores that are
// not softmax weights, in f32 where it sums in double.
// Threshold's test s_j >= threshold is exact (against the least float >= threshold); top-p's
// cumulative sums are f32, so a lane whose sum comes within kTopPUnsure of p at a step that could
// decide k_t is left to the exact path: its bit is set in the mask returned. kmin <= k_t <= K as
// decide_k clamps it; weights s_j / sum (or 1 / k_t when the sum is 0), or s_j with normalize off,
// times scale; empty slots 0. Instantiated for each K, the slots in registers. On AVX-512, for K a
// power of two and a whole group (n = kLanes), they come into columns by to_columns and go back by
// store_slots, where a scalar copy each way through a stack array cost up to 40% of top-p's route
// (logits E = 8, K = 2, one thread); other K, AVX2 (slower turned: 16 registers) and NEON (not
// measured) keep the copies (bench/NOTES.md item 87).
constexpr float kTopPUnsure = 2e-6f;  // > K f32 roundings of a sum <= 1 (and p's own), K <= 8
template <int K = 1>
inline uint32_t finish_candidates(const Config& c, const KParams& kp, int n, const int32_t* experts,
                                  const float* scores, const int32_t* k_given, int32_t* experts_out,
                                  float* weights_out, int32_t* k_out) {
  if constexpr (K < kAcrossMaxK) {
    if (c.K != K)
      return finish_candidates<K + 1>(c, kp, n, experts, scores, k_given, experts_out, weights_out, k_out);
  }
  constexpr bool kTurned = kLanes == 16 && (K & (K - 1)) == 0;  // (see above; whole groups only)
  const bool turned = kTurned && n == kLanes;
  F slot_score[K];
  Vec::I slot_expert[K];
  if (turned) {
    F expert_bits[K];
    for (int j = 0; j < K; ++j) {
      slot_score[j] = Vec::load(scores + j * kLanes);
      expert_bits[j] = Vec::from_bits(Vec::int_load(experts + j * kLanes));
    }
    to_columns<K>(slot_score);
    to_columns<K>(expert_bits);
    for (int j = 0; j < K; ++j) slot_expert[j] = Vec::to_bits(expert_bits[j]);
  } else {
    alignas(64) float column_score[K][kLanes];
    alignas(64) int32_t column_expert[K][kLanes];
    for (int j = 0; j < K; ++j)
      for (int l = 0; l < kLanes; ++l) {
        const int from = (l < n ? l : 0) * K + j;
        column_score[j][l] = scores[from];
        column_expert[j][l] = experts[from];
      }
    for (int j = 0; j < K; ++j) {
      slot_score[j] = Vec::load(column_score[j]);
      slot_expert[j] = Vec::int_load(column_expert[j]);
    }
  }
  Vec::I k = Vec::int_set1(K);
  uint32_t unsure = 0;
  if (c.options.strategy == MOE_STRATEGY_TOP_P) {
    const F p = Vec::set1(static_cast<float>(kp.top_p)), near = Vec::set1(kTopPUnsure);
    // (Scores >= 0: the sum never falls back below p once it reached it, so the lanes decided before
    // step j are those whose sum reached p at step j - 1.)
    F cumulative = Vec::zero();
    M decided = Vec::lt(near, Vec::zero());  // (none)
    for (int j = 0; j < K; ++j) {
      cumulative = Vec::add(cumulative, slot_score[j]);
      unsure |= Vec::bits(Vec::mask_andnot(decided, Vec::lt(Vec::abs(Vec::sub(cumulative, p)), near)));
      const M reached = Vec::ge(cumulative, p);
      k = Vec::to_bits(Vec::select(Vec::mask_andnot(decided, reached), Vec::from_bits(Vec::int_set1(j + 1)),
                                   Vec::from_bits(k)));
      decided = reached;
    }
  } else if (c.options.strategy == MOE_STRATEGY_THRESHOLD) {
    // s >= threshold in double is s >= the least float >= threshold
    float least = static_cast<float>(kp.threshold);
    if (static_cast<double>(least) < kp.threshold) least = std::nextafter(least, kInf);
    const F threshold = Vec::set1(least);
    k = Vec::int_set1(0);
    const F one = Vec::from_bits(Vec::int_set1(1)), none = Vec::zero();
    for (int j = 0; j < K; ++j)
      k = Vec::int_add(k, Vec::to_bits(Vec::select(Vec::ge(slot_score[j], threshold), one, none)));
  } else {
    k = Vec::int_load(k_given);
  }
  k = Vec::int_min(Vec::int_max(k, Vec::int_set1(c.kmin)), Vec::int_set1(K));

  F sum = Vec::zero();
  M kept[K];
  for (int j = 0; j < K; ++j) {
    kept[j] = Vec::int_gt(k, Vec::int_set1(j));
    sum = Vec::add(sum, Vec::select(kept[j], slot_score[j], Vec::zero()));
  }
  const F scale = Vec::set1(static_cast<float>(c.options.scale));
  const M positive = Vec::gt(sum, Vec::zero());
  const F even = Vec::div(Vec::set1(1.0f), Vec::to_float(k));
  F weight[K];
  for (int j = 0; j < K; ++j) {
    const F w = !c.normalize ? slot_score[j] : Vec::select(positive, Vec::div(slot_score[j], sum), even);
    weight[j] = Vec::select(kept[j], Vec::mul(w, scale), Vec::zero());
    slot_expert[j] = Vec::to_bits(Vec::select(kept[j], Vec::from_bits(slot_expert[j]), Vec::from_bits(Vec::int_set1(-1))));
  }
  alignas(64) int32_t lane_k[kLanes];
  Vec::store_int(lane_k, k);
  for (int l = 0; l < n; ++l) k_out[l] = lane_k[l];
  if (turned) {
    store_slots<K>(weight, slot_expert, weights_out, experts_out);
  } else {
    alignas(64) float column_weight[K][kLanes];
    alignas(64) int32_t column_expert[K][kLanes];
    for (int j = 0; j < K; ++j) {
      Vec::store(column_weight[j], weight[j]);
      Vec::store_int(column_expert[j], slot_expert[j]);
    }
    for (int l = 0; l < n; ++l)
      for (int j = 0; j < K; ++j) {
        experts_out[l * K + j] = column_expert[j][l];
        weights_out[l * K + j] = column_weight[j][l];
      }
  }
  return unsure & ((n < 32 ? 1u << n : 0u) - 1u);
}

// The candidates (rows_across_tokens' logits_out form) of a block's finite rows, across tokens as
// across_rows takes them (whole groups straight from u, the others gathered), handed to
// finish_run(tokens, t0, n, experts, scores, logits, entropies): n tokens, tokens[l] (or t0 + l where
// tokens is null), their slots in rows of K, and with `entropy` each token's H(s) = ln Z - sum p v in
// entropies[l] (f32; else null); the rows with a non-finite logit go to left(row).
template <class Left, class FinishRun>
inline void candidates_across_rows(const RowBlock& b, bool entropy, Left&& left, FinishRun&& finish_run) {
  const Config& c = *b.config;
  const int E = c.E;
  // Whole groups go kCandidateRun at a time, so that the choice of kernel is paid a run, not a group.
  constexpr int kCandidateRun = 8, kRunSlots = kCandidateRun * kLanes * kAcrossMaxK;
  alignas(64) float gathered[kLanes * kAcrossMaxE];
  alignas(64) float scores[kRunSlots], logits[kRunSlots], run_entropies[kCandidateRun * kLanes];
  alignas(64) int32_t experts[kRunSlots];
  float* entropies = entropy ? run_entropies : nullptr;
  const auto whole = [&](const float* base, int64_t t0, int groups) {
    for (int g = 0; g < groups;) {
      const int run = groups - g < kCandidateRun ? groups - g : kCandidateRun;
      const int done = groups_across_tokens<false>(c, base + g * kLanes * b.u_stride, b.u_stride, run, kLanes, scores,
                                                   experts, nullptr, logits, entropies);
      const int64_t first = t0 + g * kLanes;
      std::memset(b.out->invalid + first, 0, static_cast<size_t>(done) * kLanes);
      finish_run(nullptr, first, done * kLanes, experts, scores, logits, entropies);
      g += done;
      if (done < run) return g;
    }
    return groups;
  };
  const auto part = [&](float* rows, int n, const int64_t* tokens) {
    // (finite rows: cannot fail)
    groups_across_tokens<false>(c, rows, E, 1, n, scores, experts, nullptr, logits, entropies);
    for (int l = 0; l < n; ++l) b.out->invalid[tokens[l]] = 0;
    finish_run(tokens, 0, n, experts, scores, logits, entropies);
  };
  by_finite_groups(b, by_columns<false>(c), gathered, whole, left, part);
}

// The loss terms (SPEC §7) of kLanes tokens at once, one per lane: the rows at base (stride
// `stride`), every logit finite, the live tokens in lanes [0, live). With m the row's maximum,
// v_e = u_e - m, S = sum_e exp(v_e) and p_e = exp(v_e) / S: m, S and sum_e p_e v_e into max, sum
// and p_dot_v (a lane each), and p_e added to p_lanes[e] lane by lane (the lanes past live add 0), or
// with `first` stored there (p_lanes[e] for e >= E are never written: add_to_p_sum drops them).
// The caller takes the entropy -sum_e p_e ln p_e = sum_e p_e (ln S - v_e) = ln S - sum_e p_e v_e:
// one logarithm a token instead of one an expert, every term >= 0, no horizontal sum. columns:
// scratch of padded(E) vectors. kFixedE, when not 0, is E, a power of two up to kLanes with the
// rows back to back (below kLanes narrow_columns, at kLanes load_columns with every bound known).
template <int kFixedE = 0>
inline void group_losses(const float* base, int E, int64_t stride, int live, bool first, F* columns, F* p_lanes,
                         F& max, F& sum, F& p_dot_v) {
  if constexpr (kFixedE > 0) E = stride = kFixedE;  // (the same values, now constants)
  F lane_max[4] = {Vec::set1(-kInf), Vec::set1(-kInf), Vec::set1(-kInf), Vec::set1(-kInf)};
  if constexpr (kFixedE > 0 && kFixedE < kLanes) {
    narrow_columns<kFixedE>(base, columns);
#pragma GCC unroll 8
    for (int e = 0; e < kFixedE; ++e) lane_max[e % 4] = Vec::max(lane_max[e % 4], columns[e]);
  } else {
    if constexpr (kFixedE == 0) {
      const bool fixed = with_fixed_width(E, stride, [&](auto width) {
        constexpr int kWidth = decltype(width)::value;
        if constexpr (kWidth > 0)
          group_losses<kWidth>(base, E, stride, live, first, columns, p_lanes, max, sum, p_dot_v);
        return kWidth > 0;
      });
      if (fixed) return;
    }
    for (int e0 = 0; e0 < E; e0 += kLanes) {
      load_columns(base, E, e0, stride, columns + e0);  // (past E: the lowest float)
#pragma GCC unroll 16
      for (int i = 0; i < kLanes; ++i) lane_max[i % 4] = Vec::max(lane_max[i % 4], columns[e0 + i]);
    }
  }
  max = Vec::max(Vec::max(lane_max[0], lane_max[1]), Vec::max(lane_max[2], lane_max[3]));

  F sums[2] = {Vec::zero(), Vec::zero()}, dot[2] = {Vec::zero(), Vec::zero()};
  const auto term = [&](int e, int j) {  // (two accumulators, and j known: registers, no chain)
    const F d = Vec::sub(columns[e], max);
    const F x = vexp(d);
    const F v = Vec::max(d, Vec::set1(kLossFloor));
    sums[j] = Vec::add(sums[j], x);
    dot[j] = Vec::fmadd(x, v, dot[j]);
    columns[e] = x;
  };
  int e = 0;
  for (; e + 2 <= E; e += 2) {
    term(e, 0);
    term(e + 1, 1);
  }
  if (e < E) term(e, 0);
  sum = Vec::add(sums[0], sums[1]);
  const F inv = Vec::div(Vec::set1(1.0f), sum);
  p_dot_v = Vec::mul(Vec::add(dot[0], dot[1]), inv);
  const F inv_live = Vec::select(Vec::first(live), inv, Vec::zero());
  if (first) {
    for (int e = 0; e < E; ++e) p_lanes[e] = Vec::mul(columns[e], inv_live);
  } else {
    for (int e = 0; e < E; ++e) p_lanes[e] = Vec::fmadd(columns[e], inv_live, p_lanes[e]);
  }
}

// The losses of a block's valid rows, for the default routing after its selection: group_losses
// over the groups of by_groups (whole groups of valid rows straight from u). Each token's logsumexp
// and entropy, and the probabilities added to sums.p_sum: summed lane by lane in f32 over at most
// kLossGroups groups, then in double. It replaced a pass token by token (a logarithm an expert and
// three horizontal sums a token; bench/NOTES.md item 24).
constexpr int kLossGroups = 8;
constexpr int kLossTokenRows = 4;
inline void losses_across_tokens(const RowBlock& b) {
  const TokenStage& out = *b.out;
  const int E = b.config->E;
  F* columns = reinterpret_cast<F*>(b.loss_scratch);
  F* p_lanes = columns + padded(E);
  float* gathered = reinterpret_cast<float*>(p_lanes + padded(E));  // kLanes rows of E
  int groups = 0;  // in p_lanes (the first of them stores its probabilities there)
  const auto add_p = [&] {
    add_to_p_sum(b.sums.p_sum, E, [&](int e0) { return sum_lanes(p_lanes + e0); });
    groups = 0;
  };
  // Token t's logsumexp m + ln S and entropy ln S - sum_e p_e v_e. ln S in double, as the oracle takes
  // it: an f32 ln S (an ulp is 2.4e-7 at S = 7) put the z-loss of uniform log-probability rows
  // (logsumexp 0) at 5x the oracle's. (S itself is an f32 sum: docs/semantics.md §13.)
  const auto write = [&](int64_t t, float max, float sum, float p_dot_v) {
    const double log_sum = std::log(static_cast<double>(sum));
    out.logsumexp[t] = max + log_sum;
    out.loss_entropy[t] = log_sum - p_dot_v;
  };
  const auto group = [&](const float* base, int64_t stride, int live, const int64_t* tokens) {
    F max, sum, p_dot_v;
    group_losses(base, E, stride, live, groups == 0, columns, p_lanes, max, sum, p_dot_v);
    alignas(64) float lane_max[kLanes], lane_sum[kLanes], lane_p_dot_v[kLanes];
    Vec::store(lane_max, max);
    Vec::store(lane_sum, sum);
    Vec::store(lane_p_dot_v, p_dot_v);
    for (int l = 0; l < live; ++l) write(tokens[l], lane_max[l], lane_sum[l], lane_p_dot_v[l]);
    if (++groups == kLossGroups) add_p();
  };
  const auto whole = [&](const float* base, int64_t t0, int groups) {
    for (int g = 0; g < groups; ++g, t0 += kLanes) {
      int64_t tokens[kLanes];
      for (int l = 0; l < kLanes; ++l) {
        if (out.invalid[t0 + l]) return g;
        tokens[l] = t0 + l;
      }
      group(base + g * kLanes * b.u_stride, b.u_stride, kLanes, tokens);
    }
    return groups;
  };
  const auto take = [&](int i) { return !out.invalid[b.first + i]; };
  const auto part = [&](float* rows, int n, const int64_t* tokens) {
    if (n > kLossTokenRows) {
      pad_group(rows, n, E);
      return group(rows, E, n, tokens);
    }
    // A few rows: each on its own, a vector of experts at a time (a group costs the exponentials
    // of kLanes rows: a lone token of E = 64 took 2.5 us instead of 1.7), by the same formulas.
    float* u = reinterpret_cast<float*>(columns);  // (free between groups)
    float* x = u + padded(E);
    for (int l = 0; l < n; ++l) {
      float max;
      sanitized_copy(rows + l * E, E, u, &max, nullptr, nullptr);  // (padding: -inf, x = 0)
      const float sum = softmax_numerators(u, E, max, x);
      F dot = Vec::zero();
      for (int e0 = 0; e0 < E; e0 += kLanes) {
        const F v = Vec::max(Vec::sub(Vec::load(u + e0), Vec::set1(max)), Vec::set1(kLossFloor));
        dot = Vec::fmadd(Vec::load(x + e0), v, dot);
      }
      const F inv = Vec::set1(1.0f / sum);
      add_to_p_sum(b.sums.p_sum, E, [&](int e0) { return Vec::mul(Vec::load(x + e0), inv); });
      write(tokens[l], max, sum, Vec::reduce_add(dot) / sum);
    }
  };
  by_groups(b, gathered, whole, take, part);
  if (groups > 0) add_p();
}

// Fused top-k, K <= kLanes, no selection bias or groups: softmax scores (the default routing, with or
// without losses, the logits workloads, and the same with `normalize: false`), sigmoid scores
// without losses, or select-then-softmax (weighted as normalized softmax; its losses as softmax
// scoring's). Both scores are monotone, so the K best scores are the scores of the K best logits (the
// two orders differ only between equal scores: near-ties, docs/semantics.md §13), and the normalized
// softmax weights s_j / sum_j s_j = exp(u_j - max) / sum_j exp(u_j - max) need neither the other
// experts' scores nor their sum. So this path selects on u and takes K exponentials instead of E
// (unnormalized softmax weights, the scores exp(u_j - max) / Z, take E for Z alone: no division,
// selection or store an expert; sigmoid weights, K sigmoids), and writes the token's assignment
// directly (k_t = K, every weight scaled, what assign_token gives for this configuration, rounded in
// f32). Up to kAcrossMaxK, and E up to kAcrossMaxE (softmax), kSelectThenSoftmaxAcrossMaxE or
// kSigmoidAcrossMaxE, every finite token runs across tokens (across_rows); the rest token by token,
// in phases over kPhaseRows tokens, so that the selections of neighbouring tokens, each a chain of
// dependent steps, overlap.
// (A block may hold any number of rows: a chunk of f32 logits comes as one.) The losses, which need
// every expert's probability, take a pass of their own (losses_across_tokens, softmax's).
inline void rows_by_logit_order(const RowBlock& b) {
  const Config& c = *b.config;
  const TokenStage& out = *b.out;
  moe_route_outputs* fused = b.params->fused_out;
  const int E = c.E, K = c.K;
  const bool sanitize = c.options.validation == MOE_VALIDATION_SANITIZE;
  const bool softmax = c.options.scoring == MOE_SCORING_SOFTMAX || c.weights_are_softmax;  // the weights' form
  const int64_t row_words = padded(E), slot_words = padded(K);
  float* rows = static_cast<float*>(b.scratch);  // kPhaseRows sanitized copies
  float* select_keys = rows + kPhaseRows * row_words;
  int32_t* select_index = reinterpret_cast<int32_t*>(select_keys + row_words);
  int32_t* select_order = select_index + row_words;
  int32_t* cand = select_order + row_words;  // [kPhaseRows][slot_words]
  float* best = reinterpret_cast<float*>(cand + kPhaseRows * slot_words);
  const F scale = Vec::set1(static_cast<float>(c.options.scale));
  const M slots = Vec::first(K);

  // One phase: the rows phase_rows[0, n) token by token.
  int phase_rows[kPhaseRows];
  int n = 0;
  const auto phase = [&] {
    float max[kPhaseRows], offset[kPhaseRows];
    LaneMaxima lane_max[kPhaseRows];
    bool skip[kPhaseRows], invalid[kPhaseRows];
    for (int r = 0; r < n; ++r) {
      const int64_t t = b.first + phase_rows[r];
      invalid[r] = sanitized_copy(b.u + phase_rows[r] * b.u_stride, E, rows + r * row_words, &max[r],
                                row_ahead(b, phase_rows[r]), &lane_max[r]);
      out.invalid[t] = invalid[r] ? 1 : 0;
      skip[r] = invalid[r] && !sanitize;
    }
    // Softmax: select on v = u - max (<= 0), not on u: select_in_vector truncates its keys' low
    // bits, a relative error that on u grows with the logits' scale (an adversarial test with logits
    // up to 1e3 found score gaps of 2.7e-3 max_p), and on v stays below 2^-19 e^-1 max_p
    // (docs/semantics.md §13). v is also what the weights' exponentials take, bit for bit. Sigmoid
    // (monotone too): on v = u - min(max, 0), whose truncation §13 bounds the same way, the weights
    // from u itself. (A row of -inf only: v = u.)
    for (int r = 0; r < n; ++r) {
      offset[r] = max[r] == -kInf ? 0.0f : softmax ? max[r] : std::min(max[r], 0.0f);
      if (!skip[r])
        select_best(rows + r * row_words, E, K, cand + r * slot_words, best + r * slot_words, select_keys,
                    select_index, select_order, *b.order, offset[r], &lane_max[r]);
    }
    // Sigmoid: the selected experts' logits in place of their keys, for all the phase's rows before
    // any is read as a vector (a row's vector load right after its K scalar stores waited for them:
    // E = 8, K = 2 took 21% longer than through rows_block; bench/NOTES.md item 60).
    if (!softmax)
      for (int r = 0; r < n; ++r)
        if (!skip[r])
          for (int j = 0; j < K; ++j) best[r * slot_words + j] = rows[r * row_words + cand[r * slot_words + j]];
    for (int r = 0; r < n; ++r) {
      if (skip[r]) continue;
      const int64_t t = b.first + phase_rows[r];
      const int32_t* experts = cand + r * slot_words;
      // The slots' scores (softmax: up to the factor 1/Z), 0 past K.
      const F v = Vec::load(best + r * slot_words);
      const F e = Vec::select(slots, softmax ? vexp(v) : vsigmoid(v), Vec::zero());
      // Normalized, over the slots: unless every score is 0 (a row of -inf only), sum > 0 (softmax:
      // >= 1, the largest logit is selected); else 1/K each. Otherwise the scores themselves: softmax's
      // over every expert, where a row of -inf only has scores 0.
      const float sum = c.normalize ? Vec::reduce_add(e)
                        : softmax   ? Vec::reduce_add(lane_exp_sums(rows + r * row_words, E, Vec::set1(offset[r])))
                                    : 1.0f;
      const F w = sum > 0        ? Vec::mul(e, Vec::div(scale, Vec::set1(sum)))
                  : c.normalize ? Vec::div(scale, Vec::set1(static_cast<float>(K)))
                                 : Vec::mul(e, scale);
      Vec::store_tail(fused->weights + t * K, w, K);
      Vec::store_int_tail(fused->experts + t * K, Vec::int_load(experts), K);
      fused->experts_per_token[t] = K;
      ++b.sums.k_histogram[K];
      for (int j = 0; j < K; ++j) {
        ++b.sums.counts[experts[j]];
        if (!invalid[r]) ++b.sums.counts_valid[experts[j]];
      }
    }
    n = 0;
  };
  const auto token_row = [&](int i) {
    phase_rows[n++] = i;
    if (n == kPhaseRows) phase();
  };
  const auto across = [&](auto sigmoid) {
    constexpr bool kSigmoid = decltype(sigmoid)::value;
    const auto run = [&](const float* base, int64_t stride, int groups, int live, float* weights, int32_t* experts,
                         int32_t* counts) {
      return groups_across_tokens<kSigmoid>(c, base, stride, groups, live, weights, experts, counts);
    };
    across_rows(b, by_columns<kSigmoid>(c), run, token_row);
  };
  if (softmax && E <= (c.weights_are_softmax ? kScaledKeyMaxE : kAcrossMaxE) && K <= kAcrossMaxK) {
    across(std::false_type{});
  } else if (!softmax && E <= kSigmoidAcrossMaxE && K <= kAcrossMaxK) {
    across(std::true_type{});
  } else {
    for (int i = 0; i < b.rows; ++i) token_row(i);
  }
  if (n > 0) phase();
  if (b.params->want_losses) losses_across_tokens(b);
}

inline void rows_block(const RowBlock& b) {
  const Config& c = *b.config;
  const StageParams& p = *b.params;
  const TokenStage& out = *b.out;
  const int E = c.E, K = c.K;
  const int64_t row_words = padded(E), slot_words = padded(K);
  const bool sanitize = c.options.validation == MOE_VALIDATION_SANITIZE;
  const bool softmax = c.options.scoring == MOE_SCORING_SOFTMAX;
  const bool keys_from_logits = c.options.order == MOE_ORDER_SELECT_THEN_SOFTMAX;
  moe_route_outputs* fused = p.fused_out;

  // select-then-softmax selects on u itself, and its weights, the softmax of the selected logits, are
  // the normalized softmax weights: the same routing whatever the scoring (the scores enter only the
  // losses).
  bool unbiased = true;
  for (int e = 0; unbiased && e < E; ++e) unbiased = p.selection_bias[e] == 0.0f;
  const bool logit_order = unbiased && fused && (softmax || !p.want_losses) && K <= kLanes &&
                           c.options.strategy == MOE_STRATEGY_TOP_K && c.group_size == 0;
  if (logit_order) {
    rows_by_logit_order(b);
    return;
  }

  // Scratch: the token's sanitized logits, scores, keys and a spare row (each padded with -inf or 0
  // past E so that whole vectors can be read), the selection's scratch, then the slot arrays.
  float* u = static_cast<float*>(b.scratch);
  float* s = u + row_words;
  float* key = s + row_words;
  float* spare = key + row_words;
  float* select_keys = spare + row_words;
  int32_t* select_index = reinterpret_cast<int32_t*>(select_keys + row_words);
  int32_t* select_order = select_index + row_words;
  int32_t* cand = select_order + row_words;
  float* cand_score = reinterpret_cast<float*>(cand + slot_words);
  float* cand_logit = cand_score + slot_words;
  float* best = cand_logit + slot_words;
  float* top = best + slot_words;
  int32_t* top_order = reinterpret_cast<int32_t*>(top + slot_words);
  const auto select = [&](const float* keys, int32_t* out) {
    select_best(keys, E, K, out, best, select_keys, select_index, select_order, *b.order);
  };

  // A fused token's assignment (core/assign.h) and its counts.
  const auto finish_fused = [&](const TokenRow& row, int64_t t, bool invalid) {
    const int k = assign_token(c, row, *p.k_params, fused->experts + t * K, fused->weights + t * K);
    fused->experts_per_token[t] = k;
    ++b.sums.k_histogram[k];
    for (int j = 0; j < k; ++j) {
      ++b.sums.counts[row.candidate_expert[j]];
      if (!invalid) ++b.sums.counts_valid[row.candidate_expert[j]];
    }
  };

  if (c.group_size > 0) {  // keep_best_groups' scratch
    b.group_score->resize(c.options.group_count);
    b.group_order->resize(c.options.group_count);
  }
  // Expert choice without the loss terms reads nothing of a token but its rows of the [T, E]
  // matrices (no groups: config.cc), which step 2 then writes itself, not by way of the scratch
  // (bench/NOTES.md item 103).
  const bool direct = p.want_full && !p.want_losses;
  // Token t's vectors of keys, s and u at e0 into its rows of those matrices.
  const auto store_full = [&](int64_t t, int e0, int lanes, F k, F score, F x) {
    Vec::store_tail(out.full_key + t * E + e0, k, lanes);
    if (out.full_score) Vec::store_tail(out.full_score + t * E + e0, score, lanes);
    if (out.full_logit) Vec::store_tail(out.full_logit + t * E + e0, x, lanes);
  };
  const auto token = [&](int i) {
    const int64_t t = b.first + i;
    const float* src = b.u + i * b.u_stride;

    // 1. Validation; the row is copied with non-finite entries (and the padding) at -inf.
    float max;
    const bool invalid = sanitized_copy(src, E, u, &max, row_ahead(b, i), nullptr);
    out.invalid[t] = invalid ? 1 : 0;
    if (invalid && !sanitize) return;

    // 2. Scores and keys; with `direct`, straight into the [T, E] matrices.
    const float exp_sum = softmax ? softmax_numerators(u, E, max == -kInf ? 0.0f : max, s) : 0.0f;
    {
      const F inv = Vec::set1(exp_sum > 0 ? 1.0f / exp_sum : 0.0f);
      for (int e0 = 0; e0 < E; e0 += kLanes) {
        const int lanes = E - e0 < kLanes ? E - e0 : kLanes;
        const F x = Vec::load(u + e0);
        const M dead = Vec::eq(x, Vec::set1(-kInf));
        const F score = softmax ? Vec::mul(Vec::load(s + e0), inv) : vsigmoid(x);
        const F bias = Vec::load_tail(p.selection_bias + e0, lanes, 0.0f);
        const F k = Vec::select(dead, Vec::set1(-kInf), Vec::add(keys_from_logits ? x : score, bias));
        if (direct) {
          store_full(t, e0, lanes, k, score, x);
        } else {
          Vec::store(s + e0, score);
          Vec::store(key + e0, k);
        }
      }
    }
    if (c.group_size > 0)
      keep_best_groups(key, c.options.group_count, c.group_size, c.options.group_select, b.group_score->data(),
                       b.group_order->data());

    // 3. Candidates: the K best experts in key order (expert choice reads the full matrices only).
    if (!c.expert_choice) {
      int32_t* cand_out = fused ? cand : out.candidate_expert + t * K;
      float* score_out = fused ? cand_score : out.candidate_score + t * K;
      float* logit_out = fused ? cand_logit : out.candidate_logit + t * K;
      select(key, cand);
      for (int j = 0; j < K; ++j) {
        cand_out[j] = cand[j];
        score_out[j] = s[cand[j]];
        logit_out[j] = u[cand[j]];
      }
    }

    // 4. What the strategies and losses need.
    TokenRow row;
    if (p.want_top_scores) {
      // The K largest scores among the experts the group mask left (masked: key -inf, u finite).
      // Where the keys are the scores themselves (no bias, groups or select-then-softmax) and every
      // logit is finite (no key -inf), those are the candidates' keys, already in best[].
      if (invalid || keys_from_logits || !unbiased || c.group_size > 0) {
        for (int e0 = 0; e0 < E; e0 += kLanes) {
          const F x = Vec::load(u + e0);
          const M masked = Vec::mask_andnot(Vec::eq(x, Vec::set1(-kInf)), Vec::eq(Vec::load(key + e0), Vec::set1(-kInf)));
          const M kept = Vec::mask_andnot(masked, Vec::first(E - e0));  // padding lanes: -inf too
          Vec::store(spare + e0, Vec::select(kept, Vec::load(s + e0), Vec::set1(-kInf)));
        }
        select(spare, top_order);  // best[] = those scores
      }
      float* top_out = fused ? top : out.top_scores + t * K;
      for (int j = 0; j < K; ++j) top_out[j] = best[j];
      row.top_scores = top_out;
    }
    if (p.want_score_entropy) {
      row.score_entropy = entropy(s, E);
      if (!fused) out.score_entropy[t] = row.score_entropy;
    }
    if (p.want_norm) row.norm = out.norm[t];
    if (p.want_losses && !invalid) {
      // p = s (softmax) or s / sum(s) (sigmoid); logsumexp(u); H(p); and p summed per chunk.
      double lse_sum = exp_sum;
      const float* prob = s;
      if (!softmax) {
        F vsum = Vec::zero(), vexp_sum = Vec::zero();
        for (int e0 = 0; e0 < E; e0 += kLanes) {
          vsum = Vec::add(vsum, Vec::load(s + e0));
          vexp_sum = Vec::add(vexp_sum, vexp(Vec::sub(Vec::load(u + e0), Vec::set1(max))));
        }
        lse_sum = Vec::reduce_add(vexp_sum);
        const float score_sum = Vec::reduce_add(vsum);
        const F inv = Vec::set1(score_sum > 0 ? 1.0f / score_sum : 0.0f);
        for (int e0 = 0; e0 < E; e0 += kLanes) Vec::store(spare + e0, Vec::mul(Vec::load(s + e0), inv));
        prob = spare;
      }
      add_losses(prob, E, max + std::log(lse_sum), out, t, b.sums.p_sum);
    }
    if (p.want_full && !direct) {
      for (int e0 = 0; e0 < E; e0 += kLanes) {
        const int lanes = E - e0 < kLanes ? E - e0 : kLanes;
        store_full(t, e0, lanes, Vec::load(key + e0), Vec::load(s + e0), Vec::load(u + e0));
      }
    }

    // 5. Fused: the token's assignment, and its counts.
    if (fused) {
      row.candidate_expert = cand;
      row.candidate_score = cand_score;
      row.candidate_logit = cand_logit;
      finish_fused(row, t, invalid);
    }
  };

  // Top-k with a selection bias or groups on sigmoid scores (DeepSeek-V3 and its kin) or softmax ones
  // (DeepSeek-V2's groups, ERNIE 4.5's bias), fused, needing nothing else of the token: the finite
  // rows across tokens on keys of their scores (score_keys_across_tokens), the other rows one by one
  // above. (bench/NOTES.md items 85 and 90.)
  const bool score_keys = fused && !keys_from_logits && (!unbiased || c.group_size > 0) &&
                          c.options.strategy == MOE_STRATEGY_TOP_K && !p.want_losses && !p.want_score_entropy &&
                          !p.want_norm && !p.want_full && !p.want_top_scores && K <= kAcrossMaxK &&
                          E <= kScoreKeyMaxE && (c.group_size == 0 || c.options.group_count <= kScoreKeyMaxGroups);
  if (score_keys) {
    const ScoreKeys sk{p.selection_bias, c.group_size > 0 ? c.options.group_count : 0, c.group_size,
                       c.options.group_select, softmax};
    const auto run = [&](const float* base, int64_t stride, int groups, int live, float* weights, int32_t* experts,
                         int32_t* counts) {
      return score_keys_across_tokens(c, sk, base, stride, groups, live, weights, experts, counts);
    };
    across_rows(b, true, run, token);
    return;
  }

  // Top-k (with capacity by score: not fused), top-p, threshold, entropy and norm with softmax scores
  // and keys (no selection bias, groups or select-then-softmax), needing nothing else of the token:
  // the finite rows' candidates across tokens (candidates_across_rows), whose K best scores are then
  // also threshold's top scores; assigned here when fused, else by the core's pass over the
  // candidates. The other rows one by one above. (bench/NOTES.md items 75-76, 92.)
  // Entropy's H(s_t) comes kLanes tokens at a time as ln Z - sum_e p_e v_e, Z and the dot product
  // summed with the candidates' own Z (rows_across_tokens' entropy_out, in f32); a token whose
  // (K - kmin) H / ln E + 1/2 lies within entropy_margin of an integer, where that error could move
  // its rounding, takes the token-by-token path, whose H sums -s ln s in double. The margin: Z and
  // the dot product are f32 sums of E terms, each term a few ulps off, and sum_e p_e |v_e| = ln Z + H
  // <= 2 ln E; twice that bound.
  const moe_strategy strategy = c.options.strategy;
  const bool entropy = strategy == MOE_STRATEGY_ENTROPY, norm = strategy == MOE_STRATEGY_NORM;
  const bool across = softmax && !keys_from_logits && unbiased && c.group_size == 0 &&
                      (strategy == MOE_STRATEGY_TOP_K || strategy == MOE_STRATEGY_TOP_P ||
                       strategy == MOE_STRATEGY_THRESHOLD || (entropy && E > 1) || norm) &&
                      !p.want_losses && !p.want_full && K <= kAcrossMaxK && E <= kAcrossMaxE;
  const double log_e = std::log(static_cast<double>(E));
  const double entropy_margin =
      entropy && E > 1 ? (K - c.kmin) * (E + 16) * static_cast<double>(std::numeric_limits<float>::epsilon()) *
                             (1 + 2 * log_e) / (2 * log_e)
                       : 0.0;
  // Entropy's (from the lanes' H in lane_entropy) and (fused) norm's k_t of the lanes [0, lanes) of a
  // group into k_given (every lane written); returns the lanes left to the token-by-token path.
  // (Not fused, entropy's H goes to the stage; the core decides from it, or from the norms.) Norm's
  // parameters are the calibrated ones or the batch's (SimdBackend::token_stage computes them first).
  const bool k_given_by_lanes = entropy || (norm && fused);
  const auto decide_lanes = [&](const int64_t* tokens, int64_t t0, int lanes, const float* lane_entropy,
                                int32_t* k_given) {
    for (int l = 0; l < kLanes; ++l) k_given[l] = c.kmin;
    uint32_t undecided = 0;
    if (norm) {
      TokenRow row;
      for (int l = 0; l < lanes; ++l) {
        row.norm = out.norm[tokens ? tokens[l] : t0 + l];
        k_given[l] = decide_k(c, row, *p.k_params);
      }
      return undecided;
    }
    for (int l = 0; l < lanes; ++l) {
      const double y = (K - c.kmin) * (lane_entropy[l] / log_e) + 0.5;
      if (std::abs(y - std::nearbyint(y)) < entropy_margin) undecided |= 1u << l;
      k_given[l] = std::clamp(c.kmin + static_cast<int>(std::floor(y)), c.kmin, K);
      if (!fused) out.score_entropy[tokens ? tokens[l] : t0 + l] = lane_entropy[l];
    }
    return undecided;
  };
  if (across) {
    const auto finish = [&](int64_t t, const int32_t* experts, const float* scores, const float* logits) {
      if (fused) {
        TokenRow row;
        row.candidate_expert = experts;
        row.candidate_score = scores;
        row.candidate_logit = logits;
        row.top_scores = scores;
        finish_fused(row, t, false);
        return;
      }
      std::memcpy(out.candidate_expert + t * K, experts, K * sizeof(int32_t));
      std::memcpy(out.candidate_score + t * K, scores, K * sizeof(float));
      std::memcpy(out.candidate_logit + t * K, logits, K * sizeof(float));
      if (p.want_top_scores) std::memcpy(out.top_scores + t * K, scores, K * sizeof(float));
    };
    // Fused (top-p or threshold), the tokens' k_t, slots and weights come kLanes at a time from
    // finish_candidates (top-p's unsure lanes from the exact path; every finite token goes this way,
    // alone or in a batch): token by token, assign_token's division a kept slot and its missed branch
    // where k_t ends were ~40% of top-p's time for logits E = 64 (bench/NOTES.md item 79).
    const auto finish_run = [&](const int64_t* tokens, int64_t t0, int n, const int32_t* experts, const float* scores,
                                const float* logits, const float* entropies) {
      const auto token_of = [&](int l) { return tokens ? tokens[l] : t0 + l; };
      for (int l0 = 0; l0 < n; l0 += kLanes) {
        const int lanes = n - l0 < kLanes ? n - l0 : kLanes;
        const int32_t* group_experts = experts + l0 * K;
        const float* group_scores = scores + l0 * K;
        const float* group_logits = logits + l0 * K;
        alignas(64) int32_t k_given[kLanes];
        const uint32_t undecided =
            k_given_by_lanes ? decide_lanes(tokens ? tokens + l0 : nullptr, t0 + l0, lanes,
                                            entropies ? entropies + l0 : nullptr, k_given)
                             : 0;
        uint32_t unsure = ~0u;  // (not fused: every token's candidates to the stage)
        alignas(64) int32_t k[kLanes], slot_experts[kLanes * kAcrossMaxK];
        alignas(64) float slot_weights[kLanes * kAcrossMaxK];
        // A run's slots straight into the outputs, a gathered group's through the arrays above.
        int32_t* experts_out = tokens ? slot_experts : nullptr;
        float* weights_out = tokens ? slot_weights : nullptr;
        if (fused) {
          if (!tokens) {
            experts_out = fused->experts + (t0 + l0) * K;
            weights_out = fused->weights + (t0 + l0) * K;
          }
          unsure = finish_candidates(c, *p.k_params, lanes, group_experts, group_scores, k_given, experts_out,
                                     weights_out, k);
        }
        for (int l = 0; l < lanes; ++l) {
          const int64_t t = token_of(l0 + l);
          if (undecided >> l & 1) {
            token(static_cast<int>(t - b.first));
            continue;
          }
          if (unsure >> l & 1) {
            finish(t, group_experts + l * K, group_scores + l * K, group_logits + l * K);
            continue;
          }
          if (tokens) {
            std::memcpy(fused->experts + t * K, experts_out + l * K, K * sizeof(int32_t));
            std::memcpy(fused->weights + t * K, weights_out + l * K, K * sizeof(float));
          }
          fused->experts_per_token[t] = k[l];
          ++b.sums.k_histogram[k[l]];
          // Every slot adds whether it is kept: a loop to k_t missed its end once a token. (Into the
          // int64 sums directly: a block-local int32 tally, as across_rows keeps, measured 5-15%
          // slower for E = 8, K = 2, its stores read as possible aliases of the int32 slots'.)
          for (int j = 0; j < K; ++j) {
            const int64_t kept = j < k[l];
            b.sums.counts[group_experts[l * K + j]] += kept;
            b.sums.counts_valid[group_experts[l * K + j]] += kept;
          }
        }
      }
    };
    candidates_across_rows(b, entropy, token, finish_run);
  } else {
    for (int i = 0; i < b.rows; ++i) token(i);
  }
}

}  // namespace MOE_SIMD_ISA
}  // namespace simd
}  // namespace moe
