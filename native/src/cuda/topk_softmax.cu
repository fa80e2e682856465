// The token stage over given logits [T, E] (routeLogits): the twin of scalar/topk_softmax.cc. A team
// of 8, 16 or 32 lanes routes a row for E <= 512, the whole block for larger E (cuda/row_route.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "../core/failure.h"
#include "kernels.cuh"
#include "row_route.cuh"
#include "runtime.cuh"

namespace moe::cuda {

namespace {

template <class T>
struct LogitsRow {
  const T* row;
  int E;

  __device__ float load(int e) const { return widen(row[e]); }

  // The norm strategy's ||x_t||: for routeLogits, the norm of the logits row as given.
  template <class Team>
  __device__ double norm(const Team& team, bool active) const {
    double sum = 0;
    if (active) {
      for (int e = team.rank; e < E; e += Team::kWidth) {
        const double v = widen(row[e]);
        sum += v * v;
      }
    }
    return sqrt(team.sum(sum));
  }
};

template <class Class, class T>
__global__ void __launch_bounds__(kThreads, Class::kBlocksPerSM)
    topk_softmax_kernel(const T* logits, int64_t t_begin, int64_t rows, int rows_per_block, RowConfig c,
                        RowOutputs o, Finalize f) {
  using Team = typename Class::Team;
  extern __shared__ __align__(16) unsigned char smem[];
  const RowSmem L = row_smem(c.E, c.K, c.group_size > 0 ? c.group_count : 0, Team::kPerBlock);
  clear_block(smem, L, c.E, Team::kPerBlock);
  const Team team;
  RowAccum<Class::kPer> acc;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int live = static_cast<int>(min(static_cast<int64_t>(rows_per_block), rows - first));
  for (int r0 = 0; r0 < live; r0 += Team::kPerBlock) {
    const int r = r0 + team.id();
    const int64_t row = first + r;
    const bool active = r < live;
    const LogitsRow<T> in{logits + (active ? row : 0) * c.E, c.E};
    route_row<Team, Class::kPer>(team, c, o, smem, L, in, t_begin + row, active, acc);
  }
  flush_block(team, c, o, smem, L, acc, static_cast<int>(blockIdx.x));
  if (f.in_kernel) finalize_if_last(f);
}

template <class Class, class T>
void launch(const LogitsPlan& plan, const void* logits, int64_t t_begin, int64_t rows, const RowConfig& c,
            const RowOutputs& o, const Finalize& f, cudaStream_t stream) {
  const auto kernel = topk_softmax_kernel<Class, T>;
  allow_shared(reinterpret_cast<const void*>(kernel), plan.shared);
  kernel<<<plan.blocks, kThreads, plan.shared, stream>>>(static_cast<const T*>(logits), t_begin, rows,
                                                          plan.rows_per_block, c, o, f);
  check_launch("topk_softmax_kernel launch");
}

}  // namespace

LogitsPlan plan_topk_softmax(const RowConfig& c, int64_t rows) {
  LogitsPlan plan;
  with_expert_class(c.E, [&](auto cls) {
    using Team = typename decltype(cls)::Team;
    // About four blocks per multiprocessor, each a whole number of rounds of its teams: enough blocks
    // to fill the device, few enough that the per-block flushes stay cheap.
    const int64_t target = 4LL * device().multiprocessors;
    int64_t per_block = (rows + target - 1) / target;
    per_block = (per_block + Team::kPerBlock - 1) / Team::kPerBlock * Team::kPerBlock;
    plan.rows_per_block = static_cast<int>(std::max<int64_t>(per_block, Team::kPerBlock));
    plan.blocks = static_cast<int>((rows + plan.rows_per_block - 1) / plan.rows_per_block);
    plan.shared = row_smem(c.E, c.K, c.group_size > 0 ? c.group_count : 0, Team::kPerBlock).total;
  });
  return plan;
}

void launch_topk_softmax(const LogitsPlan& plan, const void* logits, moe_dtype dtype, int64_t t_begin,
                         int64_t rows, const RowConfig& c, const RowOutputs& o, const Finalize& f,
                         cudaStream_t stream) {
  with_expert_class(c.E, [&](auto cls) {
    using Class = decltype(cls);
    switch (dtype) {
      case MOE_DTYPE_F32:
        launch<Class, float>(plan, logits, t_begin, rows, c, o, f, stream);
        break;
      case MOE_DTYPE_F16:
        launch<Class, __half>(plan, logits, t_begin, rows, c, o, f, stream);
        break;
      case MOE_DTYPE_BF16:
        launch<Class, __nv_bfloat16>(plan, logits, t_begin, rows, c, o, f, stream);
        break;
    }
  });
}

}  // namespace moe::cuda
