"""The class-incremental view of a dataset (SPEC 8): raw images and labels in the label order the protocol's class
order refers to, with the class names the reference uses, and the images of any set of classes.

The view is its own folder, `<data_root>/cil/<dataset>/` (meta.json last, SHA-256 of every array in it):
  CIFAR100       torchvision's arrays and labels; names are torchvision's, underscores kept (aquarium_fish)
  TinyImageNet   labels in the order of tiny-imagenet-200/wnids.txt (not sorted wnids, as the MTIL prepared folder
                 has them); names from the curated list of protocol/cil.yaml, checked wnid by wnid
  mini           the classes of the mini's five datasets pooled in the protocol's order
Images are kept raw (32 px CIFAR100, 64 px TinyImageNet): the reference evaluates with the training crop, so the
test split needs its originals, not the centre-cropped evaluation cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .. import integrity
from ..fsutil import read_json, write_json
from .prepared import DataMissingError, PreparedDataset, load_npy, save_array

FORMAT = "moe-adapters-cil/1"


def write_view(
    folder: str | Path,
    *,
    name: str,
    classnames: Sequence[str],
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    extra: dict | None = None,
) -> Path:
    """Write a class-incremental view: uint8 HWC images and int64 labels per split; meta.json last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    sums = {}
    for split, (images, labels) in (("train", train), ("test", test)):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{name}: {split} images must be uint8 [N,H,W,3], got {images.dtype} {images.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(images) or labels.min() < 0 or labels.max() >= len(classnames):
            raise ValueError(f"{name}: {split} labels do not fit {len(images)} images of {len(classnames)} classes")
        sums[f"{split}_images.npy"] = save_array(folder / f"{split}_images.npy", images)
        sums[f"{split}_labels.npy"] = save_array(folder / f"{split}_labels.npy", labels)
    write_json(
        folder / "meta.json",
        {"format": FORMAT, "name": name, "classnames": list(classnames), "sha256": sums, **(extra or {})},
    )
    return folder


class _Subset(Dataset):
    """The samples of some classes, as (RGB PIL image, remapped label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, keep: np.ndarray, remap: np.ndarray):
        self.images, self.labels, self.keep, self.remap = images, labels, keep, remap

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        j = int(self.keep[i])
        return Image.fromarray(np.ascontiguousarray(self.images[j])).convert("RGB"), int(self.remap[self.labels[j]])


class CILView:
    """Read access to a class-incremental view; arrays are memory-mapped."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta = self.folder / "meta.json"
        if not meta.is_file():
            raise DataMissingError(f"class-incremental view {self.folder.name} is not prepared: {meta} is missing")
        self.meta = read_json(meta)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta}: unknown format {self.meta.get('format')!r}")

    @property
    def classnames(self) -> list[str]:
        return list(self.meta["classnames"])

    def verify(self) -> None:
        for fname in self.meta["sha256"]:
            self._check(fname)

    def _check(self, fname: str) -> None:
        integrity.verify_file(self.folder / fname, self.meta["sha256"].get(fname), "prepare_cil", self.folder / "meta.json")

    def _load(self, fname: str) -> np.ndarray:
        self._check(fname)
        return load_npy(self.folder / fname, "r", self.folder / "meta.json")

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A split's images and labels, each checked against the SHA-256 recorded when the view was written."""
        return self._load(f"{split}_images.npy"), self._load(f"{split}_labels.npy")

    def subset(self, split: str, classes: Sequence[int], class_order: Sequence[int]) -> Dataset:
        """The `split` samples whose remapped label (position of their class in `class_order`) is in `classes`."""
        images, labels = self.arrays(split)
        remap = remap_table(class_order, len(self.classnames))
        keep = np.flatnonzero(np.isin(remap[np.asarray(labels)], np.asarray(list(classes))))
        return _Subset(images, labels, keep, remap)


def remap_table(class_order: Sequence[int], num_classes: int) -> np.ndarray:
    """remap[original label] = its position in the class order (continuum's ClassIncremental(class_order=...))."""
    order = np.asarray(list(class_order), dtype=np.int64)
    if sorted(order.tolist()) != list(range(num_classes)):
        raise ValueError(f"the class order must be a permutation of 0..{num_classes - 1}")
    remap = np.empty(num_classes, dtype=np.int64)
    remap[order] = np.arange(num_classes)
    return remap


def names_in_order(classnames: Sequence[str], class_order: Sequence[int], labels: Sequence[int]) -> list[str]:
    """The names of remapped labels: label k is the class at position k of the class order."""
    return [classnames[class_order[k]] for k in labels]


# ---------------------------------------------------------------- building the views


def cifar100_view(prepared: str | Path, out: str | Path) -> Path:
    """CIFAR100 from the raw files the MTIL prepare step verified, torchvision's names with their underscores."""
    from .mtil.readers import open_source

    root = _raw_root(prepared)
    splits = {}
    for split, train in (("train", True), ("test", False)):
        src = open_source("CIFAR100", root, {"train": train})
        splits[split] = (np.asarray(src.ds.data, dtype=np.uint8), np.asarray(src.ds.targets, dtype=np.int64))
        classes = list(src.ds.classes)
    return write_view(out, name="cifar100", classnames=classes, train=splits["train"], test=splits["test"],
                      extra={"source": str(root), "names": "torchvision CIFAR100.classes, underscores kept"})


def tinyimagenet_view(prepared: str | Path, out: str | Path, curated: Sequence[Sequence[str]], workers: int = 0) -> Path:
    """TinyImageNet with labels in wnids.txt order and the reference's curated names (checked wnid by wnid)."""
    import torch

    root = _raw_root(prepared) / "tiny-imagenet-200"
    wnids = [w for w in (root / "wnids.txt").read_text().split() if w]
    if [w for w, _ in curated] != wnids:
        raise ValueError(
            f"{root / 'wnids.txt'}: its wnids are not, in order, those of protocol/cil.yaml's tinyimagenet_names "
            "(the class order's indices refer to that order)"
        )
    index = {w: i for i, w in enumerate(wnids)}
    train = [(p, index[w]) for w in wnids for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]
    test = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            test.append((root / "val" / "images" / parts[0], index[parts[1]]))

    class Decode(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            path, y = self.items[i]
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8), y

    def decode(items):
        loader = torch.utils.data.DataLoader(Decode(items), batch_size=256, num_workers=workers, collate_fn=list)
        pairs = [p for batch in loader for p in batch]
        return np.stack([p[0] for p in pairs]), np.asarray([p[1] for p in pairs], dtype=np.int64)

    return write_view(out, name="tinyimagenet", classnames=[n for _, n in curated], train=decode(train),
                      test=decode(test), extra={"source": str(root), "names": "protocol/cil.yaml tinyimagenet_names"})


def mini_view(prepared: Sequence[str | Path], out: str | Path) -> Path:
    """The mini's datasets pooled, in the given order: labels offset by the classes of the datasets before."""
    train_x, train_y, test_x, test_y, names = [], [], [], [], []
    for folder in prepared:
        p = PreparedDataset(folder)
        offset = len(names)
        names += list(p.meta["classnames"])
        if p.meta["train"]["kind"] != "array":
            raise ValueError(f"{folder}: the mini's datasets hold their train split as arrays")
        images, labels = np.asarray(p._load("train_images.npy")), np.asarray(p._load("train_labels.npy"))
        train_x.append(images if images.ndim == 4 else np.repeat(images[..., None], 3, -1))
        train_y.append(labels + offset)
        ti, tl = p.test_arrays()
        test_x.append(np.ascontiguousarray(np.asarray(ti).transpose(0, 2, 3, 1)))  # the cache is the image at 32 px
        test_y.append(np.asarray(tl) + offset)
    return write_view(out, name="mini", classnames=names, train=(np.concatenate(train_x), np.concatenate(train_y)),
                      test=(np.concatenate(test_x), np.concatenate(test_y)),
                      extra={"pool": [Path(f).name for f in prepared]})


def _raw_root(prepared: str | Path) -> Path:
    """The raw-data folder the MTIL prepare step verified for this dataset (or raw/ beside it if moved)."""
    meta = read_json(Path(prepared) / "meta.json")
    root = Path(meta["train"]["root"])
    if not root.is_dir():
        alt = Path(prepared).parent / "raw" / meta["train"]["dataset"]
        if not alt.is_dir():
            raise DataMissingError(f"{meta['name']}: raw data not found at {root} nor {alt}")
        root = alt
    return root
