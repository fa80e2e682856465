// What the driver (simd_backend.cc, compiled for the baseline CPU) and one instruction set's kernels
// (compiled with that ISA's flags) exchange: a table of function pointers and plain argument structs.
// Nothing here is inline code, so no function compiled with wide-ISA flags can leak into the driver.
#pragma once

#include <cstdint>
#include <vector>

#include "../core/assign.h"
#include "../core/backend.h"
#include "../core/config.h"

namespace moe {
namespace simd {

// The layout of the packed gate weight and the tile shapes of the two gate kernels:
//  - "dot" (small E): groups of dot_experts experts, each [ceil(D / lanes)][dot_experts][lanes]
//    (zero-padded past D and E); a tile is dot_tokens tokens x dot_experts experts, each u an f32
//    vector accumulated along D, then reduced.
//  - "panel" (larger E): panels of panel_experts experts, each panel [D][panel_experts] (zero-padded
//    past E); a tile is panel_tokens tokens x one panel, one FMA per d for each (token, vector of
//    experts), in kc-sized slices of D.
struct GateShape {
  int lanes = 0;
  int dot_experts = 0, dot_tokens = 0;
  int panel_experts = 0, panel_tokens = 0, kc = 0;
  int dot_max_experts = 0;  // E up to which the dot kernel may run
};

// One block of tokens through the gate: u[r, e] = x[r, :] . W[e, :] + bias[e] for rows r < rows,
// written with row stride u_stride (>= the padded expert count).
struct GateBlock {
  const void* input = nullptr;  // [rows, D] of dtype
  moe_dtype dtype = MOE_DTYPE_F32;
  int rows = 0;
  int rows_after = 0;  // rows right after these that this thread most likely gates next (the dot kernel fetches them)
  int dim = 0, experts = 0;
  const float* weight = nullptr;  // packed
  const float* bias = nullptr;    // [E] or nullptr
  bool dot = false;               // which kernel (and packing)
  int panel_begin = 0, panel_end = 0;  // panel kernel: the panels to compute (a range of experts)
  float* u = nullptr;
  int64_t u_stride = 0;
  // Scratch: the panel kernel's f16/bf16 input slices [rows][kc].
  float* widened = nullptr;
};

// Per-chunk sums, combined by the driver in chunk order.
struct ChunkSums {
  double* p_sum = nullptr;         // [E] want_losses
  int64_t* counts = nullptr;       // [E] fused
  int64_t* counts_valid = nullptr; // [E] fused
  int64_t* k_histogram = nullptr;  // [K+1] fused
};

// 64 bytes, aligned: any ISA's vector of floats fits one.
struct alignas(64) ScratchLine {
  float f[16];
};
// RowBlock::loss_scratch holds kLossLines * padded(E) of them.
constexpr int kLossLines = 3;

// One block of tokens through the rest of the token stage, from their logits u (noise added).
struct RowBlock {
  const Config* config = nullptr;
  const StageParams* params = nullptr;
  const TokenStage* out = nullptr;
  int64_t first = 0;  // token index of row 0
  int rows = 0;
  const float* u = nullptr;
  int64_t u_stride = 0;
  // Whether u is the call's input itself (f32 logits), whose rows after the block are read next
  // and worth fetching ahead; otherwise u is scratch, and nothing after it is.
  bool u_is_input = false;
  ChunkSums sums;
  // Per-thread scratch: kRowArrays * padded(E) + kSlotArrays * padded(K) 4-byte words, and the
  // vectors of the shared helpers (group masking; selection for large K).
  void* scratch = nullptr;
  // With losses: kLossLines * padded(E) ScratchLines, for the loss pass across tokens.
  ScratchLine* loss_scratch = nullptr;
  std::vector<double>* group_score = nullptr;
  std::vector<int32_t>* group_order = nullptr;
  std::vector<int32_t>* order = nullptr;
};

// RowBlock::scratch holds kRowArrays arrays of padded(E) words and kSlotArrays of padded(K).
constexpr int kRowArrays = 7, kSlotArrays = 8;
constexpr int64_t padded(int64_t n) { return (n + 31) / 16 * 16; }

// One instruction set's kernels, as the driver calls them.
struct Kernels {
  moe_backend kind;
  GateShape shape;
  void (*gate)(const GateBlock& block);
  void (*widen)(const void* src, moe_dtype dtype, int64_t n, float* dst);
  double (*norm)(const void* row, moe_dtype dtype, int64_t n);
  void (*rows)(const RowBlock& block);
};

// Each ISA folder defines, in its own namespace:
//   kGateShape                      gate_<isa>.cc
//   gate(block)                     gate_<isa>.cc
//   widen(src, dtype, n, dst)       topk_softmax_<isa>.cc: logits of dtype widened to f32, the next n fetched
//   norm(row, dtype, n)             topk_softmax_<isa>.cc: ||row||_2 in double (strategy norm)
//   rows(block)                     topk_softmax_<isa>.cc
#define MOE_SIMD_DECLARE_KERNELS(isa)                                        \
  namespace isa {                                                            \
  extern const GateShape kGateShape;                                         \
  void gate(const GateBlock& block);                                         \
  void widen(const void* src, moe_dtype dtype, int64_t n, float* dst);       \
  double norm(const void* row, moe_dtype dtype, int64_t n);                  \
  void rows(const RowBlock& block);                                          \
  }
#if defined(__x86_64__)
MOE_SIMD_DECLARE_KERNELS(avx2)
MOE_SIMD_DECLARE_KERNELS(avx512)
#elif defined(__aarch64__)
MOE_SIMD_DECLARE_KERNELS(neon)
#endif
#undef MOE_SIMD_DECLARE_KERNELS

}  // namespace simd
}  // namespace moe
