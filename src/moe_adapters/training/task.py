"""Training one task (SPEC 3-4): router t and the unfrozen experts, then activate-freeze."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.batches import TaskData, TrainBatches, few_shot_subset
from ..data.transforms import train_transform
from ..model.clip import MoECLIP
from .loop import ResumableRun, progress_bar
from .schedules import cosine_lr


@dataclass(frozen=True)
class TaskTrainConfig:
    """Hyper-parameters of one task's training (built from the run config; see steps.specs.TaskSpec)."""

    lr: float
    iterations: int
    batch_size: int
    warmup: int
    weight_decay: float
    beta1: float
    beta2: float
    label_smoothing: float
    seed: int
    freeze_top: int  # activate-freeze: experts per layer and tower frozen after the task; 0 turns it off
    shots: int  # images per class; 0 is full-shot
    image_size: int


def task_batches(data: TaskData, cfg: TaskTrainConfig, num_workers: int = 0) -> TrainBatches:
    """The task's training batches: the augmented train split, or its fixed few-shot subset."""
    full = TrainBatches(data.train, train_transform(cfg.image_size), cfg.batch_size, cfg.seed, num_workers)
    if cfg.shots <= 0:
        return full
    subset = few_shot_subset(full, cfg.shots, len(data.classnames))
    return TrainBatches(subset, None, cfg.batch_size, cfg.seed + 1, 0)


def train_task(
    model: MoECLIP,
    route: int,
    data: TaskData,
    tokenizer: Callable,
    cfg: TaskTrainConfig,
    *,
    device: str | torch.device = "cpu",
    resume: ResumableRun | None = None,
    num_workers: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float, torch.optim.Optimizer], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Train router `route` and the unfrozen experts on one task; returns the task's selection counts.

    `on_step(iteration, loss, optimizer)` is called after every optimizer step (grads still in place).

    Afterwards the `freeze_top` most selected experts of every layer and tower join the frozen set.
    The loop runs iterations+1 steps, as the reference does (its last step has learning rate 0).
    """
    torch.manual_seed(cfg.seed)
    model.to(device)
    params = model.set_trainable(route)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=True
    )
    counts = model.new_counts()
    batches = task_batches(data, cfg, num_workers)
    texts = tokenizer(data.prompts(0)).to(device)
    logit_scale = model.clip.logit_scale.exp().detach()
    total = cfg.iterations + 1
    run = resume or ResumableRun(None, {}, 0)
    start, extra = run.restore(model, opt)
    if extra:
        counts = {k: v.to(device) for k, v in extra["counts"].items()}
    model.train()
    bar = progress_bar(total, start, f"train {data.name}") if progress else None
    for it, images, labels in batches.iterate(start, total):
        lr = cosine_lr(it, cfg.lr, cfg.warmup, cfg.iterations)
        for g in opt.param_groups:
            g["lr"] = lr
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        text = model.encode_text(texts, route, counts["text"], normalize=True)
        image = model.encode_image(images, route, counts["visual"], normalize=True)
        loss = F.cross_entropy(logit_scale * image @ text.T, labels, label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
        if on_step is not None:
            on_step(it, float(loss.detach()), opt)
        run.maybe_save(it + 1, total, model.moe_state_dict, opt, {"counts": counts})
    if bar is not None:
        bar.close()
    model.eval()
    model.set_trainable(None)
    if cfg.freeze_top > 0:
        model.freeze_most_selected(counts, cfg.freeze_top)
    return counts


