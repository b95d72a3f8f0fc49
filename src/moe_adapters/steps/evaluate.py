"""Evaluation steps: per test set once, zero-shot features and autoencoder errors; then each task checkpoint (or
zero-shot CLIP) on every dataset of the order, with DDAS routing."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_autoencoder, load_task_checkpoint, load_tensors, save_tensors
from ..data.prepared import PreparedDataset
from ..evaluation import ddas_mse, evaluate_dataset, image_features, text_head
from ..fsutil import write_json
from ..integrity import seal
from ..model.clip import tokenizer_for
from ..model.ddas import DDASOptions, decide_routes
from ..model.moe import ZERO_SHOT
from ..reuse import ModelDigests, RoutedFeatureCache
from .build import (
    adapted_model,
    apply_speed,
    autoencoder_template,
    feature_extractor,
    image_size_of,
    resolve_device,
    zero_shot_model,
)
from .record import cost, provenance
from .specs import EvaluateSpec, FeaturesSpec, Runtime

log = logging.getLogger(__name__)
REUSE_DIR = "reuse"  # beside the evaluation JSONs: the routed-feature cache of the latest evaluation (reuse.py)


def features_step(
    spec: FeaturesSpec, runtime: Runtime | None, data: str | Path, autoencoders: Sequence[str | Path], out: str | Path
) -> Path:
    """Once per test set: zero-shot image features, the zero-shot text head, and every autoencoder's per-sample
    error, trained and at its initial weights (the reference lets untrained autoencoders compete)."""
    start = time.time()
    if len(autoencoders) != spec.num_autoencoders:
        raise ValueError(
            f"need {spec.num_autoencoders} autoencoders (generic + one per task), got {len(autoencoders)}"
        )
    device = resolve_device(spec.device)
    apply_speed(spec.speed)
    model = zero_shot_model(spec.backbone, spec.speed, runtime, device)
    model.set_trainable(None)
    prepared = PreparedDataset(data)
    if prepared.name != spec.dataset:
        raise ValueError(f"{data} holds dataset {prepared.name}, not {spec.dataset}")
    img_size = image_size_of(model)
    if prepared.meta["eval_size"] != img_size:
        raise ValueError(f"{spec.dataset} was prepared at {prepared.meta['eval_size']} px, the model needs {img_size}")
    bs = spec.batch_size
    zs = image_features(model, prepared.test_batches(bs, device), ZERO_SHOT, device)
    # the zero-shot text head is the same for every checkpoint: computed here, once per test set
    zs_head = text_head(
        model, tokenizer_for(model.backbone), prepared.meta["classnames"], prepared.meta["templates"], ZERO_SHOT, device
    ).cpu()
    extractor = feature_extractor(spec.feature).to(device)
    trained, initial = [], []
    for k, path in enumerate(autoencoders):
        ae_0 = autoencoder_template(k, img_size, extractor, spec.code_dim, spec.seed)
        ae_t = autoencoder_template(k, img_size, extractor, spec.code_dim, spec.seed)
        meta = load_autoencoder(path, ae_t)
        if meta["index"] != k:
            raise CheckpointError(f"{path} is autoencoder {meta['index']}, expected autoencoder {k}")
        if meta["initial_state"] is not None:  # imported: the release's own untrained weights, not our seeded ones
            ae_0.load_state_dict(meta["initial_state"])
        initial.append(ae_0.to(device).eval())
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
            "labels": torch.from_numpy(np.array(labels)),
        },
        {
            "kind": "features",
            "dataset": spec.dataset,
            "backbone_fingerprint": model.fingerprint,
            "cost": cost(start, device),
            **provenance(spec),
        },
    )
    return Path(out)


def evaluate_step(
    spec: EvaluateSpec,
    runtime: Runtime | None,
    data_root: str | Path,
    features: Mapping[str, str | Path],
    out: str | Path,
    checkpoint: str | Path | None = None,
    previous: str | Path | None = None,
) -> Path:
    """Evaluate task `spec.task`'s checkpoint (or, with spec.task None, zero-shot CLIP) on every dataset of the
    order, with DDAS routing; `features` gives each dataset's features file.

    With `runtime.reuse_features` (the default), a task's evaluation reads the routed-feature cache that the
    previous checkpoint's evaluation wrote beside `previous` (its evaluation JSON; default: beside `out`), reuses
    the groups of samples whose features are provably unchanged (reuse.py) and writes its own cache beside `out`.
    The numbers are the same either way."""
    start = time.time()
    if (checkpoint is None) != (spec.task is None):
        raise ValueError("give a checkpoint exactly when evaluating a task (zero-shot CLIP needs none)")
    device = resolve_device(spec.device)
    apply_speed(spec.speed)
    if spec.task is None:
        model = zero_shot_model(spec.backbone, spec.speed, runtime, device)
    else:
        model = adapted_model(spec, runtime, "cpu")
        meta = load_task_checkpoint(checkpoint, model)
        if meta["task"] != spec.task:
            raise CheckpointError(f"{checkpoint} is the checkpoint of task {meta['task']}, not of task {spec.task}")
    model.set_trainable(None)
    reuse = spec.task is not None and (runtime is None or runtime.reuse_features)
    model.to(device).eval()
    tok = tokenizer_for(model.backbone)
    results = {}
    work = {"image_forwards": 0, "reused": 0}
    cache_in = Path(previous if previous is not None else out).parent / REUSE_DIR
    cache_out = Path(out).parent / REUSE_DIR
    digests = ModelDigests(model) if reuse else None
    for name in spec.datasets:
        prepared = PreparedDataset(Path(data_root) / name)
        tensors, fmeta = load_tensors(features[name])
        if fmeta.get("backbone_fingerprint") != model.fingerprint:
            raise CheckpointError(f"{features[name]} was computed with another backbone")
        routes = routes_of(spec, tensors)
        cache = None
        if reuse:
            cache = RoutedFeatureCache(model, prepared.meta["sha256"]["test_images.npy"], spec.speed, digests)
            cache.load(cache_in / f"{name}.safetensors")
        res = evaluate_dataset(
            model,
            tok,
            prepared.meta["classnames"],
            prepared.meta["templates"],
            lambda p=prepared: p.test_batches(spec.batch_size, device, lazy=True),
            routes=routes,
            device=device,
            zero_shot_features=tensors["zero_shot"],
            zero_shot_head=tensors.get("zero_shot_head"),
            batch_size=spec.batch_size,
            feature_cache=cache,
        )
        if cache is not None:
            cache.save(cache_out / f"{name}.safetensors", name)
            for k, v in cache.stats().items():
                work[k] += v
        results[name] = res.to_json()
        log.info("task %s on %s: %.2f%%", spec.task, name, res.accuracy)
    write_json(
        out,
        seal(
            {
                "task": spec.task,
                "trained_on": None if spec.task is None else spec.datasets[spec.task],
                "results": results,
                "cost": {**cost(start, device), **({"work": work} if reuse else {})},
                **provenance(spec),
            }
        ),
    )
    return Path(out)


def routes_of(spec: EvaluateSpec, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Every test sample's route: zero-shot for zero-shot CLIP, the task's router without DDAS, else DDAS's choice
    among autoencoder 0 and those of tasks 0..task (trained) and the later ones (at their initial weights)."""
    n = len(tensors["labels"])
    if spec.task is None:
        return torch.full((n,), ZERO_SHOT, dtype=torch.long)
    d = spec.decision
    if not d.enabled:
        return torch.full((n,), spec.task, dtype=torch.long)
    n_trained = spec.task + 2  # autoencoder 0 and those of tasks 0..task
    mse = torch.cat([tensors["mse_trained"][:, :n_trained], tensors["mse_initial"][:, n_trained:]], dim=1)
    opts = DDASOptions(d.threshold, d.only_trained, d.per_sample, spec.batch_size)
    return decide_routes(mse, n_trained, opts)
