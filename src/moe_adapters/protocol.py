"""Protocol data (orders, class names, prompt templates, learning rates, paper numbers), read from packaged YAML."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import yaml


def _packaged(name: str) -> Path:
    return Path(str(resources.files("moe_adapters") / "protocol" / name))


# libyaml's parser where PyYAML has it (the same documents, about 5x faster: every workflow process reads these)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _read(path: str) -> dict:
    return yaml.load(Path(path).read_text(), Loader=SAFE_LOADER)


def load_protocol(benchmark: str = "mtil", path: str | Path | None = None) -> dict:
    """The protocol of a benchmark: the packaged `<benchmark>.yaml`, or a user's file."""
    p = Path(path) if path else _packaged(f"{benchmark}.yaml")
    if not p.is_file():
        raise FileNotFoundError(f"protocol file {p} does not exist")
    proto = _read(str(p.resolve()))
    for key in ("orders", "datasets"):
        if key not in proto:
            raise ValueError(f"protocol {p} has no '{key}' section")
    return proto


def paper_numbers() -> dict:
    return _read(str(_packaged("paper_numbers.yaml")))


def generic_datasets(benchmark: str, proto: dict) -> list[str]:
    """Datasets that may train DDAS autoencoder 0 ("generic data"): the protocol's `generic` list, and for the
    paper every dataset with a raw-data recipe (TinyImageNet among them)."""
    names = list(proto.get("generic", []))
    if benchmark == "mtil":
        names += [n for n in _read(str(_packaged("mtil_data.yaml")))["datasets"] if n not in names]
    return names


def order_datasets(proto: dict, order: str) -> list[str]:
    """Dataset names of an order, in training order."""
    if order not in proto["orders"]:
        raise KeyError(f"order {order!r} is not in the protocol (known: {', '.join(proto['orders'])})")
    return list(proto["orders"][order])


def dataset_entry(proto: dict, name: str) -> dict:
    try:
        return proto["datasets"][name]
    except KeyError:
        raise KeyError(
            f"dataset {name!r} is not in the protocol (known: {', '.join(proto['datasets'])})"
        ) from None


def learning_rate(proto: dict, name: str, shots: int) -> float:
    """The protocol's per-task learning rate for full-shot (shots=0) or `shots`-shot training."""
    entry = dataset_entry(proto, name)
    key = "lr_full_shot" if shots == 0 else f"lr_few_shot_{shots}"
    if key not in entry:
        raise KeyError(f"the protocol gives {name} no {key}")
    return float(entry[key])
