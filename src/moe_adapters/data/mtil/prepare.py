"""Preparing one of the paper's datasets (11 MTIL datasets, TinyImageNet; CIFAR100 also serves class-incremental runs):
fetched, verified, split and cached in the prepared format.

Raw data lives in <data_root>/raw/<Dataset>/ in the layout torchvision reads (see README, "Data"); the pinned
facts (sources, sizes, SHA-256, split permutations) are in the packaged protocol/mtil_data.yaml. Preparing a
dataset: check it is present (failing in milliseconds with what to put where), download it only when asked and
the network is allowed, verify every file it will read, unpack atomically, hash the unpacked tree (trust on
first use, refused if it later changes), open it with torchvision, check sizes and classes, split, check that
every train image decodes, decode the test split once into the uint8 evaluation cache, and write meta.json last.
Nothing here depends on a training setting: few-shot subsets are drawn by the training step (SPEC 4).
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from ...fsutil import make_temp, remove_stale_temps
from ..prepared import write_prepared
from .decode import build_eval_cache, check_train_decodes
from .fetch import fetch_and_verify, record_trust
from .pins import DatasetSizeError, _read_yaml, _spec, load_pins, raw_root
from .readers import Source, open_source
from .splits import index_digest, random_split_indices

log = logging.getLogger(__name__)


def _classnames(name: str, spec: dict, src: Source, proto_entry: dict | None) -> list[str]:
    rule = spec["classnames"]
    if rule == "protocol":
        names = list(proto_entry["classnames"])
    elif rule == "dataset":
        names = [c.replace("_", " ") for c in src.classes]
    elif rule == "torchvision":
        names = list(src.classes)
    elif rule == "words":
        names = list(src.classes)
    else:
        raise ValueError(f"{name}: unknown class-name rule {rule!r}")
    if spec.get("categories") is not None and list(src.classes) != list(spec["categories"]):
        raise DatasetSizeError(
            f"{name}: the class folders are {src.classes[:5]}... ({len(src.classes)}), not the recorded "
            f"{len(spec['categories'])} categories the protocol's class names follow"
        )
    if len(names) != spec["num_classes"] or len(src.classes) != spec["num_classes"]:
        raise DatasetSizeError(
            f"{name}: {len(src.classes)} classes on disk, {len(names)} names; the protocol has {spec['num_classes']}"
        )
    return names


def _templates(name: str, spec: dict, proto: dict) -> list[str]:
    if spec.get("templates_from") == "cil":
        cil = _read_yaml(str(resources.files("moe_adapters") / "protocol" / "cil.yaml"))
        key = name.lower()
        return sorted({s["prompt_template"] for s in cil["settings"].values() if s["dataset"] == key})
    return list(proto["datasets"][name]["templates"])


def prepare_dataset(
    dataset: str,
    out: str | Path,
    *,
    data_root: str | Path,
    image_size: int,
    protocol: str | None = None,
    workers: int = 0,
    pins: dict | None = None,
    download: bool | None = None,
) -> Path:
    """Fetch (if allowed), verify, split and cache one dataset into `out` in the prepared format.

    Raw data is read from `<data_root>/raw/<dataset>`; the test split is cached at `image_size` px; class names
    and templates come from the mtil protocol (the packaged one, or the file `protocol`).
    """
    from ...protocol import load_protocol

    pins = pins or load_pins()
    spec = _spec(pins, dataset)
    raw = raw_root(data_root) / dataset
    out = Path(out)
    checks = fetch_and_verify(dataset, spec, raw, download=download)
    record = checks.pop("_record")

    split = spec["split"]
    if split["kind"] == "random_split":
        train_args = test_args = dict(split.get("args") or {})
    else:
        train_args, test_args = dict(split["train"]), dict(split["test"])
    train_src = open_source(spec["reader"], raw, train_args)
    test_src = train_src if test_args == train_args else open_source(spec["reader"], raw, test_args)

    if spec.get("order_sha256"):
        rels = sorted(Path(p).relative_to(raw / spec["tree"]).as_posix() for p in train_src.paths or [])
        have = hashlib.sha256(("\n".join(rels) + "\n").encode()).hexdigest()
        if have != spec["order_sha256"]:
            raise DatasetSizeError(
                f"{dataset}: the image files under {raw / spec['tree']} ({len(rels):,}) are not the recorded "
                f"list (sha256 {have[:16]}…, recorded {spec['order_sha256'][:16]}…); the split would differ"
            )
    if split["kind"] == "random_split":
        n = len(train_src)
        if n != split["n"]:
            raise DatasetSizeError(
                f"{dataset}: {n:,} images on disk, the recorded size is {split['n']:,}; refusing, because the "
                "random split (which depends only on the size and the seed) would differ from the protocol's"
            )
        seed, frac = pins["random_split"]["seed"], pins["random_split"]["fraction"]
        train_idx, test_idx = random_split_indices(n, seed, frac)
        if split.get("perm_sha256") and index_digest(train_idx, test_idx) != split["perm_sha256"]:
            raise DatasetSizeError(
                f"{dataset}: random_split with seed {seed} no longer gives the recorded index lists "
                f"(torch {torch.__version__}); restore them from a previous prepared copy"
            )
    else:
        train_idx = np.arange(len(train_src), dtype=np.int64)
        test_idx = np.arange(len(test_src), dtype=np.int64)
    sizes = {"train": len(train_idx), "test": len(test_idx)}
    if sizes != spec["sizes"]:
        raise DatasetSizeError(f"{dataset}: split sizes {sizes}, recorded {spec['sizes']}; refusing")

    proto = load_protocol("mtil", None if protocol in (None, "mtil") else protocol)
    classnames = _classnames(dataset, spec, train_src, proto["datasets"].get(dataset))
    templates = _templates(dataset, spec, proto)
    for src in {id(train_src): train_src, id(test_src): test_src}.values():
        if len(src) and (src.labels.min() < 0 or src.labels.max() >= len(classnames)):
            raise DatasetSizeError(f"{dataset}: labels outside 0..{len(classnames) - 1}")

    check_train_decodes(dataset, train_src, train_idx, workers)
    size = image_size
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    remove_stale_temps(out, ".test_images.", ".npy.tmp")  # the evaluation cache of a prepare that was killed
    tmp = make_temp(out, ".test_images.", ".npy.tmp")
    try:
        test_labels = build_eval_cache(dataset, test_src, test_idx, size, workers, tmp)
        train_targets = train_src.labels[train_idx]
        train_source = {
            "kind": "torchvision",
            "reader": spec["reader"],
            "root": str(raw.resolve()),
            "dataset": dataset,
            "args": train_args,
            "index_file": "train_index.npy",
            "targets_file": "train_targets.npy",
            "full_size": len(train_src),
            "num_train": len(train_idx),
        }
        record_trust(raw, record)  # every check passed: this copy is the trusted one from now on
        write_prepared(
            out,
            name=dataset,
            classnames=classnames,
            templates=templates,
            test_images=tmp,
            test_labels=test_labels,
            train_source=train_source,
            extra_arrays={
                "train_index.npy": train_idx,
                "train_targets.npy": train_targets,
                "test_index.npy": test_idx,
            },
            extra={
                "split": {
                    **split,
                    **({"seed": pins["random_split"]["seed"], "fraction": pins["random_split"]["fraction"]}
                       if split["kind"] == "random_split" else {}),
                    "test_args": test_args,
                    "order": spec.get("order", "torchvision"),
                },
                "raw": checks,
            },
        )
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: prepared %s (train %d, test %d)", dataset, out, sizes["train"], sizes["test"])
    return out
