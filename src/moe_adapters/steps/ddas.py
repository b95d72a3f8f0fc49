"""The DDAS step: train autoencoder k (0: the generic data, k: task k-1) on its dataset's features."""

from __future__ import annotations

import time
from pathlib import Path

from ..checkpoint import save_autoencoder
from ..data.batches import TrainBatches, few_shot_subset
from ..data.prepared import PreparedDataset
from ..data.transforms import train_transform
from ..training.autoencoder import AETrainConfig, train_autoencoder
from ..training.loop import ResumableRun
from .build import apply_speed, autoencoder_template, feature_extractor, resolve_device
from .record import cost, provenance, resume_identity, resume_path
from .specs import AutoencoderSpec, Runtime


def autoencoder_batches(spec: AutoencoderSpec, prepared: PreparedDataset, num_workers: int) -> tuple[TrainBatches, int]:
    """The autoencoder's batches and the batches per epoch its step decay counts.

    Full-shot: the augmented train split. Few-shot (as the reference's few-shot DDAS): the first `shots` images per
    class met in one augmented pass, kept as fixed tensors (crops drawn once), while the decay still counts epochs
    of the full loader.
    """
    full = TrainBatches(
        prepared.train_dataset(), train_transform(spec.image_size), spec.batch_size, spec.seed + spec.index, num_workers
    )
    if spec.shots <= 0:
        return full, full.batches_per_epoch
    subset = few_shot_subset(full, spec.shots, len(prepared.meta["classnames"]))
    return TrainBatches(subset, None, spec.batch_size, spec.seed + spec.index + 1, 0), full.batches_per_epoch


def train_autoencoder_step(
    spec: AutoencoderSpec, runtime: Runtime, data: str | Path, out: str | Path, progress: bool = True
) -> Path:
    """Train DDAS autoencoder `spec.index` on the prepared dataset `data`."""
    from ..checkpoint import CheckpointError

    start = time.time()
    prepared = PreparedDataset(data)
    if prepared.name != spec.dataset:
        raise CheckpointError(f"{data} holds dataset {prepared.name}, autoencoder {spec.index} trains on {spec.dataset}")
    device = resolve_device(spec.device)
    apply_speed(spec.speed)
    extractor = feature_extractor(spec.feature)
    ae = autoencoder_template(spec.index, spec.image_size, extractor, spec.code_dim, spec.seed)
    batches, decay_batches = autoencoder_batches(spec, prepared, runtime.num_workers)
    out = Path(out)
    run = ResumableRun(
        resume_path(out), resume_identity(spec, {"data": Path(data) / "meta.json"}), runtime.checkpoint_every
    )
    losses = train_autoencoder(
        ae,
        extractor,
        batches,
        AETrainConfig(spec.iterations, spec.lr, spec.weight_decay, spec.decay_every_epochs, spec.seed),
        name=f"{spec.index}:{spec.dataset}",
        device=device,
        resume=run,
        decay_batches=decay_batches,
        progress=progress,
    )
    save_autoencoder(
        out,
        ae.cpu(),
        index=spec.index,
        trained=True,
        extra={
            "dataset": spec.dataset,
            "feature": spec.feature.kind,
            "train_images": len(batches.dataset),
            "final_loss": losses[-1] if losses else None,
            "cost": cost(start, device, sum(p.numel() for p in ae.parameters()), elapsed=run.elapsed()),
            "resumed_at": run.resumed_at,
            **provenance(spec),
        },
    )
    run.discard()
    return out
