"""Training data: image arrays as datasets, tasks, and deterministic, resumable batch iteration."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array [N, H, W, 3] (or [N, H, W]) with integer labels; yields PIL images."""

    def __init__(self, images: np.ndarray, labels: Sequence[int]):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 [N,H,W(,3)], got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return Image.fromarray(self.images[i]), int(self.labels[i])


@dataclass
class TaskData:
    """One task of a benchmark to train on: its name, class names, prompt templates and its train split."""

    name: str
    classnames: list[str]
    templates: list[str]
    train: Dataset
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.templates or any("{c}" not in t for t in self.templates):
            raise ValueError(f"{self.name}: every prompt template must contain {{c}}")
        if len(set(self.classnames)) != len(self.classnames):
            raise ValueError(f"{self.name}: duplicate class names")

    def prompts(self, template_index: int | None = 0) -> list[str]:
        """templates[i] filled with every class name (training uses templates[0])."""
        return [self.templates[template_index].format(c=c) for c in self.classnames]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_033 + position) % (2**63 - 1)


class SeededTransform(Dataset):
    """Applies a random transform under a per-sample seed, so augmentations do not depend on workers or resumes."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        img, label = self.base[index]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed also seeds every device
            x = self.transform(img)
        return x, label


class TrainBatches:
    """Batches for iteration `it` of a run: epoch = it // batches_per_epoch, a fresh seeded shuffle per epoch.

    The loader is re-created when exhausted, as the reference does; the last batch of an epoch may be short.
    Everything is a function of (seed, iteration), so a resumed run sees exactly the same batches.
    """

    def __init__(
        self,
        dataset: Dataset,
        transform: Callable | None,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
    ):
        if len(dataset) == 0:
            raise ValueError("cannot train on an empty dataset")
        self.dataset = dataset
        self.transform = transform
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.batches_per_epoch = -(-len(dataset) // batch_size)

    def indices(self, iteration: int) -> tuple[list[int], int]:
        epoch, b = divmod(iteration, self.batches_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        return perm[b * self.batch_size : (b + 1) * self.batch_size].tolist(), epoch

    def _keys(self, iteration: int) -> list[tuple[int, int]]:
        idx, epoch = self.indices(iteration)
        start = (iteration % self.batches_per_epoch) * self.batch_size
        return [(i, sample_seed(self.seed, epoch, start + p)) for p, i in enumerate(idx)]

    def iterate(self, start: int, stop: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (iteration, images, labels) for iterations start..stop-1."""
        its = list(range(start, stop))
        if not its:
            return
        ds = SeededTransform(self.dataset, self.transform) if self.transform else _KeyedPlain(self.dataset)
        loader = DataLoader(
            ds,
            batch_sampler=[self._keys(it) for it in its],
            num_workers=self.num_workers,
            generator=torch.Generator(),  # never draw from the global RNG (dropout and gating noise use it)
            persistent_workers=False,
        )
        for it, (x, y) in zip(its, loader, strict=True):
            yield it, x, y


class _KeyedPlain(Dataset):
    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        return self.base[key[0]]


class TensorPairDataset(Dataset):
    """Fixed, already-transformed tensors (few-shot sets)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def few_shot_subset(batches: TrainBatches, shots: int, num_classes: int) -> TensorPairDataset:
    """The first `shots` images per class met while scanning one shuffled, augmented pass of the train set."""
    kept: dict[int, list[torch.Tensor]] = {}
    for _, x, y in batches.iterate(0, batches.batches_per_epoch):
        for img, label in zip(x, y.tolist(), strict=True):
            if len(kept.setdefault(label, [])) < shots:
                kept[label].append(img)
        if len(kept) == num_classes and all(len(v) >= shots for v in kept.values()):
            break
    images, labels = [], []
    for label, imgs in kept.items():  # class order of first appearance, as the reference builds it
        images.extend(imgs)
        labels.extend([label] * len(imgs))
    return TensorPairDataset(torch.stack(images), torch.tensor(labels))
