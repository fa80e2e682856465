#!/usr/bin/env bash
# The CUDA backend on this machine's GPU: builds native/tools/moe_router_check for the local GPU's
# architecture only, checks the backend against the scalar oracle, times the canonical workloads
# (shared/workloads.json, compiled into the tool), then times PyTorch eager and torch.compile routes on
# the same shapes and prints one table. Needs nvcc, CMake and a GPU; PyTorch is optional; Node is not
# used.
#
#   bench/gpu.sh [--cases N] [--iterations N]
#
# Results go to $OUT when set (the device machine brings that folder back), else bench/results/.
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cases=400
iterations=200
while [ $# -gt 0 ]; do
  case "$1" in
    --cases) cases="$2"; shift 2 ;;
    --iterations) iterations="$2"; shift 2 ;;
    *) echo "usage: bench/gpu.sh [--cases N] [--iterations N]" >&2; exit 2 ;;
  esac
done
out="${OUT:-$root/bench/results}"
mkdir -p "$out"

arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')"
if [ -z "$arch" ]; then
  echo "no GPU found by nvidia-smi; moe_router_check will say so" >&2
  arch=90
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
build="$root/build/gpu-bench"
echo "== building moe_router_check for sm_$arch"
cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMOE_ROUTER_CUDA=ON \
  -DMOE_ROUTER_CUDA_ARCHS="$arch" -DMOE_ROUTER_TOOLS=ON >"$out/cmake.log" 2>&1 || { tail -20 "$out/cmake.log"; exit 1; }
cmake --build "$build" --target moe_router_check -j "$(nproc)" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }

echo "== moe_router_check (agreement, then timings)"
"$build/moe_router_check" --cases "$cases" --iterations "$iterations" --json "$out/ours.json" | tee "$out/check.txt"
check=${PIPESTATUS[0]}

echo "== PyTorch"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python3 "$root/bench/torch_route.py" --iterations "$iterations" --ours "$out/ours.json" --json "$out/torch.json" \
    | tee "$out/table.txt"
else
  echo "PyTorch with CUDA not found: no comparison"
fi
echo "moe_router_check exit status: $check (0 agree, 1 disagree, 77 no CUDA device)"
exit "$check"
