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

    python benchmarks/eval_mtil.py                 # GPU if present (batch 128), else a CPU preset (batch 8)
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


def predict(m: dict, proto, order: str, jobs: int) -> dict:
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
                ours["adapted text heads"] += prompts[d] * m["text_adapted_ours"]
                ours["adapted image forwards"] += n[d] * (m["read_ours"] + m["image_adapted_ours"])
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
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    for k, v in PRESETS["cuda" if device.type == "cuda" else "cpu"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    m = measure(args, device)
    proto = load_protocol("mtil", None)
    names = order_datasets(proto, args.order)
    jobs = 2 * len(names) + 1  # features per test set, evaluate per checkpoint, zero-shot evaluation
    p = predict(m, proto, args.order, jobs)
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
    print(f"  speed-up {p['reference_total'] / p['ours_total']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev, "args": vars(args), "measured": m, **p}, indent=2))


if __name__ == "__main__":
    main()
