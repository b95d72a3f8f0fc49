"""Class-incremental steps (SPEC 8): the dataset's view, one step's training, and evaluation after a step.

Training step s: the training images of step s's classes only, for `epochs` passes (one pass = num_batches + 1
optimizer steps, the reference's loop), a fresh AdamW, warm-up then cosine over the step's batches, logits over
the step's classes with targets shifted to them, the one shared router. Evaluation after step s: the test images of
every class seen so far, scored against the prompts of all of them; by default, as the reference, with gating noise
on and the training crop (both named options).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import CheckpointError, load_task_checkpoint, save_task_checkpoint
from ..data.batches import TaskData
from ..data.cil import CILView, cifar100_view, mini_view, names_in_order, tinyimagenet_view
from ..data.transforms import eval_transform, train_transform
from ..fsutil import write_json
from ..integrity import seal
from ..model.clip import tokenizer_for
from ..model.moe import ZERO_SHOT
from ..training.loop import ResumableRun
from ..training.task import TaskTrainConfig, train_task
from .build import adapted_model, apply_speed, resolve_device, zero_shot_model
from .record import cost, provenance, resume_identity, resume_path
from .specs import CILEvaluateSpec, CILPrepareSpec, CILStepSpec, Runtime

log = logging.getLogger(__name__)


def cil_prepare_step(spec: CILPrepareSpec, inputs: Sequence[str | Path], out: str | Path, workers: int = 0) -> Path:
    """The class-incremental view of `spec.dataset` from its prepared folder(s): the MTIL prepared CIFAR100 or
    TinyImageNet (for their verified raw data), or the mini's pooled datasets, in the spec's order."""
    by_name = {Path(p).name: p for p in inputs}
    missing = [d for d in spec.pool if d not in by_name]
    if missing:
        raise ValueError(f"the {spec.dataset} class-incremental view needs the prepared {', '.join(missing)}")
    folders = [by_name[d] for d in spec.pool]
    if spec.benchmark == "mini":
        return mini_view(folders, out)
    if spec.dataset == "cifar100":
        return cifar100_view(folders[0], out)
    if spec.dataset == "tinyimagenet":
        return tinyimagenet_view(folders[0], out, spec.curated, workers)
    raise ValueError(f"no class-incremental view for dataset {spec.dataset!r} (cifar100, tinyimagenet, mini)")


class _Shifted(Dataset):
    """A step's samples with labels shifted to 0.. (the training logits cover the step's classes only)."""

    def __init__(self, base: Dataset, first: int):
        self.base, self.first = base, first

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        return img, y - self.first


def step_task(spec: CILStepSpec, view: CILView) -> TaskData:
    """Step `spec.step` as a task to train on: its classes' names, the prompt, its training images (shifted labels)."""
    classes = list(spec.classes)
    if classes != list(range(classes[0], classes[0] + len(classes))):
        raise ValueError(f"step {spec.step}: its classes must be a contiguous block of remapped labels")
    train = _Shifted(view.subset("train", classes, spec.class_order), classes[0])
    names = names_in_order(view.classnames, spec.class_order, classes)
    return TaskData(f"{spec.dataset} step {spec.step}", names, [spec.prompt_template], train)


def cil_train_step(
    spec: CILStepSpec,
    runtime: Runtime,
    view_dir: str | Path,
    out: str | Path,
    prev: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train class-incremental step `spec.step` from step - 1's checkpoint (the shared router, both experts)."""
    start = time.time()
    if (prev is None) != (spec.step == 0):
        raise ValueError("step 0 starts from fresh adapters (no --prev); every later step needs --prev")
    device = resolve_device(spec.device)
    apply_speed(spec.speed)
    view = CILView(view_dir)
    model = adapted_model(spec, runtime, "cpu", init_seed=spec.seed)
    if prev is not None:
        meta = load_task_checkpoint(prev, model)
        if meta["task"] != spec.step - 1:
            raise CheckpointError(f"{prev} is the checkpoint of step {meta['task']}, step {spec.step} needs step {spec.step - 1}")
    task = step_task(spec, view)
    num_batches = math.ceil(len(task.train) / spec.batch_size)
    cfg = TaskTrainConfig(
        lr=spec.lr,
        iterations=spec.epochs * num_batches,  # the loop runs iterations + 1 steps, as the reference's
        batch_size=spec.batch_size,
        warmup=spec.warmup,
        weight_decay=spec.weight_decay,
        beta1=0.9,  # AdamW's defaults, as the reference
        beta2=0.999,
        label_smoothing=spec.label_smoothing,
        seed=spec.seed,
        freeze_top=0,  # no activate-freeze in the class-incremental setting
        shots=0,
        image_size=spec.image_size,
    )
    out = Path(out)
    run = ResumableRun(
        resume_path(out), resume_identity(spec, {"prev": prev, "view": Path(view_dir) / "meta.json"}),
        runtime.checkpoint_every,
    )
    counts = train_task(
        model, 0, task, tokenizer_for(model.backbone), cfg, device=device, resume=run,
        num_workers=runtime.num_workers, progress=progress,
    )
    trainable = sum(p.numel() for p in model.set_trainable(0))
    model.set_trainable(None)
    save_task_checkpoint(
        out, model, task=spec.step, dataset=task.name, counts=counts,
        extra={
            "kind_detail": "class-incremental step",
            "classes": list(spec.classes),
            "train_images": len(task.train),
            "optimizer_steps": cfg.iterations + 1,
            "cost": cost(start, device, trainable, elapsed=run.elapsed()),
            "resumed_at": run.resumed_at,
            **provenance(spec),
        },
    )
    run.discard()
    return out


class _EvalImages(Dataset):
    """Test samples through the evaluation transform; the training crop is drawn per sample from a fixed seed."""

    def __init__(self, base: Dataset, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, y = self.base[i]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.seed * 1_000_003 + i)
            return self.transform(img), y


@torch.no_grad()
def accuracy_after(
    model, tok, view: CILView, spec: CILEvaluateSpec, seen_steps: int, route: int, device, workers: int
) -> dict:
    """Top-1 on the test images of the classes of steps 0..seen_steps-1, overall and per step's classes."""
    classes = [c for s in spec.step_classes[:seen_steps] for c in s]
    data = view.subset("test", classes, spec.class_order)
    size = spec.image_size
    transform = train_transform(size) if spec.eval_transform == "train" else eval_transform(size)
    loader = DataLoader(_EvalImages(data, transform, spec.seed), batch_size=spec.batch_size, num_workers=workers)
    names = names_in_order(view.classnames, spec.class_order, classes)
    tokens = tokenizer_for(model.backbone)([spec.prompt_template.format(c=n) for n in names]).to(device)
    noisy = route != ZERO_SHOT and model.eval_noise
    text = None if noisy else model.encode_text(tokens, route, normalize=True)
    preds, labels = [], []
    for x, y in loader:
        if noisy:  # as the reference: the text features are recomputed, with fresh noise, for every batch
            text = model.encode_text(tokens, route, normalize=True)
        image = model.encode_image(x.to(device), route, normalize=True)
        preds.append((image @ text.T).argmax(dim=1).cpu())
        labels.append(y)
    pred, label = torch.cat(preds), torch.cat(labels)
    correct = pred == label
    per_step = []
    for s in spec.step_classes[:seen_steps]:
        mask = torch.isin(label, torch.tensor(list(s)))
        per_step.append(100.0 * float(correct[mask].float().mean()) if mask.any() else None)
    return {
        "after_step": seen_steps - 1,
        "classes": len(classes),
        "accuracy": 100.0 * float(correct.float().mean()),
        "per_step": per_step,
        "correct": int(correct.sum()),
        "total": len(label),
    }


def cil_evaluate_step(
    spec: CILEvaluateSpec,
    runtime: Runtime | None,
    view_dir: str | Path,
    out: str | Path,
    checkpoint: str | Path | None = None,
) -> Path:
    """Evaluate step `spec.step`'s checkpoint on every class seen so far, or (spec.step None, no checkpoint)
    zero-shot CLIP after every step, on the same images with the same prompts."""
    start = time.time()
    if (checkpoint is None) != (spec.step is None):
        raise ValueError("give a checkpoint exactly when evaluating a step (zero-shot CLIP needs none)")
    device = resolve_device(spec.device)
    apply_speed(spec.speed)
    view = CILView(view_dir)
    if spec.step is None:
        model, route, steps = zero_shot_model(spec.backbone, spec.speed, runtime, device), ZERO_SHOT, range(len(spec.step_classes))
    else:
        model = adapted_model(spec, runtime, "cpu")
        meta = load_task_checkpoint(checkpoint, model)
        if meta["task"] != spec.step:
            raise CheckpointError(f"{checkpoint} is the checkpoint of step {meta['task']}, not of step {spec.step}")
        model.eval_noise = spec.eval_noise
        route, steps = 0, [spec.step]
    model.set_trainable(None)
    model.to(device).eval()
    tok = tokenizer_for(model.backbone)
    torch.manual_seed(spec.seed)  # the gating noise at test time (a reference quirk) is drawn from a fixed seed
    workers = runtime.num_workers if runtime is not None else 0
    results = [accuracy_after(model, tok, view, spec, s + 1, route, device, workers) for s in steps]
    for r in results:
        log.info("after step %d: %.2f%% on %d classes", r["after_step"], r["accuracy"], r["classes"])
    write_json(out, seal({"step": spec.step, "results": results, "cost": cost(start, device), **provenance(spec)}))
    return Path(out)
