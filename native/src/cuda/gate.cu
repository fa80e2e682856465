// The fused gate: hidden [T, D] x W [E, D]^T -> logits -> the whole token stage, in one kernel; the
// twin of scalar/gate.cc followed by scalar/topk_softmax.cc.
//
// A block owns a tile of rows_per_tile tokens and every expert. Its 8 warps compute the tile's logits
// with tensor cores (WMMA: bf16 and f16 inputs against W in the same type, f32 inputs as TF32) or with
// f32 FMA (GateMode::kF32, and every mode on GPUs before sm_80), the hidden rows streaming through a
// 3-stage cp.async pipeline and W (zero-padded to [padded_E, padded_D], L2-resident) read as fragments.
// The logits land in shared memory, where the row stage (cuda/row_route.cuh) routes each token.
//
// When the tiles alone cannot fill the device, D is split into `splits` slices: each block writes its
// partial logits, and the last block of a tile (a per-tile ticket) sums the slices in slice order, so
// the result does not depend on which block finishes last.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "../core/failure.h"
#include "kernels.cuh"
#include "row_route.cuh"
#include "runtime.cuh"

namespace moe::cuda {

namespace {

constexpr int kStages = 3;
constexpr int kBK = kGateK;

// Elements per row of a pipeline stage: padded so rows stay 16-byte aligned with fewer bank conflicts.
__host__ __device__ constexpr int stage_stride(size_t element) { return kBK + (element == 2 ? 8 : 4); }

struct GateArgs {
  const void* hidden;  // [rows, D] of this launch
  const void* weight;  // [padded_E, padded_D]
  int64_t t_begin, rows;
  int D, padded_D, padded_E, warps_n, rows_per_tile, tiles, splits, split_length;
  float* partial;         // [splits][tiles][rows_per_tile][padded_E]
  unsigned* tile_tickets; // [tiles], zero between launches
  int tile_bytes;
  bool vector_loads;      // hidden rows are 16-byte aligned: 16-byte cp.async
};

__device__ __forceinline__ void copy16(void* dst, const void* src, bool inside) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(src),
               "r"(inside ? 16 : 0));
#else
  *static_cast<uint4*>(dst) = inside ? *static_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
#endif
}

__device__ __forceinline__ void copy_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int kPending>
__device__ __forceinline__ void copy_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// Hidden rows [row0, row0 + rows_per_tile) x columns [k, k + kBK) into a stage; zero past the batch
// and past D.
template <class In>
__device__ void load_stage(const GateArgs& g, const In* x, int64_t row0, int k, In* stage) {
  constexpr int kStride = stage_stride(sizeof(In));
  if (g.vector_loads) {
    constexpr int kVector = 16 / sizeof(In);
    constexpr int kChunks = kBK / kVector;
    for (int i = threadIdx.x; i < g.rows_per_tile * kChunks; i += kThreads) {
      const int r = i / kChunks, column = (i % kChunks) * kVector;
      const int64_t row = row0 + r;
      const bool inside = row < g.rows && k + column < g.D;
      copy16(stage + r * kStride + column, inside ? x + row * g.D + k + column : x, inside);
    }
  } else {
    for (int i = threadIdx.x; i < g.rows_per_tile * kBK; i += kThreads) {
      const int r = i / kBK, column = i % kBK;
      const int64_t row = row0 + r;
      stage[r * kStride + column] = row < g.rows && k + column < g.D ? x[row * g.D + k + column] : In{};
    }
  }
}

// The product of this block's rows with every expert over D columns [k_begin, k_end), left in the
// shared logits tile [rows_per_tile][padded_E + 4].
template <class In, bool kTensor, int kMT, int kNTW>
__device__ void gate_product(const GateArgs& g, const In* x, const In* w, int64_t row0, int k_begin,
                             int k_end, unsigned char* smem) {
  constexpr int kStride = stage_stride(sizeof(In));
  In* stages = reinterpret_cast<In*>(smem);
  const int stage_elements = g.rows_per_tile * kStride;
  float* logits = reinterpret_cast<float*>(smem);
  const int ld = g.padded_E + 4;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warp_row = (warp / g.warps_n) * 16 * kMT;
  const int first_tile = (warp % g.warps_n) * kNTW;
  const int n_tiles = g.padded_E / 16;
  const int k_tiles = (k_end - k_begin + kBK - 1) / kBK;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  constexpr bool kUseTensor = kTensor;
#else
  constexpr bool kUseTensor = false;
#endif

  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_tiles) load_stage(g, x, row0, k_begin + s * kBK, stages + s * stage_elements);
    copy_commit();
  }

  if constexpr (kUseTensor) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    using namespace nvcuda;
    constexpr bool kTf32 = sizeof(In) == 4;
    using Element = std::conditional_t<kTf32, wmma::precision::tf32, In>;
    constexpr int kStep = kTf32 ? 8 : 16;
    wmma::fragment<wmma::accumulator, 16, 16, kStep, float> acc[kMT][kNTW];
#pragma unroll
    for (int m = 0; m < kMT; ++m)
#pragma unroll
      for (int n = 0; n < kNTW; ++n) wmma::fill_fragment(acc[m][n], 0.0f);

    for (int kt = 0; kt < k_tiles; ++kt) {
      copy_wait<kStages - 2>();
      __syncthreads();
      const int next = kt + kStages - 1;
      if (next < k_tiles) load_stage(g, x, row0, k_begin + next * kBK, stages + (next % kStages) * stage_elements);
      copy_commit();
      const In* stage = stages + (kt % kStages) * stage_elements;
      const int k = k_begin + kt * kBK;
#pragma unroll
      for (int kk = 0; kk < kBK; kk += kStep) {
        wmma::fragment<wmma::matrix_a, 16, 16, kStep, Element, wmma::row_major> a[kMT];
#pragma unroll
        for (int m = 0; m < kMT; ++m) {
          wmma::load_matrix_sync(a[m], stage + (warp_row + m * 16) * kStride + kk, kStride);
          if constexpr (kTf32) {
#pragma unroll
            for (int i = 0; i < a[m].num_elements; ++i) a[m].x[i] = wmma::__float_to_tf32(a[m].x[i]);
          }
        }
#pragma unroll
        for (int n = 0; n < kNTW; ++n) {
          const int tile = first_tile + n;
          if (tile >= n_tiles) continue;
          wmma::fragment<wmma::matrix_b, 16, 16, kStep, Element, wmma::col_major> b;
          wmma::load_matrix_sync(b, w + static_cast<size_t>(tile) * 16 * g.padded_D + k + kk, g.padded_D);
          if constexpr (kTf32) {
#pragma unroll
            for (int i = 0; i < b.num_elements; ++i) b.x[i] = wmma::__float_to_tf32(b.x[i]);
          }
#pragma unroll
          for (int m = 0; m < kMT; ++m) wmma::mma_sync(acc[m][n], a[m], b, acc[m][n]);
        }
      }
    }
    copy_wait<0>();
    __syncthreads();
#pragma unroll
    for (int m = 0; m < kMT; ++m)
#pragma unroll
      for (int n = 0; n < kNTW; ++n)
        if (first_tile + n < n_tiles)
          wmma::store_matrix_sync(logits + (warp_row + m * 16) * ld + (first_tile + n) * 16, acc[m][n], ld,
                                  wmma::mem_row_major);
#endif
  } else {
    // f32 FMA: lane (r, half) owns rows warp_row + 16m + r and columns 8 * half .. + 7 of each tile.
    const int r = lane % 16, half = lane / 16;
    float acc[kMT][kNTW][8];
#pragma unroll
    for (int m = 0; m < kMT; ++m)
#pragma unroll
      for (int n = 0; n < kNTW; ++n)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[m][n][i] = 0.0f;

    for (int kt = 0; kt < k_tiles; ++kt) {
      copy_wait<kStages - 2>();
      __syncthreads();
      const int next = kt + kStages - 1;
      if (next < k_tiles) load_stage(g, x, row0, k_begin + next * kBK, stages + (next % kStages) * stage_elements);
      copy_commit();
      const In* stage = stages + (kt % kStages) * stage_elements;
      const int k = k_begin + kt * kBK;
      for (int kk = 0; kk < kBK; ++kk) {
        float xv[kMT];
#pragma unroll
        for (int m = 0; m < kMT; ++m) xv[m] = widen(stage[(warp_row + m * 16 + r) * kStride + kk]);
#pragma unroll
        for (int n = 0; n < kNTW; ++n) {
          const int tile = first_tile + n;
          if (tile >= n_tiles) continue;
          const In* column = w + static_cast<size_t>(tile * 16 + half * 8) * g.padded_D + k + kk;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const float wv = widen(column[static_cast<size_t>(i) * g.padded_D]);
#pragma unroll
            for (int m = 0; m < kMT; ++m) acc[m][n][i] = fmaf(xv[m], wv, acc[m][n][i]);
          }
        }
      }
    }
    copy_wait<0>();
    __syncthreads();
#pragma unroll
    for (int m = 0; m < kMT; ++m)
#pragma unroll
      for (int n = 0; n < kNTW; ++n)
        if (first_tile + n < n_tiles)
#pragma unroll
          for (int i = 0; i < 8; ++i)
            logits[(warp_row + m * 16 + r) * ld + (first_tile + n) * 16 + half * 8 + i] = acc[m][n][i];
  }
  __syncthreads();
}

template <class In>
struct GateRow {
  const float* u;     // the row's logits (shared memory), before the bias
  const float* bias;  // [E] or null
  const In* x;        // the hidden row, for the norm strategy
  int D;

  __device__ float load(int e) const { return bias ? u[e] + bias[e] : u[e]; }

  template <class Team>
  __device__ double norm(const Team& team, bool active) const {
    double sum = 0;
    if (active) {
      for (int d = team.rank; d < D; d += Team::kWidth) {
        const double v = widen(x[d]);
        sum += v * v;
      }
    }
    return sqrt(team.sum(sum));
  }
};

template <class Class, class In, bool kTensor>
__global__ void __launch_bounds__(kThreads, Class::kBlocksPerSM)
    gate_kernel(GateArgs g, RowConfig c, RowOutputs o, Finalize f) {
  using Team = typename Class::Team;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int last;
  const In* x = static_cast<const In*>(g.hidden);
  const int tile = blockIdx.x, split = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(tile) * g.rows_per_tile;
  const int k_begin = split * g.split_length;
  const int k_end = min(g.D, k_begin + g.split_length);
  gate_product<In, kTensor, Class::kMT, Class::kNTW>(g, x, static_cast<const In*>(g.weight), row0, k_begin,
                                                     k_end, smem);

  float* logits = reinterpret_cast<float*>(smem);
  const int ld = g.padded_E + 4;
  const int tile_floats = g.rows_per_tile * g.padded_E;
  // Rows of this tile inside the batch (a decode batch fills a small part of a tile).
  const int live = static_cast<int>(min(static_cast<int64_t>(g.rows_per_tile), g.rows - row0));
  const int live_floats = live * g.padded_E;
  if (g.splits > 1) {
    float* mine = g.partial + (static_cast<size_t>(split) * g.tiles + tile) * tile_floats;
    for (int i = threadIdx.x; i < live_floats; i += kThreads) mine[i] = logits[(i / g.padded_E) * ld + i % g.padded_E];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&g.tile_tickets[tile], 1u) == static_cast<unsigned>(g.splits) - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int i = threadIdx.x; i < live_floats; i += kThreads) {
      float sum = 0.0f;
      for (int s = 0; s < g.splits; ++s) sum += __ldcg(g.partial + (static_cast<size_t>(s) * g.tiles + tile) * tile_floats + i);
      logits[(i / g.padded_E) * ld + i % g.padded_E] = sum;
    }
    if (threadIdx.x == 0) g.tile_tickets[tile] = 0;
    __syncthreads();
  }

  unsigned char* rows = smem + g.tile_bytes;
  const RowSmem L = row_smem(c.E, c.K, c.group_size > 0 ? c.group_count : 0, Team::kPerBlock);
  clear_block(rows, L, c.E, Team::kPerBlock);
  const Team team;
  RowAccum<Class::kPer> acc;
  for (int r0 = 0; r0 < live; r0 += Team::kPerBlock) {
    const int r = r0 + team.id();
    const int64_t row = row0 + r;
    const bool active = r < live;
    const GateRow<In> in{logits + (active ? r : 0) * ld, c.bias, x + (active ? row : 0) * g.D, g.D};
    route_row<Team, Class::kPer>(team, c, o, rows, L, in, g.t_begin + row, active, acc);
  }
  flush_block(team, c, o, rows, L, acc, tile);
  if (f.in_kernel) finalize_if_last(f);
}

template <class Class, class In, bool kTensor>
void launch(const GatePlan& plan, const GateArgs& g, const RowConfig& c, const RowOutputs& o,
            const Finalize& f, cudaStream_t stream) {
  const auto kernel = gate_kernel<Class, In, kTensor>;
  allow_shared(reinterpret_cast<const void*>(kernel), plan.shared);
  kernel<<<dim3(plan.tiles, plan.splits), kThreads, plan.shared, stream>>>(g, c, o, f);
  check_launch("gate_kernel launch");
}

size_t element_size(GateMode mode) { return mode == GateMode::kBf16 || mode == GateMode::kF16 ? 2 : 4; }

int next_power_of_two(int n) {
  int p = 1;
  while (p < n) p *= 2;
  return p;
}

// Tile shape and shared memory of the gate for E experts (rows: the batch, 0 for the largest tile).
GatePlan shape(int E, int K, int groups, int D, int64_t rows, GateMode mode) {
  GatePlan plan;
  plan.mode = mode;
  plan.D = D;
  plan.padded_D = (D + kBK - 1) / kBK * kBK;
  plan.padded_E = (E + 15) / 16 * 16;
  with_expert_class(E, [&](auto cls) {
    using Class = decltype(cls);
    const int n_tiles = plan.padded_E / 16;
    plan.warps_n = std::min(8, next_power_of_two((n_tiles + Class::kNTW - 1) / Class::kNTW));
    plan.rows_per_tile = 16 * Class::kMT * (kThreads / 32 / plan.warps_n);
    const size_t element = element_size(mode);
    const size_t stage = static_cast<size_t>(plan.rows_per_tile) * stage_stride(element) * element;
    const size_t tile = static_cast<size_t>(plan.rows_per_tile) * (plan.padded_E + 4) * sizeof(float);
    plan.tile_bytes = (std::max(kStages * stage, tile) + 127) / 128 * 128;
    plan.shared = plan.tile_bytes + row_smem(E, K, groups, Class::Team::kPerBlock).total;
  });
  plan.tiles = static_cast<int>((rows + plan.rows_per_tile - 1) / plan.rows_per_tile);
  return plan;
}

}  // namespace

size_t gate_shared_bytes(int E, int K, int groups, int D) {
  return shape(E, K, groups, D, 0, GateMode::kF32).shared;
}

GatePlan plan_gate(const RowConfig& c, int D, int64_t rows, GateMode mode) {
  GatePlan plan = shape(c.E, c.K, c.group_size > 0 ? c.group_count : 0, D, rows, mode);
  // Split D when the tiles alone leave multiprocessors idle: about one block per multiprocessor, each
  // slice at least 4 pipeline stages long.
  const int k_tiles = plan.padded_D / kBK;
  const int sms = device().multiprocessors;
  int splits = plan.tiles >= sms ? 1 : std::min({sms / plan.tiles, 16, std::max(1, k_tiles / 4)});
  splits = std::max(splits, 1);
  plan.split_length = (k_tiles + splits - 1) / splits * kBK;
  plan.splits = (plan.padded_D + plan.split_length - 1) / plan.split_length;
  plan.partial_floats = plan.splits > 1 ? static_cast<size_t>(plan.splits) * plan.tiles *
                                              plan.rows_per_tile * plan.padded_E
                                        : 0;
  return plan;
}

void launch_gate(const GatePlan& plan, const void* hidden, const void* weight, int64_t t_begin,
                 int64_t rows, float* partial, unsigned* tile_tickets, const RowConfig& c,
                 const RowOutputs& o, const Finalize& f, cudaStream_t stream) {
  GateArgs g;
  g.hidden = hidden;
  g.weight = weight;
  g.t_begin = t_begin;
  g.rows = rows;
  g.D = plan.D;
  g.padded_D = plan.padded_D;
  g.padded_E = plan.padded_E;
  g.warps_n = plan.warps_n;
  g.rows_per_tile = plan.rows_per_tile;
  g.tiles = plan.tiles;
  g.splits = plan.splits;
  g.split_length = plan.split_length;
  g.partial = partial;
  g.tile_tickets = tile_tickets;
  g.tile_bytes = static_cast<int>(plan.tile_bytes);
  const size_t element = element_size(plan.mode);
  g.vector_loads = reinterpret_cast<uintptr_t>(hidden) % 16 == 0 && (plan.D * element) % 16 == 0;
  with_expert_class(c.E, [&](auto cls) {
    using Class = decltype(cls);
    switch (plan.mode) {
      case GateMode::kBf16:
        launch<Class, __nv_bfloat16, true>(plan, g, c, o, f, stream);
        break;
      case GateMode::kF16:
        launch<Class, __half, true>(plan, g, c, o, f, stream);
        break;
      case GateMode::kTf32:
        launch<Class, float, true>(plan, g, c, o, f, stream);
        break;
      case GateMode::kF32:
        launch<Class, float, false>(plan, g, c, o, f, stream);
        break;
    }
  });
}

}  // namespace moe::cuda
