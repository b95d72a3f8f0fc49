"""The protocol's image transforms (SPEC 4): the random training crop and the deterministic evaluation geometry."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision import transforms as T

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def train_transform(size: int, mean=CLIP_MEAN, std=CLIP_STD) -> Callable:
    """Protocol train transform: RandomResizedCrop(size, scale 0.9-1.0, bicubic), RGB, tensor, normalise; no flip."""
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            _to_rgb,
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_geometry(size: int) -> Callable:
    """The deterministic part of the eval transform (resize bicubic, centre crop), cacheable as uint8."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), _to_rgb])


def eval_transform(size: int, mean=CLIP_MEAN, std=CLIP_STD) -> Callable:
    """Protocol eval transform: Resize(size, bicubic), CenterCrop(size), RGB, tensor, normalise."""
    return T.Compose([eval_geometry(size), T.ToTensor(), T.Normalize(mean, std)])


def normalize_uint8(batch: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """uint8 [B, 3, H, W] (already resized and cropped) to CLIP-normalised float, exactly as ToTensor+Normalize."""
    x = batch.float().div(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
