"""Training one DDAS autoencoder (SPEC 5): Adam on the sigmoid features of a dataset, the reference's step decay."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import TrainBatches
from ..model.ddas import Autoencoder
from .loop import ResumableRun, progress_bar
from .schedules import ae_lr


@dataclass(frozen=True)
class AETrainConfig:
    """DDAS autoencoder training: Adam, step-decayed lr (built from the run config; see steps.specs)."""

    iterations: int
    lr: float
    weight_decay: float
    decay_every_epochs: int
    seed: int


def train_autoencoder(
    ae: Autoencoder,
    extractor: nn.Module,
    batches: TrainBatches,
    cfg: AETrainConfig,
    *,
    name: str,
    device: str | torch.device = "cpu",
    resume: ResumableRun | None = None,
    decay_batches: int | None = None,
    progress: bool = True,
) -> list[float]:
    """Fit one autoencoder to the sigmoid features of a dataset (iterations+1 steps, as the reference).

    The step decay's epoch is iteration // `decay_batches` (default: the batches of `batches`); the reference's
    few-shot autoencoders still count epochs of the full train loader while drawing from a 5-shot subset.
    """
    torch.manual_seed(cfg.seed)
    ae.to(device).train()
    extractor.to(device).eval()
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    total = cfg.iterations + 1
    run = resume or ResumableRun(None, {}, 0)
    start, _ = run.restore(ae, opt)
    per_epoch = decay_batches or batches.batches_per_epoch
    losses: list[float] = []
    bar = progress_bar(total, start, f"autoencoder {name}") if progress else None
    for it, images, _ in batches.iterate(start, total):
        lr = ae_lr(cfg.lr, it, per_epoch, cfg.decay_every_epochs)
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
    return losses
