"""Data steps: prepare a dataset, pretrain the mini benchmark's tiny CLIP, check the backbone's weights."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from ..data.prepared import PreparedDataset
from ..fsutil import write_json
from .build import backbone_spec, resolve_device
from .record import cost, provenance
from .specs import BackboneStepSpec, PrepareSpec, PretrainSpec

log = logging.getLogger(__name__)


def prepare_step(spec: PrepareSpec, out: str | Path, *, data_root: str | Path, workers: int = 0) -> Path:
    """Build (mini) or fetch, verify, split and cache (paper) one dataset into the prepared format at `out`."""
    out = Path(out)
    if spec.benchmark == "mini":
        from ..data import mini

        return mini.prepare(spec.dataset, out, {"datasets": dict(spec.entries)}, spec.image_size)
    from ..data.mtil import prepare_dataset

    return prepare_dataset(
        spec.dataset, out, data_root=data_root, image_size=spec.image_size, protocol=spec.protocol, workers=workers
    )


def pretrain_step(spec: PretrainSpec, pool: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Mini benchmark only: pretrain the tiny CLIP that stands in for OpenAI's weights."""
    from ..training.pretrain import pretrain

    info = pretrain(
        PreparedDataset(pool),
        spec.model,
        out,
        iterations=spec.iterations,
        lr=spec.lr,
        batch_size=spec.batch_size,
        seed=spec.seed,
        device=resolve_device(spec.device),
        progress=progress,
        extra=provenance(spec),
    )
    log.info("pretrained %s: %s", out, info)
    return Path(out)


def backbone_step(spec: BackboneStepSpec, out: str | Path) -> Path:
    """Resolve the backbone weights (failing fast if absent) and record their identity."""
    from ..model.clip import MoECLIP, create_backbone
    from ..model.moe import MoESpec

    start = time.time()
    bspec = backbone_spec(spec.backbone)
    clip = create_backbone(bspec)
    model = MoECLIP(clip, MoESpec(1, 1, 1, 1, 0.0, 0.0, 0.0), bspec, init_seed=0)
    write_json(
        out,
        {
            **bspec.describe(),
            "fingerprint": model.fingerprint,
            "parameters": sum(p.numel() for p in clip.parameters()),
            "cost": cost(start, torch.device("cpu")),
            **provenance(spec),
        },
    )
    return Path(out)
