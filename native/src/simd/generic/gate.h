// The gate u = x . W^T + b for one block of tokens (simd_backend.h, GateBlock), in two register-tiled
// kernels over a Vec. Each (token, expert) is accumulated by the same instructions in the same order
// whatever tile or block it falls in, so u does not depend on how tokens are split across threads.
#pragma once

#include <type_traits>

#include "vec_math.h"

namespace moe {
namespace simd {
namespace MOE_SIMD_ISA {

// Small E: MR tokens x NE experts, each u an f32 vector along D (several tokens share each W load;
// 16-bit input is widened on load, once a span for all the groups: item 51), reduced at the end. W
// comes packed per group of NE experts as [ceil(D / kLanes)][NE][kLanes] (zero past D): one
// contiguous stream, where NE rows of stride D would fight over the same L1 sets whenever D * 4 is a
// multiple of 4 KiB.
// A tile walks its MR rows whole, so that each row is one long stream from DRAM, every group of NE
// experts in turn over each span of kDotSpan values, while the span is in L1 (bench/NOTES.md items
// 39-40). (D was once walked in slices that kept a slice of W in L1 across the block's tiles; that
// cut each row into pieces too short for the prefetcher and cost 25-40% from DRAM; W is re-read from
// L2 instead: bench/NOTES.md.)
// While it does, a tile of 16-bit rows fetches the next tile's rows into L2 in address order, MR
// vectors' worth per step: one linear stream ahead instead of MR interleaved ones (two threads, mixtral
// bf16 -8 to -16%; bench/NOTES.md, item 13). A tile of f32 rows, or one with no next tile, fetches its
// own rows kPrefetchBytes ahead into L2 and kNearPrefetchBytes ahead into L1 (the hardware prefetcher
// alone left the FMAs waiting; for f32 the next tile's stream measured the same on AVX-512 and 2-10%
// slower on AVX2, where one thread read its rows at 75% of a plain read's rate: item 48).
constexpr int kPrefetchBytes = 3072, kNearPrefetchBytes = 512;

// The groups of NE experts the dot kernel may be given (each ISA checks its dot_max_experts), and
// the D values a tile of several groups walks for each group in turn: its rows' span (3 rows of
// 1 KiB f32) is read from L2 by the first group and from L1 by the others, where the tile's whole
// rows (48 KiB at D = 4096) had left L1 before the next group read them again (AVX2 mixtral f32
// -9 to -17%; spans of 512 the same within noise, 1024 worse; bench/NOTES.md item 40).
constexpr int kDotMaxGroups = 8, kDotSpan = 256;

// How a span's rows are read (dot_span): from the input, fetching the tile's own rows ahead (kOwn) or
// the next tile's rows (kNext), or from the f32 copy an earlier group of the tile kept (kKept).
enum class DotFetch { kOwn, kNext, kKept };

// The FMAs of an MR x NE tile over the len values of a span into acc: x is the tile's first row at the
// span's start (rows ldx apart), w the group's packed W there; len is a multiple of kLanes but in the
// span that ends D. kNext fetches the next tile's rows from `next` (at the span's start) as described
// above. With `keep`, each widened vector is also stored there (MR rows kDotSpan apart), so that the
// tile's other groups read the span in f32 from L1 (kKept) instead of widening it again.
template <int MR, int NE, class L, DotFetch kFetch>
[[gnu::always_inline]] inline void dot_span(const typename L::T* x, int64_t ldx, const float* w, int len,
                                            F (&acc)[MR][NE], const char* next, float* keep) {
  constexpr int kStepBytes = MR * kLanes * static_cast<int>(sizeof(typename L::T));  // of next, per step
  // kOwn fetches each row's line once, on the step that starts it (each step's two fetches a row had
  // taken as many load slots as the FMAs' operands: AVX2 mixtral f32 in cache -5 to -7%, item 67).
  constexpr int kRowStepBytes = kLanes * static_cast<int>(sizeof(typename L::T));
  constexpr int kStepsPerLine = kRowStepBytes < 64 ? 64 / kRowStepBytes : 1;
  int i = 0;
  for (; i + kLanes <= len; i += kLanes, w += NE * kLanes) {
    F xv[MR];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      xv[m] = L::load(x + m * ldx + i);
      if (keep) Vec::store(keep + m * kDotSpan + i, xv[m]);
      if constexpr (kFetch == DotFetch::kOwn) {
        if ((i / kLanes) % kStepsPerLine == 0) {
          const char* at = reinterpret_cast<const char*>(x + m * ldx + i);
          __builtin_prefetch(at + kPrefetchBytes, 0, 2);
          __builtin_prefetch(at + kNearPrefetchBytes, 0, 3);
        }
      }
    }
    if constexpr (kFetch == DotFetch::kNext) {
      const char* at = next + static_cast<int64_t>(i / kLanes) * kStepBytes;
#pragma GCC unroll 8
      for (int b = 0; b < kStepBytes; b += 64) __builtin_prefetch(at + b, 0, 2);
    }
#pragma GCC unroll 16
    for (int n = 0; n < NE; ++n) {
      F wv = Vec::load(w + n * kLanes);
      Vec::pin(wv);  // one load per W vector, not one memory operand per token
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m][n] = Vec::fmadd(xv[m], wv, acc[m][n]);
    }
  }
  if (i < len) {  // the tail of D
    F xv[MR];
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      xv[m] = L::tail(x + m * ldx + i, len - i);
      if (keep) Vec::store(keep + m * kDotSpan + i, xv[m]);  // zeros past D, as a tail load gives
    }
#pragma GCC unroll 16
    for (int n = 0; n < NE; ++n) {
      const F wv = Vec::load(w + n * kLanes);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) acc[m][n] = Vec::fmadd(xv[m], wv, acc[m][n]);
    }
  }
}

template <int MR, int NE>
[[gnu::always_inline]] inline void dot_store(const F (&acc)[MR][NE], float* u, int64_t ldu) {
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int n = 0; n < NE; ++n) u[m * ldu + n] = Vec::reduce_add(acc[m][n]);
}

template <int MR, int NE>
[[gnu::always_inline]] inline void dot_copy(F (&to)[MR][NE], const F (&from)[MR][NE]) {
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int n = 0; n < NE; ++n) to[m][n] = from[m][n];
}

template <int MR, int NE, class L>
inline void dot_block(const GateBlock& g) {
  using T = typename L::T;
  const T* x = static_cast<const T*>(g.input);
  const int D = g.dim;
  const int groups = (g.experts + NE - 1) / NE;
  const int64_t group_words = static_cast<int64_t>((D + kLanes - 1) / kLanes) * NE * kLanes;
  const int rows_ahead = g.rows + g.rows_after;  // the rows this thread reads next
  // 16-bit rows: the next tile's rows in one stream, and with several groups the first one keeps
  // the span widened for the others; f32 rows: each fetched ahead by its own tile.
  constexpr bool kWide = sizeof(T) < sizeof(float);
  alignas(64) float kept[MR][kDotSpan];
  int r = 0;
  for (; r + MR <= g.rows; r += MR) {
    const T* rows = x + static_cast<int64_t>(r) * D;
    const char* next = kWide && r + 2 * MR <= rows_ahead
                           ? reinterpret_cast<const char*>(rows + MR * static_cast<int64_t>(D))
                           : nullptr;
    float* u = g.u + r * g.u_stride;
    // Each group's accumulators wait here between spans: the same FMAs in the same order as one
    // walk over D, so u does not depend on the span. One group walks D whole.
    const int span = groups > 1 ? kDotSpan : D;
    float* keep = kWide && groups > 1 ? &kept[0][0] : nullptr;
    F saved[kDotMaxGroups][MR][NE];
    for (int d = 0; d < D; d += span) {
      const int n = D - d <= span ? D - d : span;
      const float* w = g.weight + static_cast<int64_t>(d / kLanes) * NE * kLanes;
      for (int q = 0; q < groups; ++q, w += group_words) {
        F acc[MR][NE] = {};
        if (d > 0) dot_copy(acc, saved[q]);
        if (q > 0 && keep) {
          dot_span<MR, NE, LoadF32, DotFetch::kKept>(keep, kDotSpan, w, n, acc, nullptr, nullptr);
        } else if (q == 0 && next) {  // the next tile's MR rows, MR values of them per value of d
          dot_span<MR, NE, L, DotFetch::kNext>(rows + d, D, w, n, acc, next + static_cast<int64_t>(d) * MR * sizeof(T),
                                               keep);
        } else {
          dot_span<MR, NE, L, DotFetch::kOwn>(rows + d, D, w, n, acc, nullptr, q == 0 ? keep : nullptr);
        }
        if (d + n == D) dot_store(acc, u + q * NE, g.u_stride);
        else dot_copy(saved[q], acc);
      }
    }
  }
  for (; r < g.rows; ++r)
    for (int q = 0; q < groups; ++q) {
      F acc[1][NE] = {};
      dot_span<1, NE, L, DotFetch::kOwn>(x + static_cast<int64_t>(r) * D, D, g.weight + q * group_words, D, acc,
                                         nullptr, nullptr);
      dot_store(acc, g.u + r * g.u_stride + q * NE, g.u_stride);
    }
}

// Larger E: MR tokens x NP consecutive panels of NV vectors of experts each (ldb floats apart); per
// d, one broadcast of each token's x and NP * NV loads of the packed panels feed MR * NP * NV FMAs.
// c (+)= a . b over kc values of d, where a is MR f32 rows of stride lda. With `next`, each step
// also fetches NR floats of it into L2: a whole panel slice of kc values over the tile. With
// kRowLines, the tile also fetches kRowLines lines of each of its rows at rows_next (row_bytes
// apart) into L1, one line every kSteps / (MR * kRowLines) steps of a slice of kSteps.
template <int MR, int NV, int NP = 1, int kRowLines = 0, int kSteps = 0>
inline void panel_tile(const float* a, int64_t lda, const float* b, int kc, float* c, int64_t ldc,
                       bool accumulate, int64_t ldb = 0, const float* next = nullptr,
                       const char* rows_next = nullptr, int64_t row_bytes = 0) {
  constexpr int NR = NV * kLanes;
  const float* ar[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) ar[m] = a + m * lda;
  constexpr int NB = NP * NV;  // vectors of experts, panel after panel (they are consecutive in c)
  F acc[MR][NB];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NB; ++v) acc[m][v] = Vec::zero();
  for (int d = 0; d < kc; ++d) {
    F bv[NB];
#pragma GCC unroll 8
    for (int v = 0; v < NB; ++v) {
      bv[v] = Vec::load(b + v / NV * ldb + d * NR + v % NV * kLanes);
      // One load per W vector: a tile of 2 or 3 rows otherwise got one per row (bench/NOTES.md item 38).
      if constexpr (MR > 1) Vec::pin(bv[v]);
    }
    if (next) {
#pragma GCC unroll 4
      for (int i = 0; i < NR; i += 16) __builtin_prefetch(next + d * NR + i, 0, 2);
    }
    if constexpr (kRowLines > 0) {
      constexpr int kEvery = kSteps / (MR * kRowLines) > 0 ? kSteps / (MR * kRowLines) : 1;
      const int line = d / kEvery;
      if (d % kEvery == 0 && line < MR * kRowLines)
        __builtin_prefetch(rows_next + line / kRowLines * row_bytes + line % kRowLines * 64);
    }
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const F av = Vec::set1(ar[m][d]);
#pragma GCC unroll 8
      for (int v = 0; v < NB; ++v) acc[m][v] = Vec::fmadd(av, bv[v], acc[m][v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NB; ++v) {
      float* p = c + m * ldc + v * kLanes;
      Vec::store(p, accumulate ? Vec::add(Vec::load(p), acc[m][v]) : acc[m][v]);
    }
}

// panel_tile over the first of `rows` rows: whole tiles of MR, then of MR / 2, MR / 4, ... while
// at least 4 rows, so that a short batch computes only its own rows (a decoding token once padded to
// a tile of 8 paid for 8). Returns the rows done; the few left go two panels at a time
// (rows_across_panels). The first tile fetches `next`, and with kRowLines every tile fetches its
// rows' lines at rows_next (panel_tile). Every (token, expert) gets the same chain of FMAs whatever
// tile it is in.
template <int MR, int NV, int kRowLines = 0, int kSteps = 0>
inline int panel_rows(const float* a, int64_t lda, int rows, const float* b, int kc, float* c, int64_t ldc,
                      bool accumulate, const float* next, const char* rows_next = nullptr, int64_t row_bytes = 0) {
  if constexpr (MR < 4) {
    return 0;
  } else {
    int m0 = 0;
    for (; m0 + MR <= rows; m0 += MR, next = nullptr)
      panel_tile<MR, NV, 1, kRowLines, kSteps>(a + m0 * lda, lda, b, kc, c + m0 * ldc, ldc, accumulate, 0, next,
                                               rows_next + m0 * row_bytes, row_bytes);
    return m0 + panel_rows<MR / 2, NV, kRowLines, kSteps>(a + m0 * lda, lda, rows - m0, b, kc, c + m0 * ldc, ldc,
                                                          accumulate, next, rows_next + m0 * row_bytes, row_bytes);
  }
}

// R rows (1 or 2) over the panels [0, panels) of b, two panels at a time: one panel gives such a tile
// 2 or 4 chains of dependent FMAs, which wait on each other's latency (one decoding token, D = 2048,
// E = 64: 7.2 -> 6.5 us).
template <int R, int NV>
inline void rows_across_panels(const float* a, int64_t lda, const float* b, int64_t ldb, int panels, int kc,
                               float* c, int64_t ldc, bool accumulate) {
  constexpr int NR = NV * kLanes;
  int p = 0;
  for (; p + 2 <= panels; p += 2) panel_tile<R, NV, 2>(a, lda, b + p * ldb, kc, c + p * NR, ldc, accumulate, ldb);
  if (p < panels) panel_tile<R, NV>(a, lda, b + p * ldb, kc, c + p * NR, ldc, accumulate);
}

template <int MR, int NV, int KC, class L>
inline void panel_block(const GateBlock& g) {
  using T = typename L::T;
  constexpr int NR = NV * kLanes;
  constexpr bool kWiden = !std::is_same<T, float>::value;
  // A widened slice's rows lie D values apart: its tiles on the first panel fetch the next slice of
  // their rows into L1 as they go. (Fetched all at the widening, ~200 lines at once for 48 rows,
  // the widening still waited on DRAM: a fifth of olmoe-prefill bf16's time; bench/NOTES.md item 27.)
  constexpr int kRowLines = kWiden ? KC * static_cast<int>(sizeof(T)) / 64 : 0;
  const T* x = static_cast<const T*>(g.input);
  const int D = g.dim;
  for (int d0 = 0; d0 < D; d0 += KC) {
    const int kc = D - d0 < KC ? D - d0 : KC;
    const float* a;
    int64_t lda;
    if constexpr (kWiden) {
      for (int r = 0; r < g.rows; ++r)
        widen_span<L>(x + static_cast<int64_t>(r) * D + d0, kc, g.widened + static_cast<int64_t>(r) * KC);
      a = g.widened;
      lda = KC;
    } else {
      a = x + d0;
      lda = D;
    }
    const int64_t ldb = static_cast<int64_t>(D) * NR;
    int tiled = 0;
    // Each panel's first tile fetches the slice the next one will read: the next panel's, or the
    // first panel's of the next d slice (whose few last values may lie past it: a prefetch never
    // faults). Slices lie ldb floats apart, so no hardware prefetcher sees the jump coming, and
    // where W does not stay in the caches (dsv3, E = 256 x D = 7168: 7.3 MB read again by every
    // block) each first tile waited on DRAM (one thread -16%, two -12%; bench/NOTES.md item 22).
    for (int p = g.panel_begin; p < g.panel_end; ++p) {
      const float* next = p + 1 < g.panel_end ? g.weight + (p + 1) * ldb + d0 * NR
                          : d0 + KC < D       ? g.weight + g.panel_begin * ldb + (d0 + KC) * NR
                                              : nullptr;
      const float* b = g.weight + p * ldb + d0 * NR;
      float* c = g.u + p * NR;
      if constexpr (kRowLines > 0) {
        if (p == g.panel_begin && d0 + KC < D) {
          const int64_t row_bytes = static_cast<int64_t>(D) * sizeof(T);
          tiled = panel_rows<MR, NV, kRowLines, KC>(a, lda, g.rows, b, kc, c, g.u_stride, d0 > 0, next,
                                                    reinterpret_cast<const char*>(x + d0 + KC), row_bytes);
          continue;
        }
      }
      tiled = panel_rows<MR, NV>(a, lda, g.rows, b, kc, c, g.u_stride, d0 > 0, next);
    }
    // The rows left, in tiles of 2 and 1.
    const float* b = g.weight + g.panel_begin * ldb + d0 * NR;
    const int panels = g.panel_end - g.panel_begin;
    for (int r = tiled; r < g.rows; r += 2) {
      float* c = g.u + r * g.u_stride + g.panel_begin * NR;
      if (r + 2 <= g.rows) rows_across_panels<2, NV>(a + r * lda, lda, b, ldb, panels, kc, c, g.u_stride, d0 > 0);
      else rows_across_panels<1, NV>(a + r * lda, lda, b, ldb, panels, kc, c, g.u_stride, d0 > 0);
    }
  }
}

// u[r, e] += bias[e] for the experts [begin, end).
inline void add_bias(const GateBlock& g, int begin, int end) {
  for (int r = 0; r < g.rows; ++r) {
    float* u = g.u + r * g.u_stride;
    int e = begin;
    for (; e + kLanes <= end; e += kLanes) Vec::store(u + e, Vec::add(Vec::load(u + e), Vec::load(g.bias + e)));
    if (e < end) {
      const int n = end - e;
      Vec::store_tail(u + e, Vec::add(Vec::load_tail(u + e, n, 0.0f), Vec::load_tail(g.bias + e, n, 0.0f)), n);
    }
  }
}

// The gate of one block with this ISA's tile shapes.
template <int DOT_MR, int DOT_NE, int PANEL_MR, int PANEL_NV, int KC>
inline void gate_block(const GateBlock& g) {
  with_loader(g.dtype, [&](auto loader) {
    using L = decltype(loader);
    if (g.dot) {
      dot_block<DOT_MR, DOT_NE, L>(g);
    } else {
      panel_block<PANEL_MR, PANEL_NV, KC, L>(g);
    }
  });
  if (g.bias) {
    const int nr = PANEL_NV * kLanes;
    const int begin = g.dot ? 0 : g.panel_begin * nr;
    const int end = g.dot ? g.experts : (g.panel_end * nr < g.experts ? g.panel_end * nr : g.experts);
    add_bias(g, begin, end);
  }
}

}  // namespace MOE_SIMD_ISA
}  // namespace simd
}  // namespace moe
