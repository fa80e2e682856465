#!/usr/bin/env bash
# CI for the CUDA backend on a machine with nvcc (GPU or not): compiles and links the addon and
# moe_router_check with CUDA for one architecture, then
#  - without a GPU: checks that the tool says "no CUDA device" (exit 77) and that the CUDA-enabled addon
#    falls back to the CPU (test/cuda-fallback.test.ts);
#  - with a GPU: runs the tool's agreement check against the scalar oracle (no timings).
# MOE_ROUTER_CUDA_ARCHS overrides the architecture (default 90).
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${MOE_ROUTER_CUDA_ARCHS:-90}"
# The addon (nothing to do when npm install already built it), then the same build directory
# reconfigured with the tools: cmake-js compile reuses an existing configuration, so it cannot add them.
npx cmake-js compile --CDMOE_ROUTER_CUDA=ON --CDMOE_ROUTER_CUDA_ARCHS="$arch"
cmake -S . -B build -DMOE_ROUTER_CUDA=ON -DMOE_ROUTER_CUDA_ARCHS="$arch" -DMOE_ROUTER_TOOLS=ON >/dev/null
cmake --build build --target moe_router_check
if readelf -d build/Release/moe_router.node | grep NEEDED | grep -qi cuda; then
  echo "build/Release/moe_router.node links a CUDA library dynamically" >&2
  exit 1
fi
status=0
./build/moe_router_check --no-bench --cases 200 || status=$?
if [ "$status" -eq 77 ]; then
  MOE_ROUTER_EXPECT_CUDA=1 npx vitest run test/cuda-fallback.test.ts
elif [ "$status" -ne 0 ]; then
  exit "$status"
fi
