"""Exact reuse of routed image features from one checkpoint's evaluation to the next (issue 17, item 3).

A group of test samples that DDAS sends to task t is forwarded together (the samples of one evaluation batch with
that route). Its features depend only on: the images, the backbone, router t and noise t, and the experts that some
member of the group chose at each layer (the batched and the dispatch paths read no other expert), plus the
numeric settings. So when every one of those tensors is bit-identical in checkpoint k and in an earlier checkpoint
k' that computed the same group (same samples, same route), the computation at k is the computation at k', and its
features are those of k', bit for bit. The only assumption is the one every bit-exactness claim of the project
makes: the same operations on the same inputs, on the same kind of device and software, give the same bits. No
batch-invariance is assumed: a group is reused whole, with its members exactly as they were, or recomputed whole.

The cache holds, per dataset, the groups the last evaluation used: their features, members, the experts each
group's computation read (per layer, the union of its members' choices) and a key. The key is a SHA-256 over what
the computation read: a signature of the setting (backbone fingerprint, adapter spec, test images' hash, device,
threads, torch version, expert path, autocast, TF32), route t's router and noise weights, the members, and the
content hash of every expert the group read. A lookup recomputes the key with the current checkpoint's tensors for
the stored expert set and reuses the features only when the keys are equal; anything else (a changed expert, a
different group, another device, a corrupt or foreign file) recomputes. The cache is never an input of a result:
removing it changes no number, only the time (`--reuse-features 0` does not read or write it).

Text heads are recomputed for every checkpoint (cheap: class prompts; not part of this cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_tensors, save_tensors
from .integrity import IntegrityError
from .model.clip import hash_tensor
from .steps.record import device_name

log = logging.getLogger(__name__)

KIND = "routed_features"
VERSION = 2  # 2: tensors hashed as the backbone fingerprint hashes them (model.clip.hash_tensor)


def expert_digests(model) -> list[list[str]]:
    """Content hash of every image-tower expert [layer][expert] (its four tensors, dtype and shape included)."""
    out = []
    for moe in model.visual_moe:
        row = []
        for e in moe.experts:
            h = hashlib.sha256()
            for p in (e.down_proj.weight, e.down_proj.bias, e.up_proj.weight, e.up_proj.bias):
                hash_tensor(h, p)
            row.append(h.hexdigest())
        out.append(row)
    return out


def route_digest(model, route: int) -> str:
    """Content hash of router `route`'s gate and noise weights in every image-tower layer."""
    h = hashlib.sha256()
    for moe in model.visual_moe:
        hash_tensor(h, moe.routers[route])
        hash_tensor(h, moe.noise[route])
    return h.hexdigest()


def signature(model, images_sha256: str, speed=None) -> str:
    """What else the computation depends on: backbone, adapter spec, test images, device and software, paths."""
    p = next(model.parameters())
    dev = p.device
    desc = {
        "version": VERSION,
        "backbone": model.fingerprint,
        "moe_spec": asdict(model.spec),
        "images": images_sha256,
        "dtype": str(p.dtype),
        "device": device_name(dev),  # a CPU's model too: another CPU's kernels can give other bits
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        "torch": torch.__version__,
        "batched_experts": bool(model.batched_experts),
        "autocast": str(model.autocast_dtype),
        "tf32": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32],
        "speed": None if speed is None else asdict(speed),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


class ModelDigests:
    """The content hashes of one checkpoint's experts (all) and routes (on first use), shared by the caches of
    every dataset that checkpoint evaluates, so each tensor is hashed once per checkpoint."""

    def __init__(self, model):
        self.model = model
        self.experts = expert_digests(model)
        self._routes: dict[int, str] = {}

    def route(self, route: int) -> str:
        if route not in self._routes:
            self._routes[route] = route_digest(self.model, route)
        return self._routes[route]


class RoutedFeatureCache:
    """Routed image features of one dataset, reused across checkpoints only where provably identical.

    `lookup(route, members)` returns the stored features of that exact group when its key, recomputed from the
    current model's tensors, matches; `record(...)` stores what was computed. `save(path)` writes the groups used
    by this evaluation (reused or computed), atomically and with a content hash.
    """

    def __init__(self, model, images_sha256: str, speed=None, digests: ModelDigests | None = None):
        self.model = model
        self.signature = signature(model, images_sha256, speed)
        self.digests = digests if digests is not None else ModelDigests(model)  # one per checkpoint, shared
        self.previous: dict[tuple[int, bytes], tuple[torch.Tensor, torch.Tensor, str]] = {}
        self.current: dict[tuple[int, bytes], tuple[torch.Tensor, torch.Tensor, str]] = {}
        self.reused = 0  # samples whose features came from the cache
        self.computed = 0  # samples forwarded through the image tower

    @property
    def active(self) -> bool:
        """Reuse needs deterministic features: no gating noise, no dropout (eval mode)."""
        return not (self.model.training or self.model.eval_noise)

    def key(self, route: int, members: torch.Tensor, used: torch.Tensor) -> str:
        h = hashlib.sha256()
        h.update(self.signature.encode())
        h.update(f"route {route} {self.digests.route(route)}".encode())
        hash_tensor(h, members.to(torch.int64))
        for layer, e in used.nonzero().tolist():
            h.update(f"{layer}.{e}:{self.digests.experts[layer][e]};".encode())
        return h.hexdigest()

    @staticmethod
    def _id(route: int, members: torch.Tensor) -> tuple[int, bytes]:
        return int(route), members.to("cpu", torch.int64).contiguous().numpy().tobytes()

    def lookup(self, route: int, members: torch.Tensor) -> torch.Tensor | None:
        if not self.active:
            return None
        gid = self._id(route, members)
        hit = self.previous.get(gid)
        if hit is None:
            return None
        feats, used, key = hit
        if self.key(route, members.cpu(), used) != key:
            return None
        self.current[gid] = hit
        self.reused += len(members)
        return feats

    def record(self, route: int, members: torch.Tensor, feats: torch.Tensor, used: torch.Tensor) -> None:
        self.computed += len(members)
        if not self.active:
            return
        members, used = members.cpu(), used.cpu().bool()
        self.current[self._id(route, members)] = (feats.detach().cpu(), used, self.key(route, members, used))

    # ------------------------------------------------------------------ files
    def load(self, path: str | Path) -> RoutedFeatureCache:
        """Read a previous evaluation's groups; a missing, corrupt or foreign file just means nothing to reuse."""
        path = Path(path)
        if not path.is_file():
            return self
        try:
            t, meta = load_tensors(path)
            if meta.get("kind") != KIND or meta.get("version") != VERSION:
                raise CheckpointError(f"{path} is not a routed-feature cache of version {VERSION}")
            offsets, routes, keys = t["offsets"].tolist(), t["routes"].tolist(), meta["keys"]
            for g, (route, key) in enumerate(zip(routes, keys, strict=True)):
                members = t["members"][offsets[g] : offsets[g + 1]]
                self.previous[self._id(route, members)] = (
                    t["features"][offsets[g] : offsets[g + 1]], t["used"][g].bool(), key
                )
        except (CheckpointError, IntegrityError, KeyError, ValueError, IndexError) as e:
            log.warning("routed-feature cache %s not used (%s): recomputing", path, e)
            self.previous = {}
        return self

    def save(self, path: str | Path, dataset: str) -> None:
        if not self.current:
            return
        groups = list(self.current.items())
        feats = [f for _, (f, _, _) in groups]
        members = [torch.frombuffer(bytearray(gid[1]), dtype=torch.int64) for gid, _ in groups]
        sizes = torch.tensor([0] + [len(m) for m in members], dtype=torch.int64)
        save_tensors(
            path,
            {
                "features": torch.cat(feats),
                "members": torch.cat(members),
                "offsets": torch.cumsum(sizes, 0),
                "routes": torch.tensor([gid[0] for gid, _ in groups], dtype=torch.int64),
                "used": torch.stack([u for _, (_, u, _) in groups]),
            },
            {"kind": KIND, "version": VERSION, "dataset": dataset, "keys": [k for _, (_, _, k) in groups]},
        )

    def stats(self) -> dict:
        return {"image_forwards": self.computed, "reused": self.reused}
