"""Learning-rate schedules of the reference (pure functions of the step)."""

from __future__ import annotations

import math


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps ((step+1)/warmup), then cosine from base_lr to 0 at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base_lr


def ae_lr(base_lr: float, iteration: int, num_batches: int, decay_every: int) -> float:
    """The reference's step decay: x0.1 every `decay_every` passes over the data (epoch = it // batches)."""
    return base_lr * (0.1 ** ((iteration // max(num_batches, 1)) // decay_every))
