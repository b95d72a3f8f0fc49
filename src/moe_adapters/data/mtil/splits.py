"""The protocol's splits: the seeded 80/20 random split and its digest, and the few-shot selection rule."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..batches import TrainBatches


def random_split_indices(n: int, seed: int = 42, fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's split: random_split(range(n), [int(f*n), n-int(f*n)], Generator().manual_seed(seed))."""
    n_train = int(fraction * n)
    a, b = torch.utils.data.random_split(
        range(n), [n_train, n - n_train], generator=torch.Generator().manual_seed(seed)
    )
    return np.asarray(a.indices, dtype=np.int64), np.asarray(b.indices, dtype=np.int64)


def index_digest(train: np.ndarray, test: np.ndarray) -> str:
    """SHA-256 of the index lists (train then test, little-endian int64), as pinned in mtil_data.yaml."""
    return hashlib.sha256(np.concatenate([train, test]).astype("<i8").tobytes()).hexdigest()


def few_shot_indices(labels: np.ndarray, shots: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """Positions in the train split of the first `shots` images per class met in one pass of the training loader.

    The pass is the project's deterministic epoch-0 order (data.TrainBatches with the run's seed), so this is the
    selection train.few_shot_subset makes, grouped by class in order of first appearance. The reference scans a
    DataLoader(shuffle=True) driven by the global RNG: same rule, not the same images bit for bit.
    """
    batches = TrainBatches(range(len(labels)), None, batch_size, seed)
    kept: dict[int, list[int]] = {}
    for it in range(batches.batches_per_epoch):
        for i in batches.indices(it)[0]:
            got = kept.setdefault(int(labels[i]), [])
            if len(got) < shots:
                got.append(i)
    return np.asarray([i for v in kept.values() for i in v], dtype=np.int64)
