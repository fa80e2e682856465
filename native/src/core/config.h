// Router options with every default resolved, checked once at construction.
#pragma once

#include <cstdint>

#include "moe_router.h"

namespace moe {

struct Config {
  moe_router_options options;  // as given, defaults resolved (normalize is 0 or 1)
  int D = 0, E = 0, K = 0, kmin = 1;
  bool normalize = true;        // softmax-then-select: divide by the sum of the selected scores
  bool weights_are_softmax = false;  // select-then-softmax: weights = softmax of the selected logits
  // Normalized softmax weights, of either order: the softmax of the selected logits, which equals
  // s_j / sum s (docs/semantics.md §6) and keeps their ratios where the scores underflow f32.
  bool weights_from_logits = false;
  bool capacity = false;        // token-choice capacity is on
  bool expert_choice = false;
  int group_size = 0;           // E / G when groups are on, else 0
};

// Resolves defaults and checks every option; throws Failure(MOE_E_CONFIG) naming every bad one,
// a line each.
Config resolve_config(const moe_router_options& options);

// Token-choice capacity per expert for a batch of `tokens` (SPEC §5), or the expert-choice capacity.
int64_t capacity_per_expert(const Config& config, int64_t tokens);

}  // namespace moe
