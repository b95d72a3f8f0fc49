"""The paper's datasets opened with torchvision (downloads off, files already verified), as one `Source` per
split: the dataset, its sample paths, labels and classes; and the train split re-opened for training."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from ..prepared import DataMissingError, load_npy
from .pins import DatasetSizeError


class _CIFAR100(tvd.CIFAR100):
    """torchvision's CIFAR100 without re-hashing files this module has verified."""

    train_list = [[f, None] for f, _ in tvd.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


class _Flowers102(tvd.Flowers102):
    """torchvision's Flowers102 without re-hashing the .mat files this module has verified."""

    _file_dict = {k: (f, None) for k, (f, _) in tvd.Flowers102._file_dict.items()}


class _SUN397Sorted(tvd.SUN397):
    """torchvision's SUN397 with its samples in sorted path order (rglob order is the file system's)."""

    def __init__(self, root: str, **kw):
        super().__init__(root, **kw)
        pairs = sorted(zip(self._image_files, self._labels, strict=True),
                       key=lambda p: p[0].relative_to(self._data_dir).as_posix())
        self._image_files = [p for p, _ in pairs]
        self._labels = [y for _, y in pairs]


class TinyImageNet(Dataset):
    """tiny-imagenet-200: train/<wnid>/images/*.JPEG (ImageFolder order: sorted wnids, sorted files) or the
    labelled val split (val_annotations.txt order)."""

    def __init__(self, root: str, split: str = "train"):
        base = Path(root) / "tiny-imagenet-200"
        self.wnids = sorted(w for w in (base / "wnids.txt").read_text().split() if w)
        words = {}
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
        first = [words.get(w, w).split(",")[0].strip() for w in self.wnids]
        dup = {c for c in first if first.count(c) > 1}
        self.classes = [words[w] if c in dup else c for w, c in zip(self.wnids, first, strict=True)]
        idx = {w: i for i, w in enumerate(self.wnids)}
        self.samples: list[tuple[str, int]] = []
        if split == "train":
            for w in self.wnids:
                for p in sorted((base / "train" / w / "images").glob("*.JPEG")):
                    self.samples.append((str(p), idx[w]))
        elif split == "val":
            for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2:
                    self.samples.append((str(base / "val" / "images" / parts[0]), idx[parts[1]]))
        else:
            raise ValueError(f"TinyImageNet split must be train or val, got {split!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB"), label


READERS = {
    "FGVCAircraft": tvd.FGVCAircraft,
    "Caltech101": tvd.Caltech101,
    "CIFAR100": _CIFAR100,
    "DTD": tvd.DTD,
    "EuroSAT": tvd.EuroSAT,
    "Flowers102": _Flowers102,
    "Food101": tvd.Food101,
    "MNIST": tvd.MNIST,
    "OxfordIIITPet": tvd.OxfordIIITPet,
    "StanfordCars": tvd.StanfordCars,
    "SUN397": _SUN397Sorted,
    "TinyImageNet": TinyImageNet,
}


@dataclass
class Source:
    """A torchvision dataset (no transform) with its sample paths (None for in-memory arrays), labels, classes."""

    ds: Dataset
    paths: list[str] | None
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def open_source(reader: str, root: str | Path, args: dict) -> Source:
    """Open one split of a dataset with torchvision (download off) and read its paths, labels and classes."""
    ds = READERS[reader](str(root), **args)
    if reader in ("FGVCAircraft", "DTD", "Flowers102", "Food101", "SUN397"):
        paths, labels = [str(p) for p in ds._image_files], list(ds._labels)
    elif reader == "OxfordIIITPet":
        paths, labels = [str(p) for p in ds._images], list(ds._labels)
    elif reader in ("EuroSAT", "TinyImageNet", "StanfordCars"):
        samples = ds._samples if reader == "StanfordCars" else ds.samples
        paths, labels = [str(p) for p, _ in samples], [int(y) for _, y in samples]
    elif reader == "Caltech101":
        base = Path(ds.root) / "101_ObjectCategories"
        paths = [str(base / ds.categories[y] / f"image_{k:04d}.jpg") for k, y in zip(ds.index, ds.y, strict=True)]
        labels = list(ds.y)
    elif reader in ("CIFAR100", "MNIST"):
        paths, labels = None, [int(y) for y in ds.targets]
    else:  # pragma: no cover - READERS and this list are kept together
        raise KeyError(reader)
    classes = list(ds.categories) if reader == "Caltech101" else list(ds.classes)
    return Source(ds, paths, np.asarray(labels, dtype=np.int64), classes)





class TrainSplit(Dataset):
    """The original train images of a split, as (RGB PIL image, label), for the protocol's random crop."""

    def __init__(self, ds: Dataset, indices: np.ndarray):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.ds[int(self.indices[i])]
        return img.convert("RGB"), int(label)


def torchvision_train_split(
    meta: dict, folder: str | Path | None = None, load: Callable[[str], np.ndarray] | None = None
) -> Dataset:
    """Re-open the raw train split recorded in meta["train"], checked against the stored index and label lists
    (read with `load`, the prepared dataset's checked reader, when given)."""
    t = meta["train"]
    folder = Path(folder) if folder is not None else Path(t.get("folder", "."))
    if load is None:
        load = lambda fname: load_npy(folder / fname, None)  # noqa: E731
    root = Path(t["root"])
    if not root.is_dir():  # the data folder moved (another checkout): raw/ beside the prepared folder
        alt = folder.parent / "raw" / t["dataset"]
        if not alt.is_dir():
            raise DataMissingError(f"{meta['name']}: raw data not found at {root} nor {alt}")
        root = alt
    src = open_source(t["reader"], root, t["args"])
    if len(src) != t["full_size"]:
        raise DatasetSizeError(f"{meta['name']}: {len(src)} samples at {root}, prepared with {t['full_size']}")
    idx = load(t["index_file"])
    targets = load(t["targets_file"])
    if not np.array_equal(src.labels[idx], targets):
        raise DatasetSizeError(f"{meta['name']}: the raw data at {root} no longer matches the prepared split")
    return TrainSplit(src.ds, idx)
