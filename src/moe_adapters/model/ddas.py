"""DDAS, the Distribution-Discriminative Auto-Selector (SPEC section 5): feature extractor, autoencoders, decision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .moe import ZERO_SHOT

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet weights for AlexNet


class MissingFeatureWeightsError(FileNotFoundError):
    """The DDAS feature extractor's weights are not on this machine."""


def alexnet_weights_path(weights: str | Path | None = None) -> Path:
    """Where the AlexNet weights are read from: ddas.feature_weights, or (torchvision) the torch hub cache."""
    if weights in (None, "torchvision"):
        return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    return Path(weights).expanduser()


def alexnet_weights(weights: str | Path | None = None) -> Path:
    """The AlexNet weights file, or MissingFeatureWeightsError naming where it goes and where to get it."""
    path = alexnet_weights_path(weights)
    if not path.is_file():
        raise MissingFeatureWeightsError(
            f"AlexNet ImageNet weights not found at {path}. Download "
            f"https://download.pytorch.org/models/{ALEXNET_FILE} (torchvision AlexNet_Weights.IMAGENET1K_V1) "
            f"to that path, or set ddas.feature_weights in the config"
        )
    return path


class AlexNetConv5(nn.Module):
    """Frozen AlexNet `features` without its last ReLU and MaxPool (conv5 pre-activation), then a sigmoid."""

    def __init__(self, weights: str | Path | None = None, pretrained: bool = True):
        super().__init__()
        from torchvision.models import alexnet

        net = alexnet(weights=None)
        if pretrained:
            path = alexnet_weights(weights)
            from ..checkpoint import safe_torch_load

            net.load_state_dict(safe_torch_load(path))
        self.body = net.features[:-2]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # the extractor is always in eval mode
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(images).flatten(1))


class PixelFeatures(nn.Module):
    """A download-free feature for small settings: the image average-pooled to size x size, then a sigmoid."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.adaptive_avg_pool2d(images, self.size).flatten(1))


def build_feature_extractor(kind: str, *, weights: str | None = None, pixel_size: int | None = None) -> nn.Module:
    """The DDAS feature extractor named by the config."""
    if kind == "alexnet":
        return AlexNetConv5(weights)
    if kind == "alexnet_random":  # shapes only (parameter counts, tests); never for results
        return AlexNetConv5(pretrained=False)
    if kind == "pixels":
        return PixelFeatures(pixel_size)
    raise ValueError(f"unknown DDAS feature extractor {kind!r} (alexnet, pixels)")


def feature_dim(extractor: nn.Module, image_size: int) -> int:
    with torch.no_grad():
        return int(extractor(torch.zeros(1, 3, image_size, image_size)).shape[1])


class Autoencoder(nn.Module):
    """Linear(D, code) + ReLU, Linear(code, D) + Sigmoid: one per task, plus autoencoder 0 for generic data."""

    def __init__(self, input_dim: int, code_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(input_dim, code_dim), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code_dim, input_dim), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def per_sample_mse(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction error of each sample: mean over features of the squared error."""
        return (self(x) - x).pow(2).mean(dim=1)


def init_autoencoder(index: int, input_dim: int, code_dim: int, seed: int) -> Autoencoder:
    """Autoencoder `index` at its initial weights, identical on every machine and in every job.

    The reference builds all autoencoders at once and carries the untrained ones from job to job;
    seeding each by its index gives every job the same untrained weights without that chain.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + index)
        return Autoencoder(input_dim, code_dim)




@dataclass(frozen=True)
class DDASOptions:
    """The routing decision's settings (from the run config's ddas and eval sections)."""

    threshold: float
    only_trained: bool  # fix: ignore autoencoders of tasks not yet trained
    per_sample: bool  # fix: decide per image instead of per batch
    batch_size: int


def decide_routes(mse: torch.Tensor, n_trained: int, opts: DDASOptions) -> torch.Tensor:
    """Route of every sample from the per-sample MSE of every autoencoder, mse [N, K].

    Per batch of `opts.batch_size` consecutive samples (or per sample), the autoencoder with the
    lowest mean MSE wins (the first one on ties); autoencoder 0 or an MSE above the threshold
    sends the batch to ZERO_SHOT, autoencoder k>=1 to route k-1. `n_trained` is how many
    autoencoders (0..n_trained-1) are trained; it only matters with only_trained.
    """
    if mse.ndim != 2 or mse.shape[1] < 1:
        raise ValueError(f"mse must be [samples, autoencoders], got {tuple(mse.shape)}")
    n, k = mse.shape
    cand = mse if not opts.only_trained else mse[:, : max(1, min(n_trained, k))]
    if opts.per_sample:
        scores = cand
        group = torch.arange(n)
    else:
        group = torch.arange(n) // opts.batch_size
        n_groups = int(group[-1]) + 1 if n else 0
        sums = torch.zeros(n_groups, cand.shape[1], dtype=torch.float64).index_add_(0, group, cand.double())
        sizes = torch.bincount(group, minlength=n_groups).clamp_min(1).double().unsqueeze(1)
        scores = sums / sizes
    best_val, best = scores.min(dim=1)  # min returns the first index among equal values
    route = best - 1
    route[(best == 0) | (best_val > opts.threshold)] = ZERO_SHOT
    return route[group]


@torch.no_grad()
def autoencoder_mse(
    extractor: nn.Module, autoencoders: list[Autoencoder], images: torch.Tensor
) -> torch.Tensor:
    """Per-sample MSE [B, K] of a batch of CLIP-normalised images under every autoencoder."""
    feats = extractor(images)
    return torch.stack([ae.per_sample_mse(feats) for ae in autoencoders], dim=1)
