"""PyTorch CPU anchor and machine ceilings for `npm run bench:anchors` (bench/anchors.ts runs it).

Reads a JSON request on stdin: {"threads", "timing": {timeMs, capMs, minSamples, warmupMs},
"workloads": [{name, kind, tokens, hidden, experts, topK, buffers}]} and writes one JSON object a
line on stdout: {"type": "info"}, {"type": "ceiling"} twice, then {"type": "workload"} per workload.
The timing loop follows measure() in src/bench.ts: a probe call, a warm-up when the probe is shorter
than warmupMs, then samples until timeMs has passed and enough samples are in (fewer, never below 3,
when capMs would be passed). Progress goes to stderr.

Run it with Debian's interpreter (/usr/bin/python3) and its python3-torch package.
"""
import itertools
import json
import math
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError as error:
    sys.exit(f"anchor_torch.py: PyTorch is not importable from {sys.executable} ({error}); "
             "install Debian's: apt-get install -y python3-torch libopenblas0-openmp")

FEWEST_SAMPLES = 3
GEMM_N = 2048
SUM_BYTES = 1 << 30


def quantile(sorted_samples, q):
    """Linear interpolation between closest ranks, as tinybench computes its percentiles."""
    position = (len(sorted_samples) - 1) * q
    low = math.floor(position)
    if low + 1 >= len(sorted_samples):
        return sorted_samples[low]
    return sorted_samples[low] + (position - low) * (sorted_samples[low + 1] - sorted_samples[low])


def measure(fn, timing):
    start = time.perf_counter()
    fn()
    probe_ms = (time.perf_counter() - start) * 1e3
    if probe_ms < timing["warmupMs"]:
        until = time.perf_counter() + timing["warmupMs"] / 1e3
        while time.perf_counter() < until:
            fn()
    budget_ms = min(timing["timeMs"], timing["capMs"])
    want = max(FEWEST_SAMPLES, min(timing["minSamples"], math.floor(timing["capMs"] / probe_ms)))
    samples = []
    total_ms = 0.0
    while total_ms < budget_ms or len(samples) < want:
        start = time.perf_counter()
        fn()
        elapsed = (time.perf_counter() - start) * 1e3
        samples.append(elapsed)
        total_ms += elapsed
    samples.sort()
    return {
        "median_ms": quantile(samples, 0.5),
        "p99_ms": quantile(samples, 0.99),
        "mean_ms": sum(samples) / len(samples),
        "min_ms": samples[0],
        "samples": len(samples),
    }


def gate_step(weight, k):
    experts = weight.shape[0]

    def step(hidden):
        probs = F.linear(hidden, weight).softmax(dim=-1)
        values, indices = probs.topk(k, dim=-1)
        weights = values / values.sum(dim=-1, keepdim=True)
        fraction = torch.bincount(indices.flatten(), minlength=experts) / indices.numel()
        aux_loss = experts * torch.dot(fraction, probs.mean(dim=0))
        return weights, indices, aux_loss

    return step


def logits_step(k):
    def step(logits):
        values, indices = logits.softmax(dim=-1).topk(k, dim=-1)
        return values / values.sum(dim=-1, keepdim=True), indices

    return step


def blas_library():
    """The BLAS shared library this process loaded (reference BLAS makes a poor GEMM ceiling)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "blas" in line.rsplit("/", 1)[-1]}
    return sorted(paths)[0] if paths else "unknown"


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    request = json.load(sys.stdin)
    timing = request["timing"]
    torch.set_num_threads(request["threads"])
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    with torch.inference_mode():
        a, b = torch.randn(GEMM_N, GEMM_N), torch.randn(GEMM_N, GEMM_N)
        gemm = measure(lambda: torch.mm(a, b), timing)
        emit({"type": "info", "torch": torch.__version__, "blas": blas_library(),
              "threads": torch.get_num_threads()})
        emit({"type": "ceiling", "name": "gemm", "n": GEMM_N, **gemm,
              "gflops": 2 * GEMM_N ** 3 / (gemm["median_ms"] / 1e3) / 1e9})
        del a, b
        big = torch.randn(SUM_BYTES // 4)
        total = measure(lambda: big.sum(), timing)
        emit({"type": "ceiling", "name": "read", "bytes": SUM_BYTES, **total,
              "gbps": SUM_BYTES / (total["median_ms"] / 1e3) / 1e9})
        del big
        for w in request["workloads"]:
            print(f"  torch {w['name']}", file=sys.stderr, flush=True)
            width = w["hidden"] if w["kind"] == "gate" else w["experts"]
            inputs = [torch.randn(w["tokens"], width) for _ in range(w["buffers"])]
            if w["kind"] == "gate":
                weight = torch.randn(w["experts"], w["hidden"]) / math.sqrt(w["hidden"])
                step = gate_step(weight, w["topK"])
            else:
                step = logits_step(w["topK"])
            rotation = itertools.cycle(inputs)
            emit({"type": "workload", "name": w["name"], **measure(lambda: step(next(rotation)), timing)})
            del inputs


if __name__ == "__main__":
    main()
