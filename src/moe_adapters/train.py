"""Training one task (SPEC section 4) and one DDAS autoencoder, both resumable and bit-exact on restart."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import CheckpointError, safe_torch_load, save_torch
from .data import TaskData, TrainBatches, few_shot_subset, train_transform
from .ddas import Autoencoder, ae_lr
from .model import MoECLIP

log = logging.getLogger(__name__)


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps ((step+1)/warmup), then cosine from base_lr to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def progress_bar(total: int, initial: int, desc: str):
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        mininterval=0.5 if tty else 10,
        ascii=not tty,
    )


class ResumableRun:
    """Saves a run's full state atomically every N steps and restores it, so a killed run ends identically.

    The state holds the step, the trained tensors, the optimizer, the RNG states and any extra tensors;
    it is read back with weights_only=True. A state written for another run (other identity) is ignored.
    """

    def __init__(self, path: str | Path | None, identity: dict, every: int):
        self.path = Path(path) if path else None
        self.identity = identity
        self.every = every

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
        if self.path is None or not self.path.exists():
            return 0, {}
        try:
            state = safe_torch_load(self.path)
        except CheckpointError as e:
            log.warning("ignoring unreadable resume state %s: %s", self.path, e)
            return 0, {}
        if state.get("identity") != self.identity:
            log.warning("ignoring resume state %s: it belongs to another run", self.path)
            return 0, {}
        module.load_state_dict(state["module"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        log.info("resuming %s from step %d", self.path, state["step"])
        return int(state["step"]), state.get("extra", {})

    def maybe_save(self, step: int, total: int, module_state: Callable[[], dict], optimizer, extra: dict) -> None:
        """Save after `step` steps when it is a multiple of `every` (module_state is only called then)."""
        if self.path is None or self.every <= 0 or step % self.every or step >= total:
            return
        save_torch(
            self.path,
            {
                "identity": self.identity,
                "step": step,
                "module": module_state(),
                "optimizer": optimizer.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "extra": extra,
            },
        )

    def discard(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


@dataclass(frozen=True)
class TaskTrainConfig:
    """Hyper-parameters of one task's training; the defaults are the paper's full-shot values."""

    lr: float
    iterations: int = 1000
    batch_size: int = 64
    warmup: int = 100
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    label_smoothing: float = 0.2
    seed: int = 42
    freeze_top: int = 2  # activate-freeze: experts per layer and tower frozen after the task; 0 turns it off
    few_shot: int = 0  # images per class; 0 is full-shot
    checkpoint_every: int = 100
    num_workers: int = 0
    image_size: int = 224


def task_batches(data: TaskData, cfg: TaskTrainConfig) -> TrainBatches:
    """The task's training batches: the augmented train split, or its fixed few-shot subset."""
    full = TrainBatches(
        data.train, train_transform(cfg.image_size), cfg.batch_size, cfg.seed, cfg.num_workers
    )
    if cfg.few_shot <= 0:
        return full
    subset = few_shot_subset(full, cfg.few_shot, len(data.classnames))
    return TrainBatches(subset, None, cfg.batch_size, cfg.seed + 1, 0)


def train_task(
    model: MoECLIP,
    route: int,
    data: TaskData,
    tokenizer: Callable,
    cfg: TaskTrainConfig,
    *,
    device: str | torch.device = "cpu",
    state_path: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Train router `route` and the unfrozen experts on one task; returns the task's selection counts.

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
    batches = task_batches(data, cfg)
    texts = tokenizer(data.prompts(0)).to(device)
    logit_scale = model.clip.logit_scale.exp().detach()
    total = cfg.iterations + 1
    run = ResumableRun(
        state_path,
        {"kind": "task", "route": route, "dataset": data.name, **asdict(cfg)},
        cfg.checkpoint_every,
    )
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
            on_step(it, float(loss.detach()))
        run.maybe_save(it + 1, total, model.moe_state_dict, opt, {"counts": counts})
    if bar is not None:
        bar.close()
    model.eval()
    model.set_trainable(None)
    if cfg.freeze_top > 0:
        model.freeze_most_selected(counts, cfg.freeze_top)
    run.discard()
    return counts


@dataclass(frozen=True)
class AETrainConfig:
    """DDAS autoencoder training: Adam, step-decayed lr, batch 64, the CLIP train transform."""

    iterations: int = 300
    lr: float = 0.01
    weight_decay: float = 1e-4
    batch_size: int = 64
    decay_every_epochs: int = 10
    seed: int = 42
    checkpoint_every: int = 100
    num_workers: int = 0
    image_size: int = 224


def train_autoencoder(
    ae: Autoencoder,
    extractor: nn.Module,
    batches: TrainBatches,
    cfg: AETrainConfig,
    *,
    name: str,
    device: str | torch.device = "cpu",
    state_path: str | Path | None = None,
    progress: bool = True,
) -> list[float]:
    """Fit one autoencoder to the sigmoid features of a dataset (iterations+1 steps, as the reference)."""
    torch.manual_seed(cfg.seed)
    ae.to(device).train()
    extractor.to(device).eval()
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    total = cfg.iterations + 1
    run = ResumableRun(state_path, {"kind": "autoencoder", "name": name, **asdict(cfg)}, cfg.checkpoint_every)
    start, _ = run.restore(ae, opt)
    losses: list[float] = []
    bar = progress_bar(total, start, f"autoencoder {name}") if progress else None
    for it, images, _ in batches.iterate(start, total):
        lr = ae_lr(cfg.lr, it, batches.batches_per_epoch, cfg.decay_every_epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        with torch.no_grad():
            feats = extractor(images.to(device, non_blocking=True))
        loss = F.mse_loss(ae(feats), feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.5f}", refresh=False)
        run.maybe_save(it + 1, total, ae.state_dict, opt, {})
    if bar is not None:
        bar.close()
    ae.eval()
    run.discard()
    return losses
