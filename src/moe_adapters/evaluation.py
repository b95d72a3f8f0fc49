"""Evaluation of one checkpoint on one dataset: template-ensembled text heads and DDAS routing (SPEC 5-6)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .model.clip import MoECLIP
from .model.ddas import Autoencoder, autoencoder_mse
from .model.moe import ZERO_SHOT
from .reuse import RoutedFeatureCache

EVAL_LOGIT_SCALE = 100.0


@torch.no_grad()
def text_head(
    model: MoECLIP,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    route: int,
    device: str | torch.device = "cpu",
    chunk: int = 1024,
) -> torch.Tensor:
    """Class weights [C, D]: per class, the mean of the L2-normalised embeddings of all templates, renormalised."""
    prompts = [t.format(c=c) for c in classnames for t in templates]
    embs = []
    for i in range(0, len(prompts), chunk):
        tokens = tokenizer(prompts[i : i + chunk]).to(device)
        embs.append(model.encode_text(tokens, route, normalize=True))
    e = torch.cat(embs).view(len(classnames), len(templates), -1).mean(dim=1)
    return e / e.norm(dim=-1, keepdim=True)


@dataclass
class DatasetResult:
    """Accuracy on one test set and how its samples were routed."""

    correct: int
    total: int
    routes: dict[int, int] = field(default_factory=dict)  # route -> number of samples
    batch_routes: dict[int, int] = field(default_factory=dict)  # route -> number of batches

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.total, 1)

    def to_json(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "correct": self.correct,
            "total": self.total,
            "routes": {str(k): v for k, v in sorted(self.routes.items())},
            "batch_routes": {str(k): v for k, v in sorted(self.batch_routes.items())},
        }


def batch_route_counts(routes: torch.Tensor, batch_size: int) -> dict[int, int]:
    """How many evaluation batches went to each route (per-sample routes, batch = consecutive samples)."""
    c: Counter = Counter()
    for i in range(0, len(routes), batch_size):
        for r, n in Counter(routes[i : i + batch_size].tolist()).items():
            c[int(r)] += n / len(routes[i : i + batch_size])
    return {k: round(v, 6) if v != int(v) else int(v) for k, v in c.items()}


@torch.no_grad()
def routed_logits(
    model: MoECLIP,
    x: torch.Tensor | Callable[[], torch.Tensor] | None,
    routes: torch.Tensor,
    heads: Callable[[int], torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    zero_shot_features: torch.Tensor | None = None,
    feature_cache: RoutedFeatureCache | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Logits [B, C] of one batch; each sample uses the image route and text head of its route.

    Samples routed to ZERO_SHOT use `zero_shot_features` [B, D] when given (computed once per test set). `x` may be
    a function that reads the batch's images: it is called only when some route needs an image forward. With a
    `feature_cache`, a route's group of samples (test-set positions `offset + i`) takes its features from the cache
    where they are provably those this forward would give (see reuse.py), and records them otherwise.
    """
    logits = None
    images = x

    def read() -> torch.Tensor:
        nonlocal images
        if images is None:
            raise ValueError("a route needs the batch's images, and none were given")
        if callable(images):
            images = images()
        return images

    for route in routes.unique().tolist():
        sel = (routes == route).nonzero(as_tuple=True)[0]
        if route == ZERO_SHOT and zero_shot_features is not None:
            feats = zero_shot_features[sel].to(device)
        else:
            cached = None
            members = sel.cpu() + offset
            if feature_cache is not None and route != ZERO_SHOT:
                cached = feature_cache.lookup(route, members)
            if cached is not None:
                feats = cached.to(device)
            else:
                xb = read()
                xs = xb if len(sel) == len(routes) else xb[sel.to(xb.device)]
                counts = None
                if feature_cache is not None and route != ZERO_SHOT:
                    counts = torch.zeros(len(model.visual_moe), model.spec.num_experts, dtype=torch.long, device=device)
                feats = model.encode_image(xs.to(device), route, counts=counts, normalize=True)
                if counts is not None:
                    feature_cache.record(route, members, feats, counts > 0)
        part = EVAL_LOGIT_SCALE * feats @ heads(route).T
        if logits is None:
            logits = part.new_empty(len(routes), part.shape[1])
        logits[sel.to(device)] = part
    return logits


def classify(
    model: MoECLIP,
    images: Iterable[tuple[torch.Tensor | Callable[[], torch.Tensor], torch.Tensor]],
    routes: torch.Tensor,
    heads: Callable[[int], torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    zero_shot_features: torch.Tensor | None = None,
    feature_cache: RoutedFeatureCache | None = None,
) -> tuple[int, int]:
    """Count correct top-1 predictions over a test set, batch by batch in test-set order.

    A batch's images may be a function that reads them (see PreparedDataset.test_batches(lazy=True)): it is read
    only when some sample of the batch needs an image forward (not zero-shot with cached features, not reused).
    """
    correct = total = 0
    for x, y in images:
        n = len(y)
        r = routes[total : total + n]
        zs = None if zero_shot_features is None else zero_shot_features[total : total + n]
        logits = routed_logits(
            model, x, r, heads, device=device, zero_shot_features=zs, feature_cache=feature_cache, offset=total
        )
        correct += int((logits.argmax(dim=1) == y.to(device)).sum())
        total += n
    return correct, total


@torch.no_grad()
def ddas_mse(
    extractor: nn.Module,
    autoencoders: Sequence[Autoencoder],
    images: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Per-sample reconstruction error [N, K] of a test set under every autoencoder."""
    out = [autoencoder_mse(extractor, list(autoencoders), x.to(device)).cpu() for x, _ in images]
    return torch.cat(out)


@torch.no_grad()
def image_features(
    model: MoECLIP, images: Iterable[tuple[torch.Tensor, torch.Tensor]], route: int, device="cpu"
) -> torch.Tensor:
    """Normalised image embeddings [N, D] of a test set through one route."""
    return torch.cat([model.encode_image(x.to(device), route, normalize=True).cpu() for x, _ in images])


def evaluate_dataset(
    model: MoECLIP,
    tokenizer: Callable,
    classnames: Sequence[str],
    templates: Sequence[str],
    images: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    *,
    routes: torch.Tensor,
    device: str | torch.device = "cpu",
    zero_shot_features: torch.Tensor | None = None,
    zero_shot_head: torch.Tensor | None = None,
    batch_size: int,
    feature_cache: RoutedFeatureCache | None = None,
) -> DatasetResult:
    """Accuracy of `model` on one test set, routing every sample by `routes` (DDAS's decision, or one route).

    `images` returns a fresh iterable of (CLIP-normalised images, labels) batches in test-set order.
    Text heads are built once per route actually used; `zero_shot_head` (computed once per test set, the
    same for every checkpoint) stands in for the zero-shot route's. `feature_cache` reuses routed image features
    where provably identical (reuse.py); the result is the same with it as without.
    """
    model.eval()
    cache: dict[int, torch.Tensor] = {}
    if zero_shot_head is not None:
        cache[ZERO_SHOT] = zero_shot_head.to(device)

    def heads(route: int) -> torch.Tensor:
        if route not in cache:
            cache[route] = text_head(model, tokenizer, classnames, templates, route, device)
        return cache[route]

    correct, total = classify(
        model, images(), routes, heads, device=device, zero_shot_features=zero_shot_features,
        feature_cache=feature_cache,
    )
    if total != len(routes):
        raise ValueError(f"{len(routes)} routes for a test set of {total} images")
    samples = Counter(routes.tolist())
    return DatasetResult(
        correct=correct,
        total=total,
        routes={int(k): v for k, v in samples.items()},
        batch_routes=batch_route_counts(routes, batch_size),
    )
