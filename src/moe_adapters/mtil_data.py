"""The paper's datasets (MTIL, TinyImageNet, CIFAR100): fetched, verified, split and cached."""

from __future__ import annotations

from pathlib import Path

from .prepared import DataMissingError


def prepare_dataset(cfg: dict, dataset: str, out: str | Path) -> Path:
    raise DataMissingError(f"preparing {dataset} for the paper benchmark is not implemented yet")


def torchvision_train_split(meta: dict):
    raise DataMissingError(f"{meta['name']}: torchvision-backed train splits are not implemented yet")
