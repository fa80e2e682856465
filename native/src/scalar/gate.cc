#include "scalar.h"

namespace moe {

void scalar_gate_row(const float* x, const float* weight, const float* bias, int experts, int dim,
                     float* u) {
  for (int e = 0; e < experts; ++e) {
    const float* w = weight + static_cast<int64_t>(e) * dim;
    float acc = 0.0f;
    for (int d = 0; d < dim; ++d) acc += x[d] * w[d];
    u[e] = bias ? acc + bias[e] : acc;
  }
}

}  // namespace moe
