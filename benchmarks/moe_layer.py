"""Forward+backward of one MoE layer at ViT-B/16 shapes: batched experts against per-expert dispatch.

The baseline is the reference implementation's approach (split the batch by expert, run each of the
22 experts on its share in a Python loop, index_add the gated outputs back). Both paths run in the same
process on the same inputs; the script checks that they agree and prints both times and their ratio.

    python benchmarks/moe_layer.py                   # CPU, paper shapes
    python benchmarks/moe_layer.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import torch

from moe_adapters.model.moe import MoELayer
from moe_adapters.steps.build import paper_moe_spec as paper_spec


def timed(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--experts", type=int, default=22)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = replace(paper_spec(), num_experts=args.experts, top_k=args.top_k, num_routers=1)
    layer = MoELayer(args.width, spec).to(device)
    with torch.no_grad():  # trained-looking weights: a random router and non-zero up-projections
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    x = torch.randn(args.batch, args.tokens, args.width, device=device, requires_grad=True)

    # Agreement (no dropout, no noise: both paths then compute the same function).
    layer.eval()
    outs, grads = [], []
    for batched in (True, False):
        y = layer(x, 0, noisy=False, batched=batched)
        g = torch.autograd.grad(y.square().mean(), [x, layer.experts[0].down_proj.weight, layer.routers[0]])
        outs.append(y.detach())
        grads.append(g)
    rel = ((outs[0] - outs[1]).norm() / outs[1].norm()).item()
    grad_rel = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(*grads, strict=True))

    # Timing in training conditions (dropout on, noisy gating).
    layer.train()

    def step(batched: bool):
        def run():
            y = layer(x, 0, noisy=True, batched=batched)
            y.square().mean().backward()
            x.grad = None
            layer.zero_grad(set_to_none=True)

        return run

    t_ours = timed(step(True), device, args.repeats, args.warmup)
    t_ref = timed(step(False), device, args.repeats, args.warmup)
    ours, ref = statistics.median(t_ours), statistics.median(t_ref)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "shape": [args.batch, args.tokens, args.width],
        "experts": args.experts,
        "top_k": args.top_k,
        "batched_ms": round(ours * 1e3, 3),
        "dispatch_ms": round(ref * 1e3, 3),
        "speedup": round(ref / ours, 2),
        "output_rel_diff": rel,
        "grad_rel_diff": grad_rel,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"device           {result['device']}")
        print(f"shape            batch {args.batch} x {args.tokens} tokens x width {args.width}, {args.experts} experts, top-{args.top_k}")
        print(f"batched experts  {result['batched_ms']:9.2f} ms  (forward+backward, median of {args.repeats})")
        print(f"per-expert loop  {result['dispatch_ms']:9.2f} ms")
        print(f"speed-up         {result['speedup']:9.2f} x")
        print(f"agreement        output rel. diff {rel:.2e}, gradient rel. diff {grad_rel:.2e}")
    if rel > 1e-5 or grad_rel > 1e-4:
        raise SystemExit(f"the two paths disagree (output {rel:.2e}, gradient {grad_rel:.2e})")


if __name__ == "__main__":
    main()
