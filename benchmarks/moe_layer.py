"""Forward+backward of one MoE layer at ViT-B/16 shapes: our batched experts against the reference's dispatch.

The baseline is the reference's SparseDispatcher (benchmarks/reference_baseline.py ``sparse_dispatch``): on the
sequence-first hidden state (stored sample-major, as the reference's residual stream), each sample's whole slab
gathered once per chosen expert, split into per-expert sub-batches, EVERY expert called (on an empty sub-batch
when no sample chose it), the gated outputs concatenated and summed back with one index_add. Ours: the chosen
experts' weights side by side per sample, two batched matmuls. Both gate with the same noisy top-k gating (the
reference's discarded balance loss and its counting are left out here; benchmarks/train_step.py has them). Both
run in the same process on the same inputs, alternating call by call; the script checks that they agree and
prints both medians and their ratio.

Measured on the project's 2-core CPU (2 threads, load average about 5 from other jobs): 1.04 s against 3.26 s
at batch 64 (3.1x), 54 ms against 131 ms at batch 4 (2.4x); output within 1.9e-7, gradients within 8.9e-7.

    python benchmarks/moe_layer.py                   # CPU, paper shapes (batch 64)
    python benchmarks/moe_layer.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_baseline import sparse_dispatch  # noqa: E402

from moe_adapters.model.moe import MoELayer
from moe_adapters.steps.build import paper_moe_spec as paper_spec


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    ap.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = replace(paper_spec(), num_experts=args.experts, top_k=args.top_k, num_routers=1)
    layer = MoELayer(args.width, spec).to(device)
    with torch.no_grad():  # trained-looking weights: a random router and non-zero up-projections
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    x = torch.randn(args.batch, args.tokens, args.width, device=device, requires_grad=True)

    def reference(x: torch.Tensor, noisy: bool) -> torch.Tensor:
        g = layer.gate(x[:, 0], 0, noisy).gates
        return sparse_dispatch(x.transpose(0, 1), g, layer.experts).transpose(0, 1)

    def ours(x: torch.Tensor, noisy: bool) -> torch.Tensor:
        return layer(x, 0, noisy=noisy, batched=True)

    # Agreement (no dropout, no noise: both paths then compute the same function).
    layer.eval()
    outs, grads = [], []
    for path in (ours, reference):
        y = path(x, False)
        wanted = [x, layer.routers[0], *(p for e in layer.experts for p in e.parameters())]
        g = torch.autograd.grad(y.square().mean(), wanted, allow_unused=True)  # unchosen experts: None
        outs.append(y.detach())
        grads.append(g)
    rel = ((outs[0] - outs[1]).norm() / outs[1].norm()).item()
    if any((a is None) != (b is None) for a, b in zip(*grads, strict=True)):
        raise SystemExit("the two paths give gradients to different experts")
    grad_rel = max(
        ((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(*grads, strict=True) if b is not None
    )

    # Timing in training conditions (dropout on, noisy gating), alternating the two call by call.
    layer.train()
    times = {"ours": [], "reference": []}
    for i in range(args.warmup + args.repeats):
        for name, path in (("reference", reference), ("ours", ours)):
            sync(device)
            t0 = time.perf_counter()
            path(x, True).square().mean().backward()
            x.grad = None
            layer.zero_grad(set_to_none=True)
            sync(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    ours_s, ref_s = statistics.median(times["ours"]), statistics.median(times["reference"])
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "shape": [args.batch, args.tokens, args.width],
        "experts": args.experts,
        "top_k": args.top_k,
        "batched_ms": round(ours_s * 1e3, 3),
        "reference_dispatch_ms": round(ref_s * 1e3, 3),
        "speedup": round(ref_s / ours_s, 2),
        "output_rel_diff": rel,
        "grad_rel_diff": grad_rel,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"device           {result['device']}")
        print(f"shape            batch {args.batch} x {args.tokens} tokens x width {args.width}, {args.experts} experts, top-{args.top_k}")
        print(f"batched experts      {result['batched_ms']:9.2f} ms  (forward+backward, median of {args.repeats})")
        print(f"reference dispatch   {result['reference_dispatch_ms']:9.2f} ms")
        print(f"speed-up             {result['speedup']:9.2f} x")
        print(f"agreement            output rel. diff {rel:.2e}, gradient rel. diff {grad_rel:.2e}")
    if rel > 1e-5 or grad_rel > 1e-4:
        raise SystemExit(f"the two paths disagree (output {rel:.2e}, gradient {grad_rel:.2e})")


if __name__ == "__main__":
    main()
