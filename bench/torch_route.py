"""PyTorch eager and torch.compile routes on the canonical workloads, timed like moe_router_check.

A gate route is F.linear -> softmax (f32) -> topk -> renormalize -> expert counts -> aux loss; a logits
route is softmax -> topk -> renormalize -> expert counts. f32 runs with TF32 matmuls (what the CUDA
backend does by default), bf16 with bf16 hidden states and weight. Each route is timed with CUDA events
around the call (launch gaps included, as for ours), after a warm-up, as the median of N calls over
rotated inputs. With --ours (moe_router_check --json), prints one table with both and the speedups.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

# shared/workloads.json, plus the two logits sizes of the targets.
WORKLOADS = [
    ("decode-olmoe", False, 8, 2048, 64, 8),
    ("mixtral-prefill", False, 4096, 4096, 8, 2),
    ("olmoe-prefill", False, 4096, 2048, 64, 8),
    ("qwen3-prefill", False, 2048, 4096, 128, 8),
    ("dsv3-prefill", False, 1024, 7168, 256, 8),
    ("logits-64x8", True, 65536, 0, 64, 8),
    ("logits-256x8", True, 16384, 0, 256, 8),
    ("logits-8x2", True, 65536, 0, 8, 2),
    ("logits-256x8-t8192", True, 8192, 0, 256, 8),
    ("decode-logits-256x8", True, 64, 0, 256, 8),
]


def gate_route(hidden, weight, k: int):
    logits = F.linear(hidden, weight)
    scores = torch.softmax(logits, dim=-1, dtype=torch.float32)
    top, experts = torch.topk(scores, k, dim=-1)
    top = top / top.sum(dim=-1, keepdim=True)
    num_experts = weight.shape[0]
    counts = torch.bincount(experts.flatten(), minlength=num_experts)
    aux = num_experts * torch.sum(counts.float() / experts.numel() * scores.mean(dim=0))
    return experts, top, counts, aux


def logits_route(logits, k: int):
    scores = torch.softmax(logits, dim=-1, dtype=torch.float32)
    top, experts = torch.topk(scores, k, dim=-1)
    top = top / top.sum(dim=-1, keepdim=True)
    counts = torch.bincount(experts.flatten(), minlength=logits.shape[-1])
    return experts, top, counts


def time_route(fn, inputs, iterations: int) -> float:
    for i in range(10):
        fn(inputs[i % len(inputs)])
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(iterations):
        start.record()
        fn(inputs[i % len(inputs)])
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--ours", help="moe_router_check --json output")
    parser.add_argument("--json", help="write the PyTorch timings here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    generator = torch.Generator(device=device).manual_seed(42)
    rows = []
    for name, is_logits, T, D, E, K in WORKLOADS:
        for dtype_name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            width = E if is_logits else D
            size = T * width * (4 if dtype == torch.float32 else 2)
            count = max(2, min(16, 3 * l2 // max(size, 1) + 1))
            scale = 2.0 if is_logits else 1.0
            inputs = [(torch.randn(T, width, device=device, generator=generator) * scale).to(dtype) for _ in range(count)]
            if is_logits:
                eager = lambda x, k=K: logits_route(x, k)
            else:
                weight = (torch.randn(E, D, device=device, generator=generator) / D**0.5).to(dtype)
                eager = lambda x, w=weight, k=K: gate_route(x, w, k)
            compiled = torch.compile(eager, dynamic=False)
            row = {"name": name, "dtype": dtype_name, "eager_us": time_route(eager, inputs, args.iterations),
                   "compile_us": time_route(compiled, inputs, args.iterations)}
            rows.append(row)
            torch._dynamo.reset()
    ours, copy_gbps = {}, float("nan")
    if args.ours:
        with open(args.ours) as f:
            report = json.load(f)
        copy_gbps = report["copy_gbps"]
        ours = {(w["name"], w["dtype"]): w for w in report["workloads"]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; median kernel-side microseconds per route")
    print(f"{'workload':<20} {'dtype':<5} {'ours':>9} {'eager':>9} {'compile':>9} {'x eager':>8} {'x compile':>10} {'% copy':>7}")
    for row in rows:
        mine = ours.get((row["name"], row["dtype"]))
        us = mine["median_us"] if mine else float("nan")
        copy = f"{100 * mine['gbps'] / copy_gbps:.1f}%" if mine else "-"
        print(f"{row['name']:<20} {row['dtype']:<5} {us:>9.2f} {row['eager_us']:>9.2f} {row['compile_us']:>9.2f} "
              f"{row['eager_us'] / us:>8.2f} {row['compile_us'] / us:>10.2f} {copy:>7}")


if __name__ == "__main__":
    main()
