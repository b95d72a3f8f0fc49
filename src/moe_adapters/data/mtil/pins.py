"""Pinned facts of the paper's raw data (sources, sizes, SHA-256, split permutations), read from the packaged
protocol/mtil_data.yaml, and the errors raised when a copy does not fit them."""

from __future__ import annotations

import copy
import os
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

MAX_LISTED = 20  # bad files named in one error message


class ChecksumError(ValueError):
    """A raw file differs from its pinned or recorded checksum; it was not used."""


class DatasetSizeError(ValueError):
    """A dataset has another size or class count than the recorded one, so its splits would differ."""





@cache
def _packaged_pins() -> str:
    return str(resources.files("moe_adapters") / "protocol" / "mtil_data.yaml")


def load_pins(path: str | Path | None = None) -> dict:
    """The pinned data facts (a fresh copy: tests may shrink sizes and drop sums for tiny fake datasets)."""
    return copy.deepcopy(_read_yaml(str(path or _packaged_pins())))


@cache
def _read_yaml(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def dataset_names(pins: dict | None = None) -> list[str]:
    """Every dataset this module prepares: the 11 MTIL datasets and TinyImageNet."""
    return list((pins or load_pins())["datasets"])


def _spec(pins: dict, name: str) -> dict:
    try:
        return pins["datasets"][name]
    except KeyError:
        raise KeyError(
            f"no raw-data recipe for dataset {name!r} (known: {', '.join(pins['datasets'])})"
        ) from None


def raw_root(data_root: str | Path) -> Path:
    """Where raw downloads and hand-placed copies live: <data_root>/raw."""
    return Path(data_root) / "raw"


def network_allowed(download: bool | None = None) -> bool:
    """Downloads happen only when asked (flag or MOE_ADAPTERS_DOWNLOAD=1) and never under HF_HUB_OFFLINE=1."""
    if download is None:
        download = os.environ.get("MOE_ADAPTERS_DOWNLOAD", "").lower() in ("1", "true", "yes", "on")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return bool(download) and not offline
