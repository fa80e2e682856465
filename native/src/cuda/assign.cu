// The assignment stage on the device where the token stage could not finish a token by itself: the
// twin of core/assign.cc for token-choice routing.
//  - strategy norm without calibration: the batch's norm statistics, then k_t, slots, weights, counts;
//  - capacity (dropPolicy 'position') and dispatch: every assignment's rank within its expert in slot
//    order (so ascending token), from per-tile counts and a per-expert scan; ranks >= capacity drop,
//    the others land at offsets[e] + rank; padding to the block size; then the weights again;
//  - the finalize step as its own launch.
// Expert choice and dropPolicy 'score' need sorts that the host does better: for them the backend
// copies the token stage back and core/assign.cc runs (cuda/backend.cu).
#include <algorithm>

#include "kernels.cuh"
#include "row_route.cuh"
#include "runtime.cuh"

namespace moe::cuda {

namespace {

constexpr int kRankWarps = 4;  // tiles per block in the scatter kernel (one warp each)

__global__ void __launch_bounds__(kThreads) norm_statistics_kernel(const double* norms, int64_t tokens,
                                                                   double* stats) {
  const BlockTeam team;
  double sum = 0;
  unsigned long long n = 0;
  for (int64_t t = threadIdx.x; t < tokens; t += kThreads) {
    if (!isfinite(norms[t])) continue;
    sum += norms[t];
    ++n;
  }
  sum = team.sum(sum);
  n = team.sum(n);
  const double mean = n > 0 ? sum / static_cast<double>(n) : 0.0;
  double squares = 0;
  for (int64_t t = threadIdx.x; t < tokens; t += kThreads)
    if (isfinite(norms[t])) squares += (norms[t] - mean) * (norms[t] - mean);
  squares = team.sum(squares);
  if (threadIdx.x == 0) {
    stats[0] = mean;
    stats[1] = n > 0 ? sqrt(squares / static_cast<double>(n)) : 0.0;
  }
}

// One thread per token: k_t from the norm, then as route_row's decision step.
__global__ void __launch_bounds__(kThreads) decide_kernel(RowConfig c, RowOutputs o, const double* stats,
                                                          int64_t tokens) {
  extern __shared__ __align__(16) unsigned char smem[];
  int* hist = reinterpret_cast<int*>(smem);
  int* hist_valid = hist + c.E;
  __shared__ unsigned long long sum_k;
  for (int e = threadIdx.x; e < c.E; e += kThreads) hist[e] = hist_valid[e] = 0;
  if (threadIdx.x == 0) sum_k = 0;
  __syncthreads();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t < tokens) {
    const int K = c.K;
    const int k = k_from_norm(c, o.norm[t], stats[0], stats[1]);
    int32_t* slots = o.experts + t * K;
    for (int j = 0; j < K; ++j) slots[j] = j < k ? o.cand_e[t * K + j] : -1;
    if (o.weigh)
      for (int j = 0; j < K; ++j) o.weights[t * K + j] = slot_weight(c, slots, o.cand_s + t * K, o.cand_u + t * K, j);
    for (int j = 0; j < k; ++j) {
      atomicAdd(&hist[slots[j]], 1);
      if (!o.invalid[t]) atomicAdd(&hist_valid[slots[j]], 1);
    }
    o.k[t] = k;
    atomicAdd(&sum_k, static_cast<unsigned long long>(k));
  }
  __syncthreads();
  flush_counts(hist, hist_valid, sum_k, c.E, o.totals);
}

int tile_length(int64_t slots) {
  // Tiles of at least 1024 slots, at most 4096 tiles: the per-tile counts stay small.
  const int64_t length = std::max<int64_t>(1024, (slots + 4095) / 4096);
  return static_cast<int>((length + 31) / 32 * 32);
}

// Per tile of slots, how many go to each expert: counts[e * tiles + tile].
__global__ void __launch_bounds__(kThreads) tile_count_kernel(const int32_t* experts, int64_t slots,
                                                              int length, int tiles, int E, int* counts) {
  extern __shared__ __align__(16) unsigned char smem[];
  int* hist = reinterpret_cast<int*>(smem);
  for (int e = threadIdx.x; e < E; e += kThreads) hist[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * length;
  const int64_t end = min(slots, begin + length);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    if (experts[i] >= 0) atomicAdd(&hist[experts[i]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += kThreads) counts[static_cast<int64_t>(e) * tiles + blockIdx.x] = hist[e];
}

// One warp per expert: the exclusive scan of its tile counts (in place), what capacity keeps, and that
// rounded up to the block size.
__global__ void __launch_bounds__(kThreads) expert_scan_kernel(int* counts, int tiles, int E, int64_t capacity,
                                                               int block_size, int* kept, int* padded,
                                                               Totals* totals) {
  const int e = (blockIdx.x * kThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (e >= E) return;  // whole warps
  int* row = counts + static_cast<int64_t>(e) * tiles;
  int running = 0;
  for (int base = 0; base < tiles; base += 32) {
    const int i = base + lane;
    const int v = i < tiles ? row[i] : 0;
    int inclusive = v;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
      const int n = __shfl_up_sync(kAllLanes, inclusive, offset);
      if (lane >= offset) inclusive += n;
    }
    if (i < tiles) row[i] = running + inclusive - v;
    running += __shfl_sync(kAllLanes, inclusive, 31);
  }
  if (lane == 0) {
    const int keep = capacity >= 0 ? static_cast<int>(min(static_cast<int64_t>(running), capacity)) : running;
    kept[e] = keep;
    padded[e] = (keep + block_size - 1) / block_size * block_size;
    if (running > keep) atomicAdd(&totals->dropped, static_cast<unsigned long long>(running - keep));
  }
}

// One block: offsets = exclusive prefix sum of the padded lengths; the padding gets the sentinel.
__global__ void __launch_bounds__(kThreads) offsets_kernel(const int* kept, const int* padded, int E,
                                                           int32_t* offsets, int32_t* slots, int32_t sentinel) {
  const int per_thread = (E + kThreads - 1) / kThreads;
  const int first = threadIdx.x * per_thread;
  const int last = min(E, first + per_thread);
  int local = 0;
  for (int e = first; e < last; ++e) local += padded[e];
  // Exclusive scan of the threads' sums: within the warp, then across warps in order.
  __shared__ int warp_totals[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int inclusive = local;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const int n = __shfl_up_sync(kAllLanes, inclusive, offset);
    if (lane >= offset) inclusive += n;
  }
  if (lane == 31) warp_totals[warp] = inclusive;
  __syncthreads();
  int start = inclusive - local;
  for (int w = 0; w < warp; ++w) start += warp_totals[w];
  for (int e = first; e < last; ++e) {
    offsets[e] = start;
    start += padded[e];
  }
  if (last == E && first < last) offsets[E] = start;
  __syncthreads();
  if (slots)
    for (int e = first; e < last; ++e)
      for (int i = offsets[e] + kept[e]; i < offsets[e] + padded[e]; ++i) slots[i] = sentinel;
}

// One warp per tile: each assignment's rank within its expert is the expert's count before the tile
// plus the assignments to it earlier in the tile; lanes holding the same expert are ranked together.
__global__ void __launch_bounds__(32 * kRankWarps) scatter_kernel(int32_t* experts, int64_t slots, int length,
                                                                 int tiles, int E, const int* counts,
                                                                 int64_t capacity, const int32_t* offsets,
                                                                 int32_t* dispatch) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int* running = reinterpret_cast<int*>(smem) + warp * E;
  const int tile = blockIdx.x * kRankWarps + warp;
  if (tile >= tiles) return;  // whole warps; no block barrier follows
  for (int e = lane; e < E; e += 32) running[e] = counts[static_cast<int64_t>(e) * tiles + tile];
  __syncwarp();
  const int64_t begin = static_cast<int64_t>(tile) * length;
  const int64_t end = min(slots, begin + length);
  const unsigned below = (1u << lane) - 1;
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t i = base + lane;
    const int e = i < end ? experts[i] : -1;
    const unsigned peers = __match_any_sync(kAllLanes, e);
    const int before = __popc(peers & below);
    if (e >= 0) {
      const int64_t rank = running[e] + before;
      if (capacity >= 0 && rank >= capacity) {
        experts[i] = -1;
      } else if (dispatch) {
        dispatch[offsets[e] + rank] = static_cast<int32_t>(i);
      }
    }
    __syncwarp();
    if (e >= 0 && before == 0) running[e] += __popc(peers);
    __syncwarp();
  }
}

__global__ void __launch_bounds__(kThreads) reweight_kernel(RowConfig c, const int32_t* experts,
                                                            const float* cand_s, const float* cand_u,
                                                            float* weights, int64_t tokens) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= tokens) return;
  for (int j = 0; j < c.K; ++j)
    weights[t * c.K + j] = slot_weight(c, experts + t * c.K, cand_s + t * c.K, cand_u + t * c.K, j);
}

__global__ void __launch_bounds__(kThreads) finalize_kernel(Finalize f) { finalize_route(f); }

unsigned grid_for(int64_t items, int per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

}  // namespace

void launch_norm_statistics(const double* norms, int64_t tokens, double* stats, cudaStream_t stream) {
  norm_statistics_kernel<<<1, kThreads, 0, stream>>>(norms, tokens, stats);
  check_launch("norm_statistics_kernel launch");
}

void launch_decide(const RowConfig& c, const RowOutputs& o, const double* stats, int64_t tokens,
                   cudaStream_t stream) {
  decide_kernel<<<grid_for(tokens, kThreads), kThreads, 2 * c.E * sizeof(int), stream>>>(c, o, stats, tokens);
  check_launch("decide_kernel launch");
}

int rank_tiles(int64_t slots) {
  const int length = tile_length(slots);
  return static_cast<int>((slots + length - 1) / length);
}

void launch_rank(int32_t* experts, int64_t tokens, int K, int E, int64_t capacity, int block_size,
                 const RankBuffers& b, int32_t* offsets, int32_t* slots, Totals* totals,
                 cudaStream_t stream) {
  const int64_t n = tokens * K;
  const int length = tile_length(n);
  const int tiles = rank_tiles(n);
  tile_count_kernel<<<tiles, kThreads, E * sizeof(int), stream>>>(experts, n, length, tiles, E, b.tile_counts);
  check_launch("tile_count_kernel launch");
  expert_scan_kernel<<<grid_for(E, kThreads / 32), kThreads, 0, stream>>>(b.tile_counts, tiles, E, capacity,
                                                                          block_size, b.kept, b.padded, totals);
  check_launch("expert_scan_kernel launch");
  if (offsets) {
    offsets_kernel<<<1, kThreads, 0, stream>>>(b.kept, b.padded, E, offsets, slots, static_cast<int32_t>(n));
    check_launch("offsets_kernel launch");
  }
  const size_t shared = static_cast<size_t>(kRankWarps) * E * sizeof(int);
  allow_shared(reinterpret_cast<const void*>(scatter_kernel), shared);
  scatter_kernel<<<grid_for(tiles, kRankWarps), 32 * kRankWarps, shared, stream>>>(
      experts, n, length, tiles, E, b.tile_counts, capacity, offsets, slots);
  check_launch("scatter_kernel launch");
}

void launch_reweight(const RowConfig& c, const int32_t* experts, const float* cand_s, const float* cand_u,
                     float* weights, int64_t tokens, cudaStream_t stream) {
  reweight_kernel<<<grid_for(tokens, kThreads), kThreads, 0, stream>>>(c, experts, cand_s, cand_u, weights,
                                                                       tokens);
  check_launch("reweight_kernel launch");
}

void launch_finalize(const Finalize& f, cudaStream_t stream) {
  finalize_kernel<<<1, kThreads, 0, stream>>>(f);
  check_launch("finalize_kernel launch");
}

}  // namespace moe::cuda
