"""One training iteration: ours against a faithful baseline of the reference (benchmarks/reference_baseline.py).

Both run in the same process, on the same weights (the baseline shares our backbone's tensors and copies our
experts and routers), on the same batch and prompts, alternating step by step so that a busy machine slows
both alike; the medians are compared.

Ours: MoECLIP (open_clip ViT, batch-first) as the training loop runs it: selections counted, batched experts
(only the experts some sample chose), text cut after the longest prompt's end token, sequence-first contiguous
input to the attention projections, the last block of each tower computed only at the positions that reach the
output (class token; the text's token 0 and end token). Every one of these is exact.
Baseline: the reference's computation (see reference_baseline.py for what it does and what it leaves out):
sequence-first OpenAI-CLIP blocks, sparse dispatch by gather and index_add (every expert called, empty ones
dropped), the full 77-token text context, text features of every class recomputed each step.

Before timing, one pass of each in eval mode (no dropout) with the gating noise on, drawn from the same seed,
checks that both give the same loss and the same gradient for every trainable tensor (and no gradient for the
same experts); then a few optimizer steps of each, the same way, check that every tensor's change and its AdamW
state (step count, both moments) agree, so the two stay the same across a run. Timing: full steps in train mode
(dropout and noise on): forward, zero_grad, backward, AdamW. Besides the wall-time medians it prints the CPU time
the process used per step (less stretched by other jobs on a shared machine) and the FLOPs of one step of each
path (torch.utils.flop_counter: matmuls, convolutions, attention), which no machine changes.

    python benchmarks/train_step.py                       # CPU preset: ViT-B/16, 4 images, 10 prompts, 2 threads
    python benchmarks/train_step.py --preset gpu          # paper: batch 64, 100 and 397 classes, fp32, peak memory
    python benchmarks/train_step.py --paper-flops         # those shapes' FLOPs, counted on this device (no GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_baseline import ReferenceCLIP  # noqa: E402

PRESETS = {
    # the issue's CPU shapes
    "cpu": {"device": "cpu", "batch": 4, "classes": [10], "repeats": 3, "warmup": 1, "threads": 2},
    # the paper's: batch 64, the 100 classes of Aircraft/CIFAR100 and the 397 of SUN397
    "gpu": {"device": "cuda", "batch": 64, "classes": [100, 397], "repeats": 5, "warmup": 2, "threads": None},
}
WORDS = (
    "abbey airport alley amphitheater amusement arcade aquarium arch art gallery studio assembly line attic "
    "auditorium bakery shop balcony ballroom bamboo forest bank vault banquet hall bar barn baseball field "
    "basement basilica bathroom bayou beauty salon bedroom berth biology laboratory boardwalk boat deck "
    "bookstore botanical garden bowling alley boxing ring bridge building facade bullring burial chamber"
).split()
LABEL_SMOOTHING = 0.2


def class_names(n: int, seed: int = 0) -> list[str]:
    """Class names of one to three words (a SUN397-like length)."""
    g = torch.Generator().manual_seed(seed)
    names = []
    for i in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        idx = torch.randint(0, len(WORDS), (k,), generator=g).tolist()
        names.append(" ".join(WORDS[j] for j in idx) + f" {i}")
    return names


def build(model_name: str, route: int, device):
    """Our model with trained-looking adapters and the frozen set of `route` earlier tasks, and the baseline."""
    from moe_adapters.model.clip import BackboneSpec, MoECLIP, create_backbone, tokenizer_for
    from moe_adapters.steps.build import paper_moe_spec

    spec = BackboneSpec(model_name, True, None)
    ours = MoECLIP(create_backbone(spec), paper_moe_spec(), spec, init_seed=42)
    ours.randomize_adapters(0.02, seed=1)  # non-zero up-projections and routers, as after training
    g = torch.Generator().manual_seed(3)
    for frozen in (ours.frozen_visual, ours.frozen_text):  # top-2 of each earlier task, as activate-freeze leaves it
        for layer in range(frozen.shape[0]):
            frozen[layer, torch.randperm(frozen.shape[1], generator=g)[: 2 * route]] = True
    ours.to(device)
    ref = ReferenceCLIP(ours).to(device)
    return ours, ref, tokenizer_for(spec)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> int:
    """Multiply-add FLOPs (x2) of the matmuls, convolutions and attention that fn() runs, forward and backward."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):  # the CPU kernels have no formula of their own

        def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

        def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = forward
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = backward
    with fc.FlopCounterMode(display=False, custom_mapping=mapping) as mode:
        fn()
    return mode.get_total_flops()


def paper_flops(ours, ref, tok, step_ours, step_ref, size, device, batch=64, classes=(100, 397)) -> None:
    """FLOPs of one training step at the paper's batch and class counts, ours and the baseline, without running
    the batch of 64: F(64, C) = F(4, C) + 15 * (F(8, 10) - F(4, 10)). Exact for the arithmetic counted: the image
    tower, the loss's matmul and the experts (top-2 per sample) grow linearly with the batch, the text tower not
    at all (checked below: the difference of batch 8 and 4 is the same at 10 and at 100 classes, to 1%; the
    baseline's differed by 0.25%, ours by less than 0.01%)."""
    ours.train()
    ref.train()
    g = torch.Generator().manual_seed(11)
    imgs = {b: torch.randn(b, 3, *size, generator=g).to(device) for b in (4, 8)}
    heads = {}
    for n in (10, *classes):
        tokens = tok([f"a photo of a {c}." for c in class_names(n)]).to(device)
        heads[n] = {b: torch.randint(0, n, (b,), generator=g).to(device) for b in (4, 8)}, tokens
    f = {}
    for path, step in (("reference", step_ref), ("ours", step_ours)):
        for n, b in ((10, 4), (10, 8), (classes[0], 4), (classes[0], 8), *((c, 4) for c in classes[1:])):
            labels, tokens = heads[n][0][b], heads[n][1]
            f[path, n, b] = count_flops(lambda: step(labels, tokens, batch=imgs[b]))  # noqa: B023 (called at once)
    print(f"{ours.backbone.name} FLOPs of one training step (forward+backward; matmuls, convolutions, attention), "
          f"from steps at batch 4 and 8, extrapolated to batch {batch}")
    print(f"{'classes':>7} {'reference TFLOP':>16} {'ours TFLOP':>11} {'ratio':>6}")
    for path in ("reference", "ours"):
        per4 = (f[path, 10, 8] - f[path, 10, 4], f[path, classes[0], 8] - f[path, classes[0], 4])
        print(f"{path}: 4 more images, {per4[0] / 1e9:.1f} G at 10 classes, {per4[1] / 1e9:.1f} G at {classes[0]}")
        if abs(per4[0] - per4[1]) > 1e-2 * per4[0]:
            raise SystemExit(f"{path}: the image part is not independent of the classes: {per4}")
    for n in classes:
        t = {p: f[p, n, 4] + (batch - 4) / 4 * (f[p, 10, 8] - f[p, 10, 4]) for p in ("reference", "ours")}
        print(f"{n:>7} {t['reference'] / 1e12:>16.2f} {t['ours'] / 1e12:>11.2f} {t['reference'] / t['ours']:>5.2f}x")


def tensor_bytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default=None, help="default: gpu when CUDA is available, else cpu")
    ap.add_argument("--device")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--classes", type=int, nargs="+")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--route", type=int, default=3, help="the task trained (its earlier tasks' experts are frozen)")
    ap.add_argument("--check-steps", type=int, default=3, help="optimizer steps of the exact-across-the-run check")
    ap.add_argument("--tf32", action="store_true", help="allow TF32 (off: fp32, as the reference)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--paper-flops", action="store_true",
                    help="only count the FLOPs of one step at the paper's shapes (batch 64; 100 and 397 classes) on "
                         "this device, from steps at batch 4 and 8 (the image tower's FLOPs grow linearly with the "
                         "batch), and exit: what an arithmetic-bound GPU would show, machine-independent")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preset = PRESETS[args.preset or ("gpu" if torch.cuda.is_available() else "cpu")]
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    device = torch.device(args.device)
    ours, ref, tok = build(args.model, args.route, device)
    route = args.route

    params = ours.set_trainable(route)
    names = {id(p): n for n, p in ours.named_parameters()}
    ref_params = ref.trainable(ours.frozen_visual.cpu(), ours.frozen_text.cpu())
    ref_named = ref.named_like_ours()
    fused = device.type in ("cuda", "cpu")
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, fused=fused)  # as task.py
    ref_opt = torch.optim.AdamW(ref_params, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0)  # as finetune.py
    logit_scale = ours.clip.logit_scale.exp().detach()
    g = torch.Generator().manual_seed(2)
    size = ours.clip.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = torch.randn(args.batch, 3, *size, generator=g).to(device)
    heads = {}
    for n_cls in args.classes:
        labels = torch.randint(0, n_cls, (args.batch,), generator=g).to(device)
        tokens = tok([f"a photo of a {c}." for c in class_names(n_cls)]).to(device)
        heads[n_cls] = (labels, tokens)

    def step_ours(labels, tokens, optimizer=True, batch=None):
        counts = ours.new_counts()
        text = ours.encode_text(tokens, route, counts["text"], normalize=True)
        image = ours.encode_image(images if batch is None else batch, route, counts["visual"], normalize=True)
        loss = F.cross_entropy(logit_scale * image @ text.T, labels, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer:
            opt.step()
        return loss

    def step_ref(labels, tokens, optimizer=True, batch=None):
        loss = ref.loss(images if batch is None else batch, tokens, labels, route, noisy=True,
                        label_smoothing=LABEL_SMOOTHING)
        ref_opt.zero_grad()
        loss.backward()
        if optimizer:
            ref_opt.step()
        return loss

    if args.paper_flops:
        paper_flops(ours, ref, tok, step_ours, step_ref, size, device)
        return

    # 1. Same loss, same gradients: eval mode (no dropout: the two paths draw their masks differently), the
    # gating noise on and drawn from the same seed in the same order (text tower, then image tower).
    checks = {}
    for n_cls, (labels, tokens) in heads.items():
        ours.eval()
        ours.eval_noise = True
        ref.eval()
        torch.manual_seed(5)
        loss_o = step_ours(labels, tokens, optimizer=False)
        torch.manual_seed(5)
        loss_r = step_ref(labels, tokens, optimizer=False)
        worst, worst_name, total_num, total_den = 0.0, None, 0.0, 0.0
        for p in params:
            name = names[id(p)]
            q = ref_named[name]
            if (p.grad is None) != (q.grad is None):
                raise SystemExit(f"{name}: a gradient in one path only")
            if p.grad is None:
                continue
            r = rel(p.grad, q.grad)
            total_num += float((p.grad.double() - q.grad.double()).norm() ** 2)
            total_den += float(q.grad.double().norm() ** 2)
            if r > worst:
                worst, worst_name = r, name
        others = [n for n, q in ref_named.items() if q.grad is not None and n not in {names[id(p)] for p in params}]
        if others:
            raise SystemExit(f"the baseline has gradients ours does not train: {others[:3]}")
        checks[n_cls] = {
            "loss_ours": float(loss_o.detach()), "loss_reference": float(loss_r.detach()),
            "loss_rel_diff": rel(loss_o.detach(), loss_r.detach()),
            "grad_rel_diff_all": (total_num / max(total_den, 1e-300)) ** 0.5,
            "grad_rel_diff_worst_tensor": worst, "worst_tensor": worst_name,
            "tensors_with_grad": sum(p.grad is not None for p in params),
            "tensors_without_grad": sum(p.grad is None for p in params),
        }

    # 2. Several optimizer steps, the same way (eval mode, noise from the same seeds): both paths start from the
    # same numbers, and after the steps each tensor's change, its AdamW moments and step count must agree (and
    # an expert without a gradient in every step must have no state in either).
    labels, tokens = heads[args.classes[0]]
    before = {names[id(p)]: p.detach().clone() for p in params}
    for i in range(args.check_steps):
        torch.manual_seed(100 + i)
        step_ours(labels, tokens)
        torch.manual_seed(100 + i)
        step_ref(labels, tokens)
    moved = {"params": [0.0, 0.0, 0.0, None], "change": [0.0, 0.0, 0.0, None], "exp_avg": [0.0, 0.0, 0.0, None], "exp_avg_sq": [0.0, 0.0, 0.0, None]}
    with_state = 0
    for p in params:
        name = names[id(p)]
        q = ref_named[name]
        so, sr = opt.state.get(p, {}), ref_opt.state.get(q, {})
        if bool(so) != bool(sr):
            raise SystemExit(f"{name}: AdamW state in one path only")
        pairs = {"params": (p.detach(), q.detach()), "change": (p.detach() - before[name], q.detach() - before[name])}
        if so:
            with_state += 1
            if int(so["step"]) != int(sr["step"]):
                raise SystemExit(f"{name}: AdamW step count {int(so['step'])} against {int(sr['step'])}")
            pairs.update({k: (so[k], sr[k]) for k in ("exp_avg", "exp_avg_sq")})
        for k, (a, b) in pairs.items():
            m = moved[k]
            m[0] += float((a.double() - b.double()).norm() ** 2)
            m[1] += float(b.double().norm() ** 2)
            r = rel(a, b)
            if r > m[2]:
                m[2], m[3] = r, name
    steps_check = {
        k: {"rel_diff_all": (m[0] / max(m[1], 1e-300)) ** 0.5, "rel_diff_worst_tensor": m[2], "worst_tensor": m[3]}
        for k, m in moved.items()
    }
    steps_check["tensors_with_state"] = with_state
    ours.eval_noise = False
    ours.train()
    ref.train()

    # What each path computes, independent of the machine: FLOPs of one training step (the ratio a purely
    # arithmetic-bound machine would show).
    flops = {}
    for n_cls, (labels, tokens) in heads.items():
        flops[n_cls] = {"reference": count_flops(lambda: step_ref(labels, tokens)),  # noqa: B023 (called at once)
                        "ours": count_flops(lambda: step_ours(labels, tokens))}  # noqa: B023

    # 3. Timing, alternating baseline and ours step by step.
    timings = {}
    for n_cls, (labels, tokens) in heads.items():
        times = {"reference": [], "ours": []}
        cpu = {"reference": [], "ours": []}
        peaks = {"reference": 0, "ours": 0}
        for i in range(args.warmup + args.repeats):
            for path, step in (("reference", step_ref), ("ours", step_ours)):
                sync(device)
                if device.type == "cuda":
                    before = torch.cuda.memory_allocated(device)
                    torch.cuda.reset_peak_memory_stats(device)
                t0, c0 = time.perf_counter(), time.process_time()
                step(labels, tokens)
                sync(device)
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if i >= args.warmup:
                    times[path].append(dt)
                    cpu[path].append(dc)
                    if device.type == "cuda":
                        peaks[path] = max(peaks[path], torch.cuda.max_memory_allocated(device) - before)
        timings[n_cls] = {p: statistics.median(t) for p, t in times.items()}
        timings[n_cls]["all"] = times
        timings[n_cls]["cpu"] = {p: statistics.median(t) for p, t in cpu.items()}
        timings[n_cls]["all_cpu"] = cpu
        if device.type == "cuda":
            # what one process of that path alone would hold: the backbone, its own adapters, gradients and
            # optimizer state, plus what the step allocated above what was resident
            backbone = tensor_bytes(ours.clip.state_dict().values())
            own = {
                "ours": tensor_bytes(ours.moe_state_dict().values())
                + tensor_bytes(p.grad for p in params)
                + tensor_bytes(t for s in opt.state.values() for t in s.values()),
                "reference": tensor_bytes(ref_named.values())
                + tensor_bytes(p.grad for p in ref_params)
                + tensor_bytes(t for s in ref_opt.state.values() for t in s.values()),
            }
            timings[n_cls]["peak_bytes"] = {p: peaks[p] + backbone + own[p] for p in peaks}

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    print(f"device {dev}; {args.model} fp32{' (TF32)' if args.tf32 else ''}, batch {args.batch}, "
          f"22 experts top-2 in all {len(ours.visual_moe) + len(ours.text_moe)} blocks, training route {route}; "
          f"median of {args.repeats} alternating steps after {args.warmup} warm-up")
    head = f"{'classes':>7} {'reference s/step':>17} {'ours s/step':>12} {'speed-up':>9}"
    if device.type == "cuda":
        head += f" {'ref peak GB':>12} {'ours peak GB':>13}"
    print(head + "   loss rel.diff  grad rel.diff (all, worst tensor)")
    rows = []
    for n in args.classes:
        t, c = timings[n], checks[n]
        line = f"{n:>7} {t['reference']:>17.3f} {t['ours']:>12.3f} {t['reference'] / t['ours']:>8.2f}x"
        if device.type == "cuda":
            line += f" {t['peak_bytes']['reference'] / 2**30:>12.2f} {t['peak_bytes']['ours'] / 2**30:>13.2f}"
        print(line + f"   {c['loss_rel_diff']:.1e}        {c['grad_rel_diff_all']:.1e}, {c['grad_rel_diff_worst_tensor']:.1e}")
        rows.append({"classes": n, "reference_s": t["reference"], "ours_s": t["ours"],
                     "speedup": t["reference"] / t["ours"], "all_s": t["all"],
                     "cpu_s": t["cpu"], "all_cpu_s": t["all_cpu"], "flops": flops[n],
                     "peak_bytes": t.get("peak_bytes"), **c})
    for n in args.classes:
        f = flops[n]
        print(f"{n:>7} classes, FLOPs per step (forward+backward): reference {f['reference'] / 1e9:.1f} G, ours "
              f"{f['ours'] / 1e9:.1f} G, {f['reference'] / f['ours']:.2f}x")
    if device.type == "cpu":  # a busy machine stretches wall time; the CPU time the process used less so
        for n in args.classes:
            c = timings[n]["cpu"]
            print(f"{n:>7} classes, CPU time (all threads) per step: reference {c['reference']:.3f} s, ours "
                  f"{c['ours']:.3f} s, {c['reference'] / c['ours']:.2f}x")
    print(f"gradients: {checks[args.classes[0]]['tensors_with_grad']} trainable tensors with one, "
          f"{checks[args.classes[0]]['tensors_without_grad']} without (experts no sample chose), the same in both")
    print(f"after {args.check_steps} AdamW steps ({steps_check['tensors_with_state']} tensors with state, the same "
          "in both), rel. diff (all, worst tensor): "
          + "; ".join(f"{k} {v['rel_diff_all']:.1e}, {v['rel_diff_worst_tensor']:.1e}"
                      for k, v in steps_check.items() if k != "tensors_with_state"))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"device": dev, "args": vars(args), "rows": rows, "steps_check": steps_check}, indent=2))
    bad = [r for r in rows if max(r["loss_rel_diff"], r["grad_rel_diff_worst_tensor"]) > 1e-5]
    if bad:
        raise SystemExit("the two paths disagree beyond 1e-5 relative")
    # The parameters, tensor by tensor, and both moments over all tensors. The change itself is printed, not
    # asserted: AdamW's first steps move every element by about lr * sign(grad), so a gradient element at the
    # rounding level (relative to its tensor) can move either way in either path.
    sc = steps_check
    if sc["params"]["rel_diff_worst_tensor"] > 1e-5 or max(sc[k]["rel_diff_all"] for k in ("exp_avg", "exp_avg_sq")) > 1e-5:
        raise SystemExit("after several optimizer steps the two paths disagree beyond 1e-5 relative")


if __name__ == "__main__":
    main()
