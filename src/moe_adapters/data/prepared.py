"""The prepared-dataset format every benchmark is converted to: class names, templates, splits, eval cache.

A prepared dataset is a folder:
  meta.json          name, class names, templates, sizes, checksums of the arrays, how to read the train split
  test_images.npy    uint8 [N, 3, S, S]: the test split after the deterministic eval geometry (resize, centre crop)
  test_labels.npy    int64 [N]
  train_images.npy   uint8 [M, H, W, 3] and train_labels.npy, when the train split is stored as an array
  *.npy              further arrays (split index lists, few-shot index lists), each with its SHA-256 in meta.json
The evaluation cache means a test image is decoded and resized once, however many checkpoints are evaluated.
Every array is checked against its recorded SHA-256 when a step first reads it (see integrity.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import integrity
from ..fsutil import atomic_path, read_json, write_json
from ..integrity import sha256_file
from .batches import ArrayImageDataset, TaskData
from .transforms import normalize_uint8

FORMAT = "moe-adapters-prepared/1"


class DataMissingError(FileNotFoundError):
    """A dataset has not been prepared (or fetched) yet."""


__all__ = ["DataMissingError", "PreparedDataset", "load_npy", "save_array", "sha256_file", "write_prepared"]
REBUILT_BY = "prepare"


def load_npy(path: str | Path, mmap_mode: str | None = "r", meta: str | Path | None = None) -> np.ndarray:
    """np.load without pickles, whose errors name the file (numpy's own name none)."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise integrity.unreadable(path, "is missing", REBUILT_BY, meta) from None
    except (ValueError, OSError, EOFError) as e:
        with open(path, "rb") as f:
            npy = f.read(6) == b"\x93NUMPY"
        why = f"is not a readable .npy array ({e})" if npy else "is not a .npy file (no .npy header)"
        raise integrity.unreadable(path, why, REBUILT_BY, meta) from None


def save_array(path: Path, arr: np.ndarray) -> str:
    """Write a .npy atomically and return its SHA-256."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
    return sha256_file(path)


def write_prepared(
    folder: str | Path,
    *,
    name: str,
    classnames: list[str],
    templates: list[str],
    test_images: np.ndarray | Path,
    test_labels: np.ndarray,
    train_images: np.ndarray | None = None,
    train_labels: np.ndarray | None = None,
    train_source: dict | None = None,
    extra: dict | None = None,
    extra_arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write a prepared dataset; meta.json is written last, so its presence means the folder is complete.

    `test_images` may be a finished .npy file (a large eval cache written in place); it is moved into the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cache_file = Path(test_images) if isinstance(test_images, (str, Path)) else None
    if cache_file is not None:
        test_images = np.load(cache_file, mmap_mode="r", allow_pickle=False)
    if test_images.dtype != np.uint8 or test_images.ndim != 4 or test_images.shape[1] != 3:
        raise ValueError(
            f"{name}: test images must be uint8 [N,3,S,S], got {test_images.dtype} {test_images.shape}"
        )
    if len(test_labels) != len(test_images):
        raise ValueError(f"{name}: {len(test_images)} test images but {len(test_labels)} labels")
    if cache_file is not None:
        shape = test_images.shape
        del test_images
        os.replace(cache_file, folder / "test_images.npy")
        sums = {"test_images.npy": sha256_file(folder / "test_images.npy")}
    else:
        shape = test_images.shape
        sums = {"test_images.npy": save_array(folder / "test_images.npy", test_images)}
    sums["test_labels.npy"] = save_array(folder / "test_labels.npy", np.asarray(test_labels, dtype=np.int64))
    for fname, arr in (extra_arrays or {}).items():
        if fname in sums or not fname.endswith(".npy") or "/" in fname:
            raise ValueError(f"{name}: bad extra array name {fname!r}")
        sums[fname] = save_array(folder / fname, np.asarray(arr))
    if train_images is not None:
        sums["train_images.npy"] = save_array(folder / "train_images.npy", train_images)
        sums["train_labels.npy"] = save_array(
            folder / "train_labels.npy", np.asarray(train_labels, dtype=np.int64)
        )
        train_source = {"kind": "array"}
    if train_source is None:
        raise ValueError(f"{name}: give train arrays or a train source")
    write_json(
        folder / "meta.json",
        {
            "format": FORMAT,
            "name": name,
            "classnames": list(classnames),
            "templates": list(templates),
            "num_test": int(shape[0]),
            "num_train": int(len(train_images))
            if train_images is not None
            else int(train_source.get("num_train", 0)),
            "eval_size": int(shape[-1]),
            "train": train_source,
            "sha256": sums,
            **(extra or {}),
        },
    )
    return folder


class PreparedDataset:
    """Read access to a prepared dataset folder; arrays are memory-mapped."""

    def __init__(self, folder: str | Path, verify: bool = True):
        """`verify`: check each array against its recorded SHA-256 when it is first read (see integrity.py)."""
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise DataMissingError(f"dataset {self.folder.name} is not prepared: {meta_path} is missing")
        self.meta = read_json(meta_path)
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: unknown format {self.meta.get('format')!r}")
        self.meta_path = meta_path
        self.verify_reads = verify

    def check(self, fname: str) -> None:
        """Check one array against the SHA-256 `prepare` recorded for it."""
        if not self.verify_reads:
            return
        want = (self.meta.get("sha256") or {}).get(fname)
        integrity.verify_file(self.folder / fname, want, REBUILT_BY, self.meta_path)

    def verify(self) -> None:
        """Check every array against its recorded SHA-256."""
        for fname in self.meta["sha256"]:
            integrity.verify_file(self.folder / fname, self.meta["sha256"][fname], REBUILT_BY, self.meta_path)

    @property
    def name(self) -> str:
        return self.meta["name"]

    def _load(self, fname: str, mmap_mode: str | None = "r") -> np.ndarray:
        self.check(fname)
        return load_npy(self.folder / fname, mmap_mode, self.meta_path)

    def test_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self._load("test_images.npy"), self._load("test_labels.npy")

    def test_batches(
        self, batch_size: int, device="cpu", lazy: bool = False
    ) -> Iterator[tuple[torch.Tensor | Callable[[], torch.Tensor], torch.Tensor]]:
        """CLIP-normalised test batches in test-set order, from the uint8 eval cache.

        The uint8 pixels travel to `device` and are normalised there. With `lazy`, each batch's images come
        as a function that reads them, so a batch that needs no image (every sample routed to zero-shot,
        whose features are cached) is never read.
        """
        images, labels = self.test_arrays()

        def load(i: int) -> torch.Tensor:
            x = torch.from_numpy(np.array(images[i : i + batch_size])).to(device)
            return normalize_uint8(x)

        for i in range(0, len(labels), batch_size):
            y = torch.from_numpy(np.array(labels[i : i + batch_size]))
            yield (partial(load, i) if lazy else load(i)), y

    def train_dataset(self) -> Dataset:
        kind = self.meta["train"]["kind"]
        if kind == "array":
            return ArrayImageDataset(self._load("train_images.npy"), self._load("train_labels.npy"))
        if kind == "torchvision":
            from .mtil.readers import torchvision_train_split

            return torchvision_train_split(self.meta, self.folder, lambda f: self._load(f, None))
        raise ValueError(f"{self.folder}: unknown train source {kind!r}")

    def task_data(self) -> TaskData:
        """The dataset as a task to train on: names, templates and the train split."""
        return TaskData(
            self.name, list(self.meta["classnames"]), list(self.meta["templates"]), self.train_dataset(), self.meta
        )
