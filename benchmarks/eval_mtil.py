"""The cost of a full MTIL Order I evaluation (11 checkpoints x 11 test sets): ours against the reference's way.

Every unit cost is measured in this run, on this device, with ViT-B/16 (random weights, trained-looking
adapters), AlexNet conv5 + 12 DDAS autoencoders, synthetic images; the totals are then predicted at the
real test-set sizes, class counts and template counts of the protocol.

Ours (the workflow's `features` and `evaluate` steps):
  once per test set: read the uint8 evaluation cache, zero-shot image features, DDAS errors under all
  autoencoders, the zero-shot text head;
  per checkpoint: load the adapters (safetensors); per test set routed to a task: that route's text head
  once, an adapted image forward (batched experts, text cut after the longest prompt); a test set routed
  to zero-shot costs nothing more (its features are cached, its images are not even read).
Reference-style, per (checkpoint, test set) cell, 121 of them: load the whole model checkpoint; decode and
  transform every JPEG; AlexNet + autoencoders per batch; the cell's text head with a loop over the 22
  experts and the full 77-token context; an image forward (adapted with the expert loop, or plain).

Routing is assumed perfect (test set j goes to task j after task j, to zero-shot before): this is what the
paper reports (DDAS routes >95% of batches correctly), and it is the same assumption for both paths.

Work counts (machine-independent, printed first): image-tower forwards, AlexNet forwards, autoencoder passes,
checkpoint loads and process starts of the full Order I evaluation (11 checkpoints x 11 test sets + zero-shot),
ours against the reference's pattern (one process per cell, each reloading the full checkpoint and all 12
autoencoders, AlexNet and every autoencoder on every batch, an image forward per cell; the zero-shot row is 11
more processes of plain CLIP). Ours reuses a group's routed features from the previous checkpoint when every
tensor its forward read is bit-identical (reuse.py); the fraction of later cells' samples reused is --reuse
(default: as measured on the mini, see REUSE_MINI), the worst case (nothing reused) is printed beside it.

    python benchmarks/eval_mtil.py                 # GPU if present (batch 128), else a CPU preset (batch 8)
    python benchmarks/eval_mtil.py --counts-only   # only the work-count table (no model, any machine)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from moe_adapters.protocol import load_protocol, order_datasets

# test-set sizes recorded by the data layer (src/moe_adapters/protocol/mtil_data.yaml)
TEST_SIZES = {
    "Aircraft": 3333, "Caltech101": 1736, "CIFAR100": 10000, "DTD": 1880, "EuroSAT": 5400, "Flowers": 6149,
    "Food": 25250, "MNIST": 10000, "OxfordPet": 3669, "StanfordCars": 8041, "SUN397": 21751,
}
# Reuse measured on the mini (mini_order1, 5 tasks, 22 experts, top-2, eval batch 64, results/mini of the main
# checkout): in the evaluations of checkpoints 1..4, of the 4005 samples routed to an earlier task, 0 were reused
# (a group is reused only when every expert any of its 64 members chose is unchanged, and every group of the mini
# had a member using an expert the next task trained). Per sample (batch-invariant kernels, which we cannot prove),
# 1063 of 4005 (26.5%) read only unchanged experts: an upper bound on what finer-grained reuse could give there.
REUSE_MINI = 0.0
REUSE_PER_SAMPLE_BOUND_MINI = 1063 / 4005
N_AUTOENCODERS = 12  # autoencoder 0 (generic) and one per task
PRESETS = {"cuda": {"batch": 128, "prompts": 512, "repeats": 5}, "cpu": {"batch": 8, "prompts": 48, "repeats": 2}}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prompts_of(proto, name: str, n_classes: int) -> list[str]:
    """The dataset's real templates filled with its class names (or names of a typical length)."""
    ds = proto["datasets"][name]
    names = ds["classnames"] if isinstance(ds["classnames"], list) else [f"class name {i}" for i in range(n_classes)]
    return [t.format(c=c) for c in names for t in ds["templates"]]


def measure(args, device) -> dict:
    import subprocess
    import sys

    from PIL import Image

    from moe_adapters.data.transforms import eval_transform, normalize_uint8
    from moe_adapters.model.clip import BackboneSpec, MoECLIP, create_backbone, tokenizer_for
    from moe_adapters.model.ddas import AlexNetConv5, autoencoder_mse, feature_dim, init_autoencoder
    from moe_adapters.model.moe import ZERO_SHOT
    from moe_adapters.steps.build import paper_moe_spec as paper_spec

    t0 = time.perf_counter()  # a job's interpreter start and imports
    subprocess.run([sys.executable, "-c", "import torch, open_clip, moe_adapters.steps.evaluate"], check=True)
    m: dict[str, float] = {"import_s": time.perf_counter() - t0}
    spec = BackboneSpec("ViT-B-16", True, None)
    t0 = time.perf_counter()
    model = MoECLIP(create_backbone(spec), paper_spec(), spec, init_seed=42)
    build_s = time.perf_counter() - t0
    model.randomize_adapters(0.02, seed=1)  # trained-looking: non-zero up-projections and routers
    model.to(device).eval()
    model.set_trainable(None)
    tok = tokenizer_for(spec)
    B, rep = args.batch, args.repeats
    x = torch.randn(B, 3, 224, 224, device=device)
    m["model_build_s"] = build_s

    def image(route, batched):
        model.batched_experts = batched
        with torch.no_grad():
            model.encode_image(x, route, normalize=True)

    m["image_plain"] = timed(lambda: image(ZERO_SHOT, True), device, rep) / B
    m["image_adapted_ours"] = timed(lambda: image(3, True), device, rep) / B
    m["image_adapted_reference"] = timed(lambda: image(3, False), device, rep) / B

    # text: real prompts of a 101-class, 34-template set (Caltech101) cut to args.prompts
    proto = load_protocol("mtil", None)
    prompts = prompts_of(proto, "Caltech101", 101)[: args.prompts]
    tokens = tok(prompts).to(device)

    def text(route, fast):
        model.batched_experts = model.truncate_text = fast
        with torch.no_grad():
            model.encode_text(tokens, route, normalize=True)

    P = len(prompts)
    m["text_plain_ours"] = timed(lambda: text(ZERO_SHOT, True), device, rep) / P
    m["text_plain_reference"] = timed(lambda: text(ZERO_SHOT, False), device, rep) / P
    m["text_adapted_ours"] = timed(lambda: text(3, True), device, rep) / P
    m["text_adapted_reference"] = timed(lambda: text(3, False), device, rep) / P
    model.batched_experts = model.truncate_text = True

    # DDAS: AlexNet conv5 (random weights: same cost) and 12 autoencoders, per image
    ext = AlexNetConv5(pretrained=False).to(device)
    aes = [init_autoencoder(k, feature_dim(ext, 224), 100, 42).to(device).eval() for k in range(12)]

    def ddas():
        with torch.no_grad():
            autoencoder_mse(ext, aes, x)

    m["ddas"] = timed(ddas, device, rep) / B

    # reading images: our uint8 cache (memory-mapped, normalised on the device) vs decoding a JPEG
    with tempfile.TemporaryDirectory() as tmp:
        arr = np.random.default_rng(0).integers(0, 256, (B * 4, 3, 224, 224), dtype=np.uint8)
        np.save(Path(tmp) / "test_images.npy", arr)
        cache = np.load(Path(tmp) / "test_images.npy", mmap_mode="r")
        state = {"i": 0}

        def read_cache():
            i = state["i"] = (state["i"] + B) % len(cache)
            normalize_uint8(torch.from_numpy(np.array(cache[i : i + B])).to(device))

        m["read_ours"] = timed(read_cache, device, rep) / B
        img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (375, 500, 3), dtype=np.uint8))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        jpeg = buf.getvalue()
        tf = eval_transform(224)

        def decode():
            torch.stack([tf(Image.open(io.BytesIO(jpeg)).convert("RGB")) for _ in range(B)]).to(device)

        m["read_reference"] = timed(decode, device, rep) / B

        # checkpoints: ours = adapters and routers (safetensors); reference = the whole model (torch.save)
        from safetensors.torch import load_file, save_file

        moe_state = {k: v.detach().cpu().contiguous() for k, v in model.moe_state_dict().items()}
        save_file(moe_state, Path(tmp) / "ours.safetensors")
        full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(full, Path(tmp) / "reference.pt")
        m["checkpoint_bytes_ours"] = (Path(tmp) / "ours.safetensors").stat().st_size
        m["checkpoint_bytes_reference"] = (Path(tmp) / "reference.pt").stat().st_size

        def load_ours():
            model.load_state_dict(load_file(Path(tmp) / "ours.safetensors"), strict=False)
            sync(device)

        def load_reference():
            model.load_state_dict(torch.load(Path(tmp) / "reference.pt", weights_only=True))
            sync(device)

        m["load_ours"] = timed(load_ours, device, 2)
        m["load_reference"] = timed(load_reference, device, 2)
    return m


def work_counts(proto, order: str, reuse: float) -> dict[str, tuple[float, float]]:
    """Counted work of the full evaluation, ours vs the reference's pattern: kind -> (ours, reference).

    Images count as test images through a tower (or an autoencoder); `reuse` is the fraction of the samples of
    cells (k, j), j < k, whose routed features are reused from checkpoint k-1 (cells k == j are always computed).
    """
    names = order_datasets(proto, order)
    n = [TEST_SIZES[d] for d in names]
    T, total = len(names), sum(n)
    adapted = sum(n[j] * (1 + (T - 1 - j) * (1 - reuse)) for j in range(T))  # cells k >= j of test set j
    return {
        "image-tower forwards": (total + adapted, (T + 1) * total),  # ours: zero-shot once per test set
        "AlexNet forwards": (total, T * total),  # ours: once per test set; reference: every cell (not zero-shot)
        "autoencoder passes": (2 * N_AUTOENCODERS * total, T * N_AUTOENCODERS * total),  # ours: trained + initial
        "checkpoint loads (model)": (T + T + 1, T * T + T),  # ours: features (backbone), evaluate k, zero-shot
        "checkpoint loads (autoencoders)": (T * N_AUTOENCODERS, T * T * N_AUTOENCODERS),
        "process starts": (T + T + 1, T * T + T),
    }


def print_counts(proto, order: str, reuse: float) -> None:
    names = order_datasets(proto, order)
    T = len(names)
    measured, worst = work_counts(proto, order, reuse), work_counts(proto, order, 0.0)
    print(f"work of the full MTIL {order} evaluation ({T} checkpoints x {T} test sets + zero-shot, "
          f"{sum(TEST_SIZES[d] for d in names)} test images; counted, machine-independent):")
    print(f"  {'kind':<32} {'reference':>12} {'ours':>12} {'ratio':>7}   {'ours, worst':>12} {'ratio':>7}")
    for kind, (ours, ref) in measured.items():
        w = worst[kind][0]
        print(f"  {kind:<32} {ref:>12,.0f} {ours:>12,.0f} {ours / ref:>7.3f}   {w:>12,.0f} {w / ref:>7.3f}")
    print(f"  ours: {reuse:.1%} of the later cells' routed samples reused (--reuse; measured on the mini: "
          f"{REUSE_MINI:.1%}); worst: none reused")
    n = [TEST_SIZES[d] for d in names]
    later = sum(n[j] * (T - 1 - j) for j in range(T))
    ref = (T + 1) * sum(n)
    need = 1 - (ref / 3 - 2 * sum(n)) / later
    print(f"  image-tower forwards reach 1/3 of the reference's only with >= {need:.1%} reused; the mini's per-sample "
          f"bound is {REUSE_PER_SAMPLE_BOUND_MINI:.1%} (ratio {work_counts(proto, order, REUSE_PER_SAMPLE_BOUND_MINI)['image-tower forwards'][0] / ref:.3f})")


def predict(m: dict, proto, order: str, jobs: int, reuse: float = 0.0) -> dict:
    names = order_datasets(proto, order)
    n = {d: TEST_SIZES[d] for d in names}
    prompts = {d: proto["datasets"][d]["num_classes"] * len(proto["datasets"][d]["templates"]) for d in names}
    ours = {"features (once per test set)": 0.0, "zero-shot text heads": 0.0, "adapted text heads": 0.0,
            "adapted image forwards": 0.0, "checkpoint loads": 0.0, "job start-up (model build)": 0.0}
    ref = {"image decoding": 0.0, "DDAS features": 0.0, "text heads": 0.0, "image forwards": 0.0,
           "checkpoint loads": 0.0}
    for d in names:
        ours["features (once per test set)"] += n[d] * (m["read_ours"] + m["image_plain"] + m["ddas"])
        ours["zero-shot text heads"] += prompts[d] * m["text_plain_ours"]
    for k in range(len(names)):  # after task k
        ours["checkpoint loads"] += m["load_ours"]
        for j, d in enumerate(names):
            learned = j <= k
            if learned:
                ours["adapted text heads"] += prompts[d] * m["text_adapted_ours"]  # recomputed per checkpoint
                kept = 1.0 if j == k else 1.0 - reuse  # reused groups are neither read nor forwarded
                ours["adapted image forwards"] += kept * n[d] * (m["read_ours"] + m["image_adapted_ours"])
            ref["checkpoint loads"] += m["load_reference"]
            ref["image decoding"] += n[d] * m["read_reference"]
            ref["DDAS features"] += n[d] * m["ddas"]
            ref["text heads"] += prompts[d] * m["text_adapted_reference" if learned else "text_plain_reference"]
            ref["image forwards"] += n[d] * m["image_adapted_reference" if learned else "image_plain"]
    ours["job start-up (model build)"] = jobs * (m["import_s"] + m["model_build_s"])
    return {"ours": ours, "reference": ref, "ours_total": sum(ours.values()), "reference_total": sum(ref.values())}


def fmt(s: float) -> str:
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m{s % 60:04.1f}s" if s >= 3600 else f"{int(s // 60)}m{s % 60:04.1f}s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--prompts", type=int, help="text prompts per measurement")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--order", default="order1")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (off: fp32, as the reference)")
    ap.add_argument("--json", help="also write measurements and predictions here")
    ap.add_argument("--reuse", type=float, default=REUSE_MINI,
                    help="fraction of later cells' routed samples whose features are reused (default: the mini's)")
    ap.add_argument("--counts-only", action="store_true", help="print the work-count table only")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    proto = load_protocol("mtil", None)
    print_counts(proto, args.order, args.reuse)
    if args.counts_only:
        return
    device = torch.device(args.device)
    for k, v in PRESETS["cuda" if device.type == "cuda" else "cpu"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    m = measure(args, device)
    names = order_datasets(proto, args.order)
    jobs = 2 * len(names) + 1  # features per test set, evaluate per checkpoint, zero-shot evaluation
    p = predict(m, proto, args.order, jobs, args.reuse)
    p_worst = predict(m, proto, args.order, jobs, 0.0)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"device {dev}; ViT-B/16 fp32{' (TF32)' if args.tf32 else ''}, batch {args.batch}, "
          f"{args.prompts} prompts, median of {args.repeats}")
    print("measured per image / per prompt (ms):")
    for k in ("image_plain", "image_adapted_ours", "image_adapted_reference", "ddas", "read_ours", "read_reference",
              "text_plain_ours", "text_plain_reference", "text_adapted_ours", "text_adapted_reference"):
        print(f"  {k:<26} {1000 * m[k]:9.3f}")
    print(f"  checkpoint load: ours {m['load_ours']:.3f} s ({m['checkpoint_bytes_ours'] / 2**20:.0f} MiB), "
          f"reference {m['load_reference']:.3f} s ({m['checkpoint_bytes_reference'] / 2**20:.0f} MiB); "
          f"job start-up {m['import_s']:.2f} s + model build {m['model_build_s']:.2f} s")
    print(f"throughput (images/s): zero-shot route {1 / m['image_plain']:.1f}, adapted route ours "
          f"{1 / m['image_adapted_ours']:.1f}, reference {1 / m['image_adapted_reference']:.1f}")
    print(f"predicted full MTIL {args.order} evaluation (11 x 11, {sum(TEST_SIZES[d] for d in names)} test images):")
    for side in ("reference", "ours"):
        parts = ", ".join(f"{k} {fmt(v)}" for k, v in p[side].items())
        print(f"  {side:<9} {fmt(p[side + '_total']):>12}   ({parts})")
    print(f"  speed-up {p['reference_total'] / p['ours_total']:.1f}x; ours with nothing reused "
          f"{fmt(p_worst['ours_total'])} (target: under 3 min in fp32 on an H100/H200)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "args": vars(args), "measured": m, **p}, indent=2))


if __name__ == "__main__":
    main()
