"""Contrastive pretraining of the mini benchmark's tiny CLIP, standing in for OpenAI's weights.

Images of the captioned pretraining pool are matched against the captions of every concept in the
pool (a random template each step): a cross-entropy over image-text similarities, as CLIP's image-side
loss with all concepts as negatives. The pool is disjoint from every task's train and test splits.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoint import save_tensors
from ..data.batches import TrainBatches
from ..data.prepared import PreparedDataset
from ..data.transforms import train_transform
from ..model.clip import BackboneSpec, MoECLIP, create_backbone, tokenizer_for
from ..model.moe import ZERO_SHOT, MoESpec
from ..steps.record import cost
from .loop import progress_bar
from .schedules import cosine_lr


def pretrain(
    pool: PreparedDataset,
    model_name: str,
    out: str | Path,
    *,
    iterations: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
    progress: bool = True,
    extra: dict | None = None,
) -> dict:
    """Train every backbone weight from random initialisation; save an open_clip state dict (safetensors) whose
    metadata records the run (held-out accuracy, cost) and `extra` (provenance: config hash, commit)."""
    start = time.time()
    torch.manual_seed(seed)
    spec = BackboneSpec(model_name, True, None)
    clip = create_backbone(spec)
    clip.requires_grad_(True)
    # The token embedding stays at its random initialisation (fixed random token codes): updating the
    # 49,408-row table every step would cost more than the rest of the model together.
    clip.token_embedding.requires_grad_(False)
    # The temperature is fixed at CLIP's final value (logit scale 100), as the paper's backbone has it.
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(100.0))
    clip.logit_scale.requires_grad_(False)
    # only the zero-shot route is used: the adapter is a placeholder the forward pass never reaches
    placeholder = MoESpec(num_experts=1, top_k=1, bottleneck=1, num_routers=1, dropout=0.0, scale=0.0, noise_epsilon=0.0)
    model = MoECLIP(clip, placeholder, spec, init_seed=seed).to(device)
    params = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    tok = tokenizer_for(spec)
    captions: list[list[str]] = pool.meta["captions"]
    size = int(clip.visual.image_size[0] if isinstance(clip.visual.image_size, (tuple, list)) else clip.visual.image_size)
    batches = TrainBatches(pool.train_dataset(), train_transform(size), batch_size, seed, 0)
    gen = torch.Generator().manual_seed(seed)
    clip.train()
    bar = progress_bar(iterations, 0, "pretrain") if progress else None
    for it, images, labels in batches.iterate(0, iterations):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(it, lr, max(iterations // 10, 1), iterations)
        pick = torch.randint(0, 1 << 30, (len(captions),), generator=gen)
        texts = tok([c[int(p) % len(c)] for c, p in zip(captions, pick, strict=True)]).to(device)
        img = model.encode_image(images.to(device), ZERO_SHOT, normalize=True)
        txt = model.encode_text(texts, ZERO_SHOT, normalize=True)
        logits = clip.logit_scale.exp() * img @ txt.T
        loss = F.cross_entropy(logits, labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if bar is not None:
        bar.close()
    clip.eval()
    acc = _pool_accuracy(model, pool, tok, captions, device)
    step_cost = cost(start, torch.device(device), sum(p.numel() for p in params))
    info = {"iterations": iterations, "held_out_accuracy": acc, "wall_seconds": step_cost["wall_seconds"]}
    meta = {"kind": "backbone", "model": model_name, **info, "cost": step_cost, **(extra or {})}
    save_tensors(out, {k: v for k, v in clip.state_dict().items()}, meta)
    return info


@torch.no_grad()
def _pool_accuracy(model: MoECLIP, pool: PreparedDataset, tok, captions, device) -> float:
    texts = [c[0] for c in captions]
    txt = model.encode_text(tok(texts).to(device), ZERO_SHOT, normalize=True)
    correct = total = 0
    for x, y in pool.test_batches(256):
        img = model.encode_image(x.to(device), ZERO_SHOT, normalize=True)
        correct += int(((img @ txt.T).argmax(1).cpu() == y).sum())
        total += len(y)
    return 100.0 * correct / max(total, 1)
