// The scalar backend: the portable reference every other backend is checked against.
#pragma once

#include <memory>

#include "../core/backend.h"

namespace moe {

// u[e] = sum_d x[d] * W[e, d] + b[e], accumulated in f32 in index order.
void scalar_gate_row(const float* x, const float* weight, const float* bias, int experts, int dim,
                     float* u);

std::unique_ptr<Backend> make_scalar_backend();

}  // namespace moe
