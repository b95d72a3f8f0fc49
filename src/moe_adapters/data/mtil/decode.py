"""Decoding: every train image checked at reduced JPEG scale, the test split decoded once into the uint8
evaluation cache; failures are collected and reported together, with paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..transforms import eval_geometry
from .pins import MAX_LISTED
from .readers import Source


class DecodeError(ValueError):
    """Images of a dataset fail to decode; nothing was prepared."""





class _EvalDecode(Dataset):
    """Test samples through the deterministic eval geometry, as uint8 CHW; failures come back as messages."""

    def __init__(self, src: Source, indices: np.ndarray, size: int):
        self.ds, self.paths, self.indices, self.size = src.ds, src.paths, indices, size
        self.geometry = eval_geometry(size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        try:
            img, label = self.ds[i]
            arr = np.asarray(self.geometry(img), dtype=np.uint8)
            if arr.shape != (self.size, self.size, 3):
                raise ValueError(f"decoded to shape {arr.shape}")
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), int(label), ""
        except Exception as e:  # reported with the path, all failures together
            where = self.paths[i] if self.paths else f"sample {i}"
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1, f"{where}: {type(e).__name__}: {e}"


class _DecodeCheck(Dataset):
    """Full decode of a train image at reduced JPEG scale (catches truncated or corrupt files cheaply)."""

    def __init__(self, paths: list[str], indices: np.ndarray):
        self.paths, self.indices = paths, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> str:
        path = self.paths[int(self.indices[k])]
        try:
            with Image.open(path) as im:
                im.draft("RGB", (64, 64))
                im.load()
            return ""
        except Exception as e:
            return f"{path}: {type(e).__name__}: {e}"


def _collate(batch):
    return batch


def _raise_decode(name: str, split: str, errors: list[str]) -> None:
    if errors:
        shown = "\n    ".join(errors[:MAX_LISTED]) + ("\n    ..." if len(errors) > MAX_LISTED else "")
        raise DecodeError(
            f"{name}: {len(errors)} {split} image(s) failed to decode; the dataset was not prepared "
            f"(no meta.json), so no training runs on a partial dataset. Re-fetch or remove them:\n    {shown}"
        )


def check_train_decodes(name: str, src: Source, indices: np.ndarray, workers: int) -> None:
    """Every train image of the split decodes, or DecodeError names each bad one."""
    if src.paths is None:
        return
    loader = DataLoader(_DecodeCheck(src.paths, indices), batch_size=256, num_workers=workers,
                        collate_fn=_collate)
    _raise_decode(name, "train", [e for batch in loader for e in batch if e])


def build_eval_cache(name: str, src: Source, indices: np.ndarray, size: int, workers: int, dest: Path) -> np.ndarray:
    """Decode the test split once into a uint8 [N,3,S,S] .npy at `dest`; returns the labels."""
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=np.uint8, shape=(len(indices), 3, size, size))
    labels = np.empty(len(indices), dtype=np.int64)
    errors: list[str] = []
    loader = DataLoader(_EvalDecode(src, indices, size), batch_size=64, num_workers=workers)
    pos = 0
    for x, y, err in loader:
        out[pos : pos + len(y)] = x.numpy()
        labels[pos : pos + len(y)] = y.numpy()
        errors.extend(e for e in err if e)
        pos += len(y)
    out.flush()
    del out
    _raise_decode(name, "test", errors)
    return labels
