"""CLIP with a MoE adapter in every block of both towers; the route is an argument, never global state."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, text_global_pool
from torch import nn

from .moe import ZERO_SHOT, MoELayer, MoESpec

TOWERS = ("visual", "text")


class MissingWeightsError(FileNotFoundError):
    """Pretrained backbone weights are not on this machine."""


class BadWeightsError(ValueError):
    """A backbone weights file that is not weights the model can load."""


def register_model_configs() -> None:
    """Make the project's own open_clip model configs (the tiny test/mini models) known to open_clip."""
    cfg_dir = resources.files("moe_adapters") / "model_configs"
    open_clip.add_model_config(Path(str(cfg_dir)))


@dataclass(frozen=True)
class BackboneSpec:
    """Which open_clip model and weights the adapters sit on."""

    name: str
    quick_gelu: bool
    pretrained: str | None  # an open_clip tag, a local file, or None (random init)

    def describe(self) -> dict:
        return asdict(self)


def _resolve_pretrained(spec: BackboneSpec) -> str | None:
    """Return what open_clip should load, failing fast (no network) when weights are absent."""
    if spec.pretrained is None:
        return None
    p = Path(os.path.expanduser(spec.pretrained))
    if p.suffix in {".bin", ".pt", ".pth", ".safetensors"} or p.exists():
        if not p.is_file():
            raise MissingWeightsError(
                f"backbone weights file {p} does not exist; put the {spec.name} weights there "
                f"(see README, 'Backbone weights') or change model.pretrained in the config"
            )
        return str(p)
    # An open_clip pretrained tag: only a pre-filled cache may satisfy it offline.
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.name, spec.pretrained)
    if not cfg:
        raise MissingWeightsError(f"open_clip knows no pretrained tag {spec.pretrained!r} for {spec.name}")
    candidates: list[Path] = []
    if cfg.get("url"):
        candidates.append(Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"]))
    hub = cfg.get("hf_hub", "").rstrip("/")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id = "/".join(hub.split("/")[:2])
        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo_id, fname)
            if isinstance(hit, str):
                candidates.append(Path(hit))
    for c in candidates:
        if c.is_file():
            return str(c)
    raise MissingWeightsError(
        f"the {spec.name} '{spec.pretrained}' weights are not on this machine (looked in the Hugging Face "
        f"cache for {hub or '-'} and in ~/.cache/clip). On a machine with internet run "
        f"`python -c \"import open_clip; open_clip.create_model('{spec.name}', pretrained='{spec.pretrained}')\"` "
        f"and copy ~/.cache/huggingface here, or set model.pretrained to a local weights file (README: Backbone weights)"
    )


def create_backbone(spec: BackboneSpec, device: str | torch.device = "cpu") -> open_clip.CLIP:
    """Build the open_clip CLIP backbone (frozen, eval mode) from a spec, offline."""
    register_model_configs()
    weights = _resolve_pretrained(spec)
    if weights is not None and weights.endswith(".safetensors"):
        from ..checkpoint import CheckpointError, read_metadata

        try:
            read_metadata(weights)  # the mini's own CLIP (rule pretrain): checked against its content hash
        except CheckpointError as e:
            raise BadWeightsError(f"model.pretrained: {e}") from None
    quiet = logging.getLogger().level
    if weights is None:  # random weights are asked for: open_clip's warning about them is noise
        logging.getLogger().setLevel(logging.ERROR)
    try:
        # Random weights are seeded, so every job of a run builds the same backbone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(
                spec.name,
                pretrained=weights,
                force_quick_gelu=spec.quick_gelu,
                device=device,
                require_pretrained=weights is not None,
            )
    except Exception as e:
        if weights is None:
            raise
        detail = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:160]  # its first sentence
        if not os.path.getsize(weights):
            detail = "the file is empty"
        raise BadWeightsError(
            f"model.pretrained: {weights} is not a weights file open_clip can load into {spec.name} "
            f"({type(e).__name__}{': ' + detail if detail else ''})"
        ) from e
    finally:
        logging.getLogger().setLevel(quiet)
    if not isinstance(model, open_clip.CLIP):
        raise TypeError(f"{spec.name} is not a plain open_clip CLIP model ({type(model).__name__})")
    model.eval()
    model.requires_grad_(False)
    return model


def hash_tensor(h, t: torch.Tensor) -> None:
    """Feed a tensor's shape, dtype and bytes to the hash `h` (the same bytes on any device)."""
    h.update(json.dumps(list(t.shape)).encode())
    h.update(str(t.dtype).encode())
    h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def backbone_fingerprint(clip: nn.Module) -> str:
    """SHA-256 over the backbone's parameter names, shapes and values: its identity in checkpoints."""
    h = hashlib.sha256()
    for name, t in sorted(clip.state_dict().items()):
        h.update(name.encode())
        hash_tensor(h, t)
    return h.hexdigest()


def _attention(blk: ResidualAttentionBlock, q: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of a batch-first block on q [B, N, D], with a contiguous input to its projections.

    Without gradients this is open_clip's own call, so that evaluation stays bit for bit plain open_clip (its
    image blocks then take PyTorch's fused fast path). With gradients nn.MultiheadAttention cannot take that
    path: it transposes a batch-first input to sequence-first and hands the resulting non-contiguous view to the
    in-projection, which PyTorch then runs as a batched multiply over copies of the weight, about three times
    slower forward and four times backward than one matrix multiply. Here the sequence-first input is made
    contiguous first (one copy of the activations), as in OpenAI CLIP's sequence-first layout; the computation
    is the same, summed in another order (equal to about 1e-7 relative).
    """
    if not torch.is_grad_enabled() or getattr(blk.attn, "_compiled_call_impl", None) is not None:
        return blk.attention(q_x=q, attn_mask=attn_mask)  # evaluation, or speed.compile's compiled module
    a = blk.attn
    seq = q.transpose(0, 1).contiguous()  # [N, B, D]
    mask = attn_mask.to(q.dtype) if attn_mask is not None else None
    out, _ = F.multi_head_attention_forward(
        seq, seq, seq, a.embed_dim, a.num_heads, a.in_proj_weight, a.in_proj_bias, a.bias_k, a.bias_v,
        a.add_zero_attn, a.dropout, a.out_proj.weight, a.out_proj.bias,
        training=a.training, need_weights=False, attn_mask=mask,
    )
    return out.transpose(0, 1)


def _attention_at(blk: ResidualAttentionBlock, q: torch.Tensor, keep: torch.Tensor, attn_mask) -> torch.Tensor:
    """Self-attention outputs [B, K, D] at the positions keep [B, K] only, every token a key and a value.

    The queries, the attention rows and the out-projection of the other positions are never computed: what the
    last block needs when only some positions reach the output. The same computation as at those positions of
    _attention, summed in another order (the query and key/value projections as two multiplies instead of one).
    """
    a = blk.attn
    rows = torch.arange(q.shape[0], device=q.device).unsqueeze(1)
    query = q[rows, keep].transpose(0, 1).contiguous()  # [K, B, D]
    kv = q.transpose(0, 1).contiguous()  # [N, B, D]
    mask = None
    if attn_mask is not None:  # each kept position's own row of the mask, per sample and head: [B * H, K, N]
        mask = attn_mask.to(q.dtype)[keep].repeat_interleave(a.num_heads, dim=0)
    out, _ = F.multi_head_attention_forward(
        query, kv, kv, a.embed_dim, a.num_heads, a.in_proj_weight, a.in_proj_bias, a.bias_k, a.bias_v,
        a.add_zero_attn, a.dropout, a.out_proj.weight, a.out_proj.bias,
        training=a.training, need_weights=False, attn_mask=mask,
    )
    return out.transpose(0, 1)


class MoECLIP(nn.Module):
    """An open_clip CLIP whose every residual block carries a parallel MoE adapter."""

    def __init__(self, clip: open_clip.CLIP, spec: MoESpec, backbone: BackboneSpec, init_seed: int):
        super().__init__()
        for tower, blocks in (("visual", clip.visual.transformer), ("text", clip.transformer)):
            if not blocks.batch_first:
                raise TypeError(f"{tower} tower must be batch_first")
            for b in blocks.resblocks:
                if type(b) is not ResidualAttentionBlock:
                    raise TypeError(f"{tower} blocks must be open_clip ResidualAttentionBlock, got {type(b)}")
                if not b.attn._qkv_same_embed_dim:
                    raise TypeError(f"{tower} blocks must pack their q, k, v projections (open_clip's default)")
        self.clip = clip
        self.spec = spec
        self.backbone = backbone
        # Adapter initialisation is seeded (train.seed), so every job and every machine starts from the same experts.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.visual_moe = nn.ModuleList(
                MoELayer(clip.visual.transformer.width, spec) for _ in clip.visual.transformer.resblocks
            )
            self.text_moe = nn.ModuleList(
                MoELayer(clip.transformer.width, spec) for _ in clip.transformer.resblocks
            )
        n_v, n_t = len(self.visual_moe), len(self.text_moe)
        self.register_buffer("frozen_visual", torch.zeros(n_v, spec.num_experts, dtype=torch.bool))
        self.register_buffer("frozen_text", torch.zeros(n_t, spec.num_experts, dtype=torch.bool))
        self.batched_experts = True
        self.truncate_text = True
        # With gradients (training), the last block computes only the positions that reach the output (token 0,
        # and the text's end token): exact, as the other positions' outputs are never read. Evaluation runs
        # open_clip's blocks as they are.
        self.cut_last_block = True
        self.eval_noise = False  # CIL reference quirk: gating noise stays on at test time
        self.autocast_dtype: torch.dtype | None = None  # speed.bf16_autocast: torch.bfloat16 (not exact)
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = backbone_fingerprint(self.clip)
        return self._fingerprint

    def moe_layers(self, tower: str) -> nn.ModuleList:
        return {"visual": self.visual_moe, "text": self.text_moe}[tower]

    def frozen(self, tower: str) -> torch.Tensor:
        return {"visual": self.frozen_visual, "text": self.frozen_text}[tower]

    # ------------------------------------------------------------------ forward
    def _noisy(self) -> bool:
        return self.training or self.eval_noise

    def _blocks(self, blocks, moe_layers, x, attn_mask, route, counts, keep=None):
        """The blocks on x [B, N, D]. `keep` [B, K] (its first column 0, the routing token): the positions that
        reach the output; where the last block is cut (see cut_last_block), it returns only those [B, K, D]."""
        if route == ZERO_SHOT:
            for blk in blocks:
                x = blk(x, attn_mask=attn_mask)
            return x
        noisy = self._noisy()
        cut = self._cuts_last_block(blocks, route, keep)
        for i, (blk, moe) in enumerate(zip(blocks, moe_layers, strict=True)):
            if cut and i == len(blocks) - 1:
                rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
                x = x[rows, keep] + blk.ls_1(_attention_at(blk, blk.ln_1(x), keep, attn_mask))
            else:
                x = x + blk.ls_1(_attention(blk, blk.ln_1(x), attn_mask))
            y = moe(x, route, noisy, None if counts is None else counts[i], self.batched_experts)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x))) + y
        return x

    def _cuts_last_block(self, blocks, route: int, keep) -> bool:
        return (
            keep is not None
            and route != ZERO_SHOT
            and self.cut_last_block
            and torch.is_grad_enabled()
            and getattr(blocks[-1].attn, "_compiled_call_impl", None) is None
        )

    def _check_route(self, route: int) -> None:
        if route != ZERO_SHOT and not 0 <= route < self.spec.num_routers:
            raise ValueError(
                f"route {route} is neither ZERO_SHOT nor a router in 0..{self.spec.num_routers - 1}"
            )

    @torch.no_grad()
    def randomize_adapters(self, std: float, seed: int) -> MoECLIP:
        """Trained-looking adapters for tests and benchmarks: every expert, router and noise weight drawn from
        N(0, std^2) with its own generator (a fresh model has zero up-projections and routers: plain CLIP)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if not name.startswith("clip."):
                p.copy_(torch.randn(p.shape, generator=g) * std)
        return self

    def compile_regions(self) -> None:
        """speed.compile: torch.compile the transformer blocks' pieces (regional compilation).

        Blocks of a tower share their code, so each piece compiles once and is reused by every block. The
        zero-shot route runs whole compiled blocks; adapted routes run compiled attention and MLP around the
        (uncompiled, data-dependent) expert routing. Not bit-exact (fused kernels): recorded as a deviation.
        """
        for blocks in (self.clip.visual.transformer.resblocks, self.clip.transformer.resblocks):
            for blk in blocks:
                blk.compile()
                blk.attn.compile()
                blk.mlp.compile()

    def _autocast(self, x: torch.Tensor):
        enabled = self.autocast_dtype is not None
        return torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled)

    def encode_image(
        self, images: torch.Tensor, route: int, counts: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Image embeddings through router `route` (or ZERO_SHOT); `counts` [L, E] records selections."""
        if self.autocast_dtype is not None:
            with self._autocast(images):
                return self._encode_image(images, route, counts, normalize).float()
        return self._encode_image(images, route, counts, normalize)

    def _encode_image(self, images, route, counts, normalize):
        self._check_route(route)
        v = self.clip.visual
        x = v._embeds(images.to(v.conv1.weight.dtype))  # a float64 model (tests) takes float32 images too
        keep = None
        if v.attn_pool is None and v.pool_type == "tok":  # the output reads the class token only
            keep = torch.zeros(x.shape[0], 1, dtype=torch.long, device=x.device)
        x = self._blocks(v.transformer.resblocks, self.visual_moe, x, None, route, counts, keep)
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return nn.functional.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(
        self, tokens: torch.Tensor, route: int, counts: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Text embeddings; sequences are cut after the longest prompt's end token when truncate_text is on.

        The cut is exact: the causal mask keeps later (padding) tokens from reaching the end token.
        """
        if self.autocast_dtype is not None:
            with self._autocast(tokens):
                return self._encode_text(tokens, route, counts, normalize).float()
        return self._encode_text(tokens, route, counts, normalize)

    def _encode_text(self, tokens, route, counts, normalize):
        self._check_route(route)
        c = self.clip
        if self.truncate_text and c.text_pool_type == "argmax" and c.attn_mask is not None:
            length = int(tokens.argmax(dim=-1).max()) + 1
            tokens = tokens[:, :length]
        n = tokens.shape[1]
        cast = c.transformer.get_cast_dtype()
        x = c.token_embedding(tokens).to(cast) + c.positional_embedding[:n].to(cast)
        mask = c.attn_mask[:n, :n] if c.attn_mask is not None else None
        keep = None
        if c.text_pool_type == "argmax":  # the output reads the end token; the router reads token 0
            end = tokens.argmax(dim=-1)
            keep = torch.stack([torch.zeros_like(end), end], dim=1)
        x = self._blocks(c.transformer.resblocks, self.text_moe, x, mask, route, counts, keep)
        x = c.ln_final(x)
        if self._cuts_last_block(c.transformer.resblocks, route, keep):  # [B, 2, D], the end token second
            x = x[:, 1]
        else:
            x = text_global_pool(x, tokens, c.text_pool_type, eos_token_id=getattr(c, "text_eos_id", None))
        if c.text_projection is not None:
            x = c.text_projection(x) if isinstance(c.text_projection, nn.Linear) else x @ c.text_projection
        return nn.functional.normalize(x, dim=-1) if normalize else x

    # ------------------------------------------------------------------ activate-freeze
    def new_counts(self) -> dict[str, torch.Tensor]:
        """Zeroed selection counters [layers, experts] per tower, on the model's device."""
        dev = self.frozen_visual.device
        return {
            "visual": torch.zeros(len(self.visual_moe), self.spec.num_experts, dtype=torch.long, device=dev),
            "text": torch.zeros(len(self.text_moe), self.spec.num_experts, dtype=torch.long, device=dev),
        }

    def set_trainable(self, task: int | None) -> list[nn.Parameter]:
        """Freeze the backbone, frozen experts and other tasks' routers; return what task `task` trains.

        `task=None` freezes everything (evaluation).
        """
        self.requires_grad_(False)
        params: list[nn.Parameter] = []
        if task is None:
            return params
        self._check_route(task)
        if task == ZERO_SHOT:
            raise ValueError("the zero-shot route has nothing to train")
        for tower in TOWERS:
            frozen = self.frozen(tower).cpu()
            for layer, moe in enumerate(self.moe_layers(tower)):
                for e, expert in enumerate(moe.experts):
                    if not frozen[layer, e]:
                        expert.requires_grad_(True)
                        params.extend(expert.parameters())
                for p in (moe.routers[task], moe.noise[task]):
                    p.requires_grad_(True)
                    params.append(p)
        return params

    def freeze_most_selected(self, counts: dict[str, torch.Tensor], per_layer: int) -> None:
        """Activate-freeze: the `per_layer` most selected experts of every layer and tower join the frozen set.

        As the reference: `torch.topk` over each layer's selection counts as a 1-D float32 CPU vector, so ties go
        to the experts that CPU topk picks; the frozen set only grows.
        """
        for tower in TOWERS:
            c = counts[tower].detach().to("cpu", torch.float32)
            frozen = self.frozen(tower)
            for layer in range(c.shape[0]):
                top = torch.topk(c[layer], per_layer).indices
                frozen[layer, top.to(frozen.device)] = True

    # ------------------------------------------------------------------ state
    def moe_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: experts, routers, noise weights and the frozen set."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def parameter_counts(self) -> dict[str, int]:
        def n(mod: nn.Module) -> int:
            return sum(p.numel() for p in mod.parameters())

        e_v = n(self.visual_moe[0].experts[0])
        e_t = n(self.text_moe[0].experts[0])
        router = sum(
            n_p.numel()
            for moe in (*self.visual_moe, *self.text_moe)
            for n_p in (moe.routers[0], moe.noise[0])
        )
        return {
            "total": n(self),
            "backbone": n(self.clip),
            "moe": n(self.visual_moe) + n(self.text_moe),
            "experts": sum(n(m.experts) for m in (*self.visual_moe, *self.text_moe)),
            "expert_vision": e_v,
            "expert_text": e_t,
            "router_per_task": router,
        }


def build_model(backbone: BackboneSpec, spec: MoESpec, init_seed: int, device: str | torch.device = "cpu") -> MoECLIP:
    """Backbone plus freshly initialised adapters (seeded by `init_seed`), on `device`."""
    clip = create_backbone(backbone, device="cpu")
    model = MoECLIP(clip, spec, backbone, init_seed)
    return model.to(device)


def tokenizer_for(backbone: BackboneSpec):
    """The open_clip tokenizer of the backbone (bundled vocabulary, no download)."""
    register_model_configs()
    return open_clip.get_tokenizer(backbone.name)
