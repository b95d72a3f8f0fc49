"""The training step: task k of the order, from task k-1's checkpoint, resumable and bit-exact on restart."""

from __future__ import annotations

import time
from pathlib import Path

from ..checkpoint import FROZEN_UNKNOWN, CheckpointError, load_task_checkpoint, save_task_checkpoint
from ..data.prepared import PreparedDataset
from ..model.clip import tokenizer_for
from ..training.loop import ResumableRun
from ..training.task import TaskTrainConfig, train_task
from .build import adapted_model, apply_speed, resolve_device
from .record import cost, provenance, resume_identity, resume_path
from .specs import Runtime, TaskSpec


def task_config(spec: TaskSpec) -> TaskTrainConfig:
    return TaskTrainConfig(
        lr=spec.lr,
        iterations=spec.iterations,
        batch_size=spec.batch_size,
        warmup=spec.warmup,
        weight_decay=spec.weight_decay,
        beta1=spec.beta1,
        beta2=spec.beta2,
        label_smoothing=spec.label_smoothing,
        seed=spec.seed,
        freeze_top=spec.freeze_top,
        shots=spec.shots,
        image_size=spec.image_size,
    )


def train_task_step(
    spec: TaskSpec,
    runtime: Runtime,
    data: str | Path,
    out: str | Path,
    prev: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train task `spec.task` (route = task) on the prepared dataset `data`, starting from checkpoint `prev`."""
    start = time.time()
    if (prev is None) != (spec.task == 0):
        raise ValueError("task 0 starts from fresh adapters (no --prev); every later task needs --prev")
    device = resolve_device(spec.device)
    apply_speed(spec.speed)
    prepared = PreparedDataset(data)
    if prepared.name != spec.dataset:
        raise ValueError(f"{data} holds dataset {prepared.name}, task {spec.task} trains on {spec.dataset}")
    model = adapted_model(spec, runtime, "cpu", init_seed=spec.seed)
    if prev is not None:
        meta = load_task_checkpoint(prev, model)
        if meta.get("frozen_set") == FROZEN_UNKNOWN:
            raise CheckpointError(
                f"{prev} was imported from the authors' released files, which hold no frozen set (the reference "
                "keeps it in a separate frozen-list file); training on from it would let frozen experts change. "
                "Imported checkpoints are for evaluation only: train from this project's own checkpoints"
            )
        if meta["task"] != spec.task - 1:
            raise CheckpointError(
                f"{prev} is the checkpoint of task {meta['task']}, task {spec.task} needs task {spec.task - 1}"
            )
    out = Path(out)
    run = ResumableRun(
        resume_path(out),
        resume_identity(spec, {"prev": prev, "data": Path(data) / "meta.json"}),
        runtime.checkpoint_every,
    )
    counts = train_task(
        model,
        spec.task,
        prepared.task_data(),
        tokenizer_for(model.backbone),
        task_config(spec),
        device=device,
        resume=run,
        num_workers=runtime.num_workers,
        progress=progress,
    )
    trainable = sum(p.numel() for p in model.set_trainable(spec.task))
    model.set_trainable(None)
    save_task_checkpoint(
        out,
        model,
        task=spec.task,
        dataset=spec.dataset,
        counts=counts,
        extra={
            "cost": cost(start, device, trainable, elapsed=run.elapsed()),
            "resumed_at": run.resumed_at,
            **provenance(spec),
        },
    )
    run.discard()
    return out
