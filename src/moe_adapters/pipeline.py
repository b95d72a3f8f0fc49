"""The steps of a run, each a function of (config, input paths, output path); the CLI and Snakemake call these."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import factory
from .checkpoint import (
    CheckpointError,
    load_autoencoder,
    load_task_checkpoint,
    load_tensors,
    save_autoencoder,
    save_task_checkpoint,
    save_tensors,
)
from .config import code_commit, config_hash, deviations
from .costs import cost
from .data import TrainBatches, train_transform
from .ddas import decide_routes
from .evaluate import ddas_mse, evaluate_dataset, image_features, text_head
from .fsutil import read_json, write_json, write_text
from .metrics import matrix_csv_text
from .model import tokenizer_for
from .moe import ZERO_SHOT
from .train import train_autoencoder, train_task

log = logging.getLogger(__name__)


def _record(cfg: dict) -> dict:
    return {"config_hash": config_hash(cfg), "commit": code_commit(), "deviations": deviations(cfg)}


def train_task_step(
    cfg: dict,
    task: int,
    out: str | Path,
    prev: str | Path | None = None,
    backbone_weights: str | None = None,
    progress: bool = True,
) -> Path:
    """Train task `task` of the order (route = task) starting from checkpoint `prev` (None for the first)."""
    start = time.time()
    names = factory.order_names(cfg)
    if not 0 <= task < len(names):
        raise ValueError(f"task {task} out of range: the order has {len(names)} tasks")
    if (prev is None) != (task == 0):
        raise ValueError("task 0 starts from fresh adapters (no --prev); every later task needs --prev")
    device = factory.resolve_device(cfg)
    factory.apply_speed_settings(cfg)
    model = factory.model_from_config(cfg, "cpu", backbone_weights)
    if prev is not None:
        meta = load_task_checkpoint(prev, model)
        if meta["task"] != task - 1:
            raise CheckpointError(
                f"{prev} is the checkpoint of task {meta['task']}, task {task} needs task {task - 1}"
            )
    name = names[task]
    data = factory.prepared_dataset(cfg, name).task_data()
    tcfg = factory.task_train_config(cfg, name, factory.image_size(model))
    out = Path(out)
    counts = train_task(
        model,
        task,
        data,
        tokenizer_for(model.backbone),
        tcfg,
        device=device,
        state_path=out.with_name(out.name + ".state"),
        progress=progress,
    )
    trainable = sum(p.numel() for p in model.set_trainable(task))
    model.set_trainable(None)
    save_task_checkpoint(
        out,
        model,
        task=task,
        dataset=name,
        counts=counts,
        extra={"order": cfg["order"], "cost": cost(start, device, trainable), **_record(cfg)},
    )
    return out


def train_autoencoder_step(cfg: dict, index: int, out: str | Path, progress: bool = True) -> Path:
    """Train DDAS autoencoder `index`: 0 on the generic dataset, k on task k-1 of the order."""
    start = time.time()
    names = factory.order_names(cfg)
    if not 0 <= index <= len(names):
        raise ValueError(f"autoencoder index {index} out of range 0..{len(names)}")
    dataset = cfg["ddas"]["generic_dataset"] if index == 0 else names[index - 1]
    device = factory.resolve_device(cfg)
    img_size = factory.config_image_size(cfg)
    extractor = factory.feature_extractor(cfg)
    ae = factory.autoencoder_template(cfg, index, img_size, extractor)
    acfg = factory.ae_train_config(cfg, index == 0, img_size)
    train = factory.prepared_dataset(cfg, dataset).train_dataset()
    batches = TrainBatches(
        train, train_transform(img_size), acfg.batch_size, acfg.seed + index, acfg.num_workers
    )
    out = Path(out)
    losses = train_autoencoder(
        ae,
        extractor,
        batches,
        acfg,
        name=f"{index}:{dataset}",
        device=device,
        state_path=out.with_name(out.name + ".state"),
        progress=progress,
    )
    save_autoencoder(
        out,
        ae.cpu(),
        index=index,
        trained=True,
        extra={
            "dataset": dataset,
            "feature": cfg["ddas"]["feature"],
            "final_loss": losses[-1] if losses else None,
            "cost": cost(start, device, sum(p.numel() for p in ae.parameters())),
            **_record(cfg),
        },
    )
    return out


def features_step(
    cfg: dict,
    dataset: str,
    autoencoders: Sequence[str | Path],
    out: str | Path,
    backbone_weights: str | None = None,
) -> Path:
    """Once per test set: zero-shot image features and every autoencoder's per-sample error (trained and initial)."""
    start = time.time()
    names = factory.order_names(cfg)
    if len(autoencoders) != len(names) + 1:
        raise ValueError(
            f"need {len(names) + 1} autoencoders (generic + one per task), got {len(autoencoders)}"
        )
    device = factory.resolve_device(cfg)
    factory.apply_speed_settings(cfg)
    model = factory.model_from_config(cfg, device, backbone_weights)
    model.set_trainable(None)
    prepared = factory.prepared_dataset(cfg, dataset)
    img_size = factory.image_size(model)
    if prepared.meta["eval_size"] != img_size:
        raise ValueError(
            f"{dataset} was prepared at {prepared.meta['eval_size']} px, the model needs {img_size}"
        )
    bs = cfg["eval"]["batch_size"]
    zs = image_features(model, prepared.test_batches(bs, device), ZERO_SHOT, device)
    # the zero-shot text head is the same for every checkpoint: computed here, once per test set
    zs_head = text_head(
        model, tokenizer_for(model.backbone), prepared.meta["classnames"], prepared.meta["templates"],
        ZERO_SHOT, device,
    ).cpu()
    extractor = factory.feature_extractor(cfg).to(device)
    trained, initial = [], []
    for k, path in enumerate(autoencoders):
        ae = factory.autoencoder_template(cfg, k, img_size, extractor)
        initial.append(ae.to(device).eval())
        ae_t = factory.autoencoder_template(cfg, k, img_size, extractor)
        meta = load_autoencoder(path, ae_t)
        if meta["index"] != k:
            raise CheckpointError(f"{path} is autoencoder {meta['index']}, expected autoencoder {k}")
        trained.append(ae_t.to(device).eval())
    mse = ddas_mse(extractor, trained + initial, prepared.test_batches(bs, device), device)
    k = len(autoencoders)
    _, labels = prepared.test_arrays()
    save_tensors(
        out,
        {
            "zero_shot": zs,
            "zero_shot_head": zs_head,
            "mse_trained": mse[:, :k].contiguous(),
            "mse_initial": mse[:, k:].contiguous(),
            "labels": torch.from_numpy(np.asarray(labels)),
        },
        {
            "kind": "features",
            "dataset": dataset,
            "backbone_fingerprint": model.fingerprint,
            "cost": cost(start, device),
            **_record(cfg),
        },
    )
    return out


def evaluate_step(
    cfg: dict,
    out: str | Path,
    checkpoint: str | Path | None,
    features: dict[str, str | Path],
    datasets: Sequence[str] | None = None,
    backbone_weights: str | None = None,
) -> Path:
    """Evaluate one task checkpoint (or, with checkpoint=None, zero-shot CLIP) on test sets, with DDAS routing."""
    start = time.time()
    device = factory.resolve_device(cfg)
    factory.apply_speed_settings(cfg)
    model = factory.model_from_config(cfg, device, backbone_weights)
    model.set_trainable(None)
    task = None
    if checkpoint is not None:
        task = load_task_checkpoint(checkpoint, model)["task"]
    model.to(device).eval()
    tok = tokenizer_for(model.backbone)
    opts = factory.ddas_options(cfg)
    names = list(datasets) if datasets else factory.order_names(cfg)
    results = {}
    for name in names:
        prepared = factory.prepared_dataset(cfg, name)
        tensors, fmeta = load_tensors(features[name])
        if fmeta.get("backbone_fingerprint") != model.fingerprint:
            raise CheckpointError(f"{features[name]} was computed with another backbone")
        n = len(tensors["labels"])
        if task is None:
            routes = torch.full((n,), ZERO_SHOT, dtype=torch.long)
        elif not cfg["ddas"]["enabled"]:
            routes = torch.full((n,), task, dtype=torch.long)
        else:
            n_trained = task + 2  # autoencoder 0 and those of tasks 0..task
            mse = torch.cat(
                [tensors["mse_trained"][:, :n_trained], tensors["mse_initial"][:, n_trained:]], dim=1
            )
            routes = decide_routes(mse, n_trained, opts)
        res = evaluate_dataset(
            model,
            tok,
            prepared.meta["classnames"],
            prepared.meta["templates"],
            lambda p=prepared: p.test_batches(opts.batch_size, device, lazy=True),
            routes=routes,
            device=device,
            zero_shot_features=tensors["zero_shot"],
            zero_shot_head=tensors.get("zero_shot_head"),
            batch_size=opts.batch_size,
        )
        results[name] = res.to_json()
        log.info("task %s on %s: %.2f%%", task, name, res.accuracy)
    write_json(
        out,
        {
            "task": task,
            "trained_on": None if task is None else factory.order_names(cfg)[task],
            "results": results,
            "cost": cost(start, device),
            **_record(cfg),
        },
    )
    return Path(out)


def matrix_step(
    cfg: dict, evals: Sequence[str | Path], out_matrix: str | Path, out_routing: str | Path
) -> None:
    """Assemble the accuracy matrix (row i = after task i) and the routing table from per-task evaluations."""
    names = factory.order_names(cfg)
    rows, routing = [], ["after_task,trained_on,dataset,route,batches,share"]
    for i, path in enumerate(evals):
        ev = read_json(path)
        if ev["task"] != i:
            raise ValueError(f"{path} is the evaluation of task {ev['task']}, expected task {i}")
        rows.append([ev["results"][n]["accuracy"] for n in names])
        for n in names:
            br = ev["results"][n]["batch_routes"]
            total = sum(br.values())
            for route, count in sorted(br.items(), key=lambda kv: int(kv[0])):
                label = "zero-shot" if int(route) == ZERO_SHOT else names[int(route)]
                routing.append(f"{i},{names[i]},{n},{label},{count},{count / total:.4f}")
    write_text(out_matrix, matrix_csv_text(names, np.asarray(rows)))
    write_text(out_routing, "\n".join(routing) + "\n")


def prepare_step(cfg: dict, dataset: str, out: str | Path | None = None) -> Path:
    """Build (mini) or fetch, verify and split (paper) one dataset into the prepared format."""
    out = Path(out) if out else Path(cfg["data_root"]) / dataset
    if cfg["benchmark"] == "mini":
        from . import mini
        from .protocol import load_protocol

        return mini.prepare(dataset, out, load_protocol("mini", cfg["protocol"]), factory.config_image_size(cfg))
    from .mtil_data import prepare_dataset

    return prepare_dataset(cfg, dataset, out)


def pretrain_step(cfg: dict, out: str | Path, progress: bool = True) -> Path:
    """Mini benchmark only: pretrain the tiny CLIP that stands in for OpenAI's weights."""
    from .pretrain import pretrain

    if cfg["benchmark"] != "mini":
        raise ValueError("pretraining is part of the mini benchmark; the paper uses OpenAI's ViT-B/16 weights")
    m = cfg["mini"]
    info = pretrain(
        factory.prepared_dataset(cfg, cfg["ddas"]["generic_dataset"]),
        cfg["model"]["name"],
        out,
        iterations=m["pretrain_iterations"],
        lr=m["pretrain_lr"],
        batch_size=m["pretrain_batch_size"],
        seed=cfg["train"]["seed"],
        device=factory.resolve_device(cfg),
        progress=progress,
        extra=_record(cfg),
    )
    log.info("pretrained %s: %s", out, info)
    return Path(out)


def backbone_step(cfg: dict, out: str | Path) -> Path:
    """Resolve the backbone weights (failing fast if absent) and record their identity."""
    start = time.time()
    model = factory.model_from_config(cfg, "cpu")
    write_json(
        out,
        {
            **model.backbone.describe(),
            "fingerprint": model.fingerprint,
            "parameters": model.parameter_counts(),
            "cost": cost(start, torch.device("cpu")),
        },
    )
    return Path(out)
