// Host-side entry points of the routing kernels, for the backend (cuda/backend.cu). Each launcher
// checks its launch; the kernels' own errors surface at the backend's next synchronization.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "moe_router.h"
#include "params.cuh"

namespace moe::cuda {

// topk_softmax.cu — the token stage over given logits [rows, E] (routeLogits).
struct LogitsPlan {
  int rows_per_block = 0;
  int blocks = 0;  // the grid, and the block_partials entries it writes
  size_t shared = 0;
};
LogitsPlan plan_topk_softmax(const RowConfig& c, int64_t rows);
void launch_topk_softmax(const LogitsPlan& plan, const void* logits, moe_dtype dtype, int64_t t_begin,
                         int64_t rows, const RowConfig& c, const RowOutputs& o, const Finalize& f,
                         cudaStream_t stream);

// gate.cu — the fused gate: hidden [rows, D] x W -> logits -> the token stage, in one kernel.
constexpr int kGateK = 32;  // D elements per pipeline stage; W rows are padded to a multiple of it

enum class GateMode { kBf16, kF16, kTf32, kF32 };  // tensor cores (tf32 for f32 input), or f32 FMA

struct GatePlan {
  GateMode mode = GateMode::kF32;
  int D = 0, padded_D = 0, padded_E = 0;
  int warps_n = 0, rows_per_tile = 0, tiles = 0, splits = 1, split_length = 0;
  size_t tile_bytes = 0;  // shared memory of the product stage; the row stage follows it
  size_t shared = 0;
  size_t partial_floats = 0;  // [splits][tiles][rows_per_tile][padded_E] when splits > 1
};
GatePlan plan_gate(const RowConfig& c, int D, int64_t rows, GateMode mode);
// Shared memory the gate kernel needs for this configuration at its largest (f32 input).
size_t gate_shared_bytes(int E, int K, int groups, int D);
void launch_gate(const GatePlan& plan, const void* hidden, const void* weight, int64_t t_begin,
                 int64_t rows, float* partial, unsigned* tile_tickets, const RowConfig& c,
                 const RowOutputs& o, const Finalize& f, cudaStream_t stream);

// assign.cu — what follows the token stage when it could not finish a token by itself.
// Mean and population standard deviation of the finite norms[0..tokens) into stats[0], stats[1].
void launch_norm_statistics(const double* norms, int64_t tokens, double* stats, cudaStream_t stream);
// k_t of strategy norm from stats, then the slots, weights (o.weigh) and counts, from o.cand_*.
void launch_decide(const RowConfig& c, const RowOutputs& o, const double* stats, int64_t tokens,
                   cudaStream_t stream);

// Capacity ('position') and dispatch from the experts before capacity: ranks every assignment within
// its expert in slot order, drops those at rank >= capacity (capacity < 0: none), lays out the
// dispatch (offsets, slots, padding) when offsets is not null.
struct RankBuffers {
  int* tile_counts = nullptr;  // [E][tiles]
  int* kept = nullptr;         // [E] counts after capacity
  int* padded = nullptr;       // [E] kept rounded up to the block size
};
int rank_tiles(int64_t slots);
void launch_rank(int32_t* experts, int64_t tokens, int K, int E, int64_t capacity, int block_size,
                 const RankBuffers& b, int32_t* offsets, int32_t* slots, Totals* totals,
                 cudaStream_t stream);
// Weights of every slot from experts (after capacity) and the candidates' scores and logits.
void launch_reweight(const RowConfig& c, const int32_t* experts, const float* cand_s,
                     const float* cand_u, float* weights, int64_t tokens, cudaStream_t stream);
// The finalize step as its own launch (multi-launch routes).
void launch_finalize(const Finalize& f, cudaStream_t stream);

}  // namespace moe::cuda
