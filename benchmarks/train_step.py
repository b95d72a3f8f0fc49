"""One training iteration at paper shapes: our path against a reference-style path, in the same run.

Ours: batched experts (two batched matmuls per layer), text cut after the longest prompt's end token.
Reference-style: per-expert dispatch (a Python loop over the 22 experts, as the reference code), the full
77-token text context. Both run the same model (ViT-B/16, random weights, 22 experts, top-2, adapters in
both towers) on the same batch, for a 100-class and a 397-class text head. Each path runs in its own
process, so its peak memory is its own; the loss and gradients of both are compared (dropout off and the
same gating noise for that check).

    python benchmarks/train_step.py --device cuda            # paper shapes on a GPU
    python benchmarks/train_step.py --preset cpu             # reduced sizes for a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PRESETS = {
    "paper": {"model": "ViT-B-16", "batch": 64, "classes": [100, 397], "repeats": 10, "warmup": 3},
    # the paper's text-to-image workload ratios (100 and 397 classes per 64 images) at batch 4
    "cpu": {"model": "ViT-B-16", "batch": 4, "classes": [6, 25], "repeats": 2, "warmup": 1},
}
WORDS = (
    "abbey airport alley amphitheater amusement arcade aquarium arch art gallery studio assembly line attic "
    "auditorium bakery shop balcony ballroom bamboo forest bank vault banquet hall bar barn baseball field "
    "basement basilica bathroom bayou beauty salon bedroom berth biology laboratory boardwalk boat deck "
    "bookstore botanical garden bowling alley boxing ring bridge building facade bullring burial chamber"
).split()


def class_names(n: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (k,), generator=g).tolist()
        names.append(" ".join(WORDS[j] for j in idx) + f" {i}")
    return names


def build(args, device):
    from moe_adapters.model.clip import BackboneSpec, MoECLIP, create_backbone, tokenizer_for
    from moe_adapters.steps.build import paper_moe_spec as paper_spec

    spec = BackboneSpec(args.model, True, None)
    model = MoECLIP(create_backbone(spec), paper_spec(), spec, init_seed=42)
    model.randomize_adapters(0.02, seed=1)  # trained-looking: non-zero up-projections and routers
    model.to(device)
    return model, tokenizer_for(spec)


def child(args) -> None:
    """Run one path: time it, then save loss and gradients of the comparison pass."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model, tok = build(args, device)
    ours = args.path == "ours"
    model.batched_experts = ours
    model.truncate_text = ours
    route = 3
    params = model.set_trainable(route)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type in ("cuda", "cpu"))
    g = torch.Generator().manual_seed(2)
    images = torch.randn(args.batch, 3, 224, 224, generator=g).to(device)
    out = {"path": args.path, "classes": {}}
    heads = {}
    for n_cls in args.classes:
        labels = torch.randint(0, n_cls, (args.batch,), generator=g).to(device)
        texts = tok([f"a photo of a {c}." for c in class_names(n_cls)]).to(device)
        heads[n_cls] = (labels, texts)

    def step(labels, texts):
        text = model.encode_text(texts, route, normalize=True)
        image = model.encode_image(images, route, normalize=True)
        loss = F.cross_entropy(100.0 * image @ text.T, labels, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    # Comparison passes first, on the same weights for every head (no optimizer step before them): eval
    # mode (no dropout) with the gating noise kept on, drawn from the same seed in both paths.
    model.eval()
    model.eval_noise = True
    for n_cls, (labels, texts) in heads.items():
        torch.manual_seed(5)
        loss = step(labels, texts)
        grads = {
            "router": model.visual_moe[5].routers[route].grad,
            "expert": model.text_moe[2].experts[7].down_proj.weight.grad,
        }
        check = {"loss": loss.detach().cpu(), **{k: (v.cpu() if v is not None else torch.zeros(1)) for k, v in grads.items()}}
        torch.save(check, Path(args.out).with_suffix(f".{n_cls}.pt"))
    model.eval_noise = False
    model.train()
    # Timing: full training steps (dropout and gating noise on, optimizer step included).
    for n_cls, (labels, texts) in heads.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.warmup + args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            step(labels, texts)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        out["classes"][n_cls] = {"seconds": statistics.median(times), "cuda_peak_bytes": peak}
    import resource

    out["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(args.out).write_text(json.dumps(out))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default=None, help="default: paper on CUDA, cpu otherwise")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--classes", type=int, nargs="+")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--path", choices=["ours", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    preset = PRESETS[args.preset or ("paper" if args.device.startswith("cuda") else "cpu")]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.path:
        child(args)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("reference", "ours"):
            out = Path(tmp) / f"{path}.json"
            cmd = [sys.executable, __file__, "--path", path, "--out", str(out), "--device", args.device,
                   "--model", args.model, "--batch", str(args.batch), "--repeats", str(args.repeats),
                   "--warmup", str(args.warmup), "--classes", *map(str, args.classes)]
            subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            results[path] = json.loads(out.read_text())
        checks = {}
        for n in args.classes:
            a = torch.load(Path(tmp) / f"ours.{n}.pt", weights_only=True)
            b = torch.load(Path(tmp) / f"reference.{n}.pt", weights_only=True)
            checks[n] = {k: rel(a[k], b[k]) for k in a}
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)"
    print(f"device {device}; {args.model}, batch {args.batch}, 22 experts top-2 in both towers; median of {args.repeats}")
    print(f"{'classes':>8} {'reference s/it':>15} {'ours s/it':>10} {'speed-up':>9} {'ref peak GB':>12} {'ours peak GB':>13}  max rel. diff (loss, grads)")
    summary = {"device": device, "model": args.model, "batch": args.batch, "rows": []}
    for n in args.classes:
        r, o = results["reference"]["classes"][str(n)], results["ours"]["classes"][str(n)]

        def gb(x):
            return f"{x / 2**30:.2f}" if x else "-"

        worst = max(checks[n].values())
        print(f"{n:>8} {r['seconds']:>15.3f} {o['seconds']:>10.3f} {r['seconds'] / o['seconds']:>8.2f}x "
              f"{gb(r['cuda_peak_bytes']):>12} {gb(o['cuda_peak_bytes']):>13}  {worst:.1e}")
        summary["rows"].append({"classes": n, "reference_s": r["seconds"], "ours_s": o["seconds"],
                                "speedup": r["seconds"] / o["seconds"], "reference_peak": r["cuda_peak_bytes"],
                                "ours_peak": o["cuda_peak_bytes"], "max_rel_diff": worst})
    print(f"process peak RSS: reference {results['reference']['max_rss_bytes'] / 2**30:.2f} GB, "
          f"ours {results['ours']['max_rss_bytes'] / 2**30:.2f} GB")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if any(row["max_rel_diff"] > 1e-5 for row in summary["rows"]):
        raise SystemExit("the two paths disagree beyond 1e-5 relative")


if __name__ == "__main__":
    main()
