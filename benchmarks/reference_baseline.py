"""A faithful baseline: the MoE-Adapters CLIP computed the way the authors' code computes it, on our weights.

What the authors' code (JiazuoYu/MoE-Adapters4CL, mtil/clip/model.py, mtil/clip/adapter.py,
mtil/src/models/finetune.py) computes, and how, rebuilt here independently so that the benchmarks can time it
against our model in the same run, and check that both give the same loss, gradients and logits:

- OpenAI-CLIP towers in the sequence-first layout: the embeddings are permuted NLD -> LND (a view), every
  residual block works on [L, N, D], and each block's attention is a sequence-first ``nn.MultiheadAttention``
  called as ``attn(x, x, x, need_weights=False, attn_mask=mask)`` on the LayerNorm'd input (never its fast path:
  it is not batch-first). The image embedding is ``ln_post`` of token 0 times ``proj``; the text embedding is
  ``ln_final`` at the end token times ``text_projection``, over the full 77-token context.
- The MoE adapter of every block, in parallel with the MLP: ``x = x + mlp(ln_2(x)) + y`` where x is the
  post-attention hidden state. The router reads token 0 (CLS / start-of-text) as ``x @ W``; noisy top-k gating
  (noise ``randn * (softplus(x @ W_noise) + 1e-2)`` when the gating is noisy, ``topk(min(k + 1, E))``, softmax over
  the k kept logits, scattered into dense gates).
- The reference's SparseDispatcher semantics: the (sample, expert) pairs of the non-zero gates, grouped by
  expert; each sample's whole [L * D] slab gathered by index for each of its experts and split into one
  sub-batch per expert; EVERY expert is called, on an empty sub-batch when no sample chose it, and the empty
  outputs are dropped before the combine, so such an expert gets no gradient; the outputs multiplied by their
  gate and summed back per sample with ``index_add``.
- An expert: Linear(D, 64) -> ReLU -> dropout (p=0.1, training only) -> Linear(64, D), times 0.1.
- One training iteration: text features of EVERY class of the task recomputed (with gradients) from the full
  77-token prompts, then the image features, both L2-normalised, ``cross_entropy(logit_scale.exp() * img @
  txt.T, labels, label_smoothing)``, ``zero_grad()``, ``backward()``, ``AdamW.step()`` over every unfrozen expert
  and ALL routers and noise weights of every block (those of other tasks get no gradient, so AdamW skips them).
- What every MoE block also computes and the loss never uses, because it costs time: the balance loss
  (``cv_squared`` of importance and load, the load from the Normal-CDF ``_prob_in_top_k`` when the gating is
  noisy), and the selection counting with ``collections.Counter`` over ``torch.nonzero(gates)[:, 1].tolist()``
  into a per-layer float32 CPU vector (a device sync per block on a GPU). Our path counts too (``new_counts``).

What it leaves out (each would only add time to the baseline, so the ratios are conservative):
- ``torch.nn.DataParallel`` over two GPUs (scatter, replicas, gather; its Broadcast hands every trainable
  tensor a zero gradient rather than None);
- the unused ``ln_3`` LayerNorm and the ``adaptmlp`` alias of the last expert (no compute), the ``.to(x)`` casts
  and the fp16 -> fp32 conversions (no-ops in fp32), the learning-rate schedule, data loading and the per-step
  ``model.train()``.

The weights are our model's: the backbone tensors are shared with our open_clip model (the same storage: no copy,
no memory of its own) and the experts, routers and noise weights are copied, so both paths start from the same
numbers and keep their own gradients and optimizer states.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _shared(p: torch.Tensor) -> nn.Parameter:
    """The same storage as `p` (a frozen backbone tensor), as a parameter of the baseline."""
    return nn.Parameter(p.detach(), requires_grad=False)


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 1:
        return torch.tensor([0], device=x.device, dtype=x.dtype)
    return x.float().var() / (x.float().mean() ** 2 + 1e-10)


def sparse_dispatch(x: torch.Tensor, g: torch.Tensor, experts) -> torch.Tensor:
    """The reference's SparseDispatcher on a sequence-first x [L, N, D] with dense gates g [N, E].

    The (sample, expert) pairs of the non-zero gates, grouped by expert; each sample's whole [L * D] slab gathered
    by index for each of its experts and split into one sub-batch per expert; every expert called (on an empty
    sub-batch when no sample chose it), the empty outputs dropped, the rest times their gate and summed back per
    sample with index_add. Returns [L, N, D].
    """
    L, N, D = x.shape
    pairs = torch.nonzero(g)  # (sample, expert), sample-major
    by_expert = torch.sort(pairs[:, 1], stable=True).indices
    rows = pairs[by_expert, 0]  # the samples, grouped by expert
    weights = g[rows, pairs[by_expert, 1]].unsqueeze(1)
    sizes = (g > 0).sum(0).tolist()
    slabs = x.permute(1, 0, 2).reshape(N, L * D)  # a view while x is stored sample-major, as in the reference
    parts = torch.split(slabs[rows], sizes, dim=0)
    outs = [experts[e](p.view(p.shape[0], L, D)) for e, p in enumerate(parts)]
    outs = [o.view(o.shape[0], -1) for o in outs if o.shape[0] > 0]  # empty sub-batches: out of the graph
    y = torch.zeros(N, L * D, dtype=x.dtype, device=x.device).index_add(0, rows, torch.cat(outs, 0) * weights)
    return y.view(N, L, D).permute(1, 0, 2)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class RefAdapter(nn.Module):
    """The reference's Adapter ('lora' init, no layer norm, scalar 0.1), called with add_residual=False."""

    def __init__(self, expert) -> None:
        super().__init__()
        self.down_proj = nn.Linear(expert.down_proj.in_features, expert.down_proj.out_features)
        self.up_proj = nn.Linear(expert.up_proj.in_features, expert.up_proj.out_features)
        with torch.no_grad():
            for mine, theirs in ((self.down_proj, expert.down_proj), (self.up_proj, expert.up_proj)):
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)
        self.dropout = expert.dropout
        self.scale = float(expert.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down_proj(x)), p=self.dropout, training=self.training)
        return self.up_proj(h) * self.scale


class RefBlock(nn.Module):
    """A sequence-first CLIP residual block with the reference's MoE adapter (x: [L, N, D])."""

    def __init__(self, block, moe, attn_mask: torch.Tensor | None) -> None:
        super().__init__()
        d = block.attn.embed_dim
        if type(block.mlp.gelu).__name__ != "QuickGELU":
            raise TypeError("the baseline covers OpenAI CLIP's QuickGELU backbones (BackboneSpec quick_gelu=True)")
        self.attn = nn.MultiheadAttention(d, block.attn.num_heads)  # sequence-first, as OpenAI CLIP
        self.attn.in_proj_weight = _shared(block.attn.in_proj_weight)
        self.attn.in_proj_bias = _shared(block.attn.in_proj_bias)
        self.attn.out_proj.weight = _shared(block.attn.out_proj.weight)
        self.attn.out_proj.bias = _shared(block.attn.out_proj.bias)
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        for mine, theirs in ((self.ln_1, block.ln_1), (self.ln_2, block.ln_2)):
            mine.weight, mine.bias, mine.eps = _shared(theirs.weight), _shared(theirs.bias), theirs.eps
        c_fc, c_proj = nn.Linear(d, block.mlp.c_fc.out_features), nn.Linear(block.mlp.c_fc.out_features, d)
        for mine, theirs in ((c_fc, block.mlp.c_fc), (c_proj, block.mlp.c_proj)):
            mine.weight, mine.bias = _shared(theirs.weight), _shared(theirs.bias)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", c_fc), ("gelu", QuickGELU()), ("c_proj", c_proj)]))
        self.attn_mask = attn_mask
        self.adaptmlp_list = nn.ModuleList(RefAdapter(e) for e in moe.experts)
        self.router_list = nn.ParameterList(nn.Parameter(r.detach().clone()) for r in moe.routers)
        self.w_noise_list = nn.ParameterList(nn.Parameter(w.detach().clone()) for w in moe.noise)
        self.top_k = moe.spec.top_k
        self.noise_epsilon = moe.spec.noise_epsilon
        self.register_buffer("mean", torch.tensor([0.0]))
        self.register_buffer("std", torch.tensor([1.0]))
        self.choose_map = torch.zeros(len(moe.experts))  # a plain CPU attribute, as the reference's
        self.balance_loss = None
        self.requires_grad_(False)

    def gates(self, x0: torch.Tensor, route: int, noisy: bool) -> torch.Tensor:
        """Dense gates [N, E] from token 0's hidden state (noisy top-k, softmax over the k kept logits)."""
        clean = x0 @ self.router_list[route]
        if noisy:
            std = F.softplus(x0 @ self.w_noise_list[route]) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * std
        else:
            logits = clean
        n_experts = logits.shape[1]
        top_logits, top_idx = logits.topk(min(self.top_k + 1, n_experts), dim=1)
        kept = torch.softmax(top_logits[:, : self.top_k], dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, : self.top_k], kept)
        # the balance loss, computed and discarded as in the reference
        if noisy and self.top_k < n_experts:
            load = self._prob_in_top_k(clean, logits, std, top_logits).sum(0)
        else:
            load = (gates > 0).sum(0)
        self.balance_loss = (_cv_squared(gates.sum(0)) + _cv_squared(load)) * 1e-2
        return gates

    def _prob_in_top_k(self, clean, noisy_logits, std, top_values):
        m = top_values.shape[1]
        flat = top_values.flatten()
        at_in = torch.arange(clean.shape[0], device=clean.device) * m + self.top_k
        threshold_in = flat.gather(0, at_in).unsqueeze(1)
        threshold_out = flat.gather(0, at_in - 1).unsqueeze(1)
        normal = torch.distributions.Normal(self.mean, self.std)
        p_in = normal.cdf((clean - threshold_in) / std)
        p_out = normal.cdf((clean - threshold_out) / std)
        return torch.where(noisy_logits > threshold_in, p_in, p_out)

    def count(self, gates: torch.Tensor) -> None:
        """The reference's selection counting: a Counter over the chosen experts, into a float32 CPU vector."""
        for e, n in Counter(torch.nonzero(gates)[:, 1].tolist()).items():
            self.choose_map[e] = self.choose_map[e] + n

    def moe(self, x: torch.Tensor, route: int, noisy: bool) -> torch.Tensor:
        """The adapter output [L, N, D]: the gates from token 0, counted, then the sparse dispatch."""
        g = self.gates(x.permute(1, 0, 2)[:, 0, :], route, noisy)
        self.count(g)
        return sparse_dispatch(x, g, self.adaptmlp_list)

    def forward(self, x: torch.Tensor, route: int | None, noisy: bool) -> torch.Tensor:
        h = self.ln_1(x)
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        if route is None:  # zero-shot: the plain CLIP block
            return x + self.mlp(self.ln_2(x))
        return x + self.mlp(self.ln_2(x)) + self.moe(x, route, noisy)


class ReferenceCLIP(nn.Module):
    """Both towers of our MoECLIP (open_clip ViT backbone) recomputed the reference's way.

    ``noisy`` stands for the reference's ``--is_train`` flag (gating noise), independent of ``self.training``
    (adapter dropout), as in the reference.
    """

    def __init__(self, ours) -> None:
        super().__init__()
        c = ours.clip
        v = c.visual
        if v.attn_pool is not None or v.pool_type != "tok" or v.final_ln_after_pool:
            raise TypeError("the baseline covers CLIP ViTs pooled at the class token (as OpenAI CLIP)")
        self.conv1 = nn.Conv2d(3, v.conv1.out_channels, v.conv1.kernel_size, v.conv1.stride, bias=False)
        self.conv1.weight = _shared(v.conv1.weight)
        self.class_embedding = _shared(v.class_embedding)
        self.visual_positional_embedding = _shared(v.positional_embedding)
        self.ln_pre, self.ln_post = nn.LayerNorm(v.ln_pre.normalized_shape), nn.LayerNorm(v.ln_post.normalized_shape)
        for mine, theirs in ((self.ln_pre, v.ln_pre), (self.ln_post, v.ln_post)):
            mine.weight, mine.bias, mine.eps = _shared(theirs.weight), _shared(theirs.bias), theirs.eps
        self.proj = _shared(v.proj)
        self.visual_blocks = nn.ModuleList(
            RefBlock(b, m, None) for b, m in zip(v.transformer.resblocks, ours.visual_moe, strict=True)
        )
        mask = c.attn_mask.detach().clone()  # the full 77 x 77 causal mask
        self.text_blocks = nn.ModuleList(
            RefBlock(b, m, mask) for b, m in zip(c.transformer.resblocks, ours.text_moe, strict=True)
        )
        self.token_embedding = nn.Embedding.from_pretrained(c.token_embedding.weight.detach(), freeze=True)
        self.positional_embedding = _shared(c.positional_embedding)
        self.ln_final = nn.LayerNorm(c.ln_final.normalized_shape)
        self.ln_final.weight, self.ln_final.bias = _shared(c.ln_final.weight), _shared(c.ln_final.bias)
        self.ln_final.eps = c.ln_final.eps
        if isinstance(c.text_projection, nn.Linear):
            raise TypeError("the baseline covers CLIP's text_projection matrix, not a Linear")
        self.text_projection = _shared(c.text_projection)
        self.logit_scale = _shared(c.logit_scale)
        self.requires_grad_(False)

    # ------------------------------------------------------------------ what training changes
    def trainable(self, frozen_visual: torch.Tensor, frozen_text: torch.Tensor) -> list[nn.Parameter]:
        """As the reference: every expert not in the frozen set, and ALL routers and noise weights."""
        params = []
        for blocks, frozen in ((self.visual_blocks, frozen_visual), (self.text_blocks, frozen_text)):
            for layer, blk in enumerate(blocks):
                for e, expert in enumerate(blk.adaptmlp_list):
                    if not bool(frozen[layer, e]):
                        expert.requires_grad_(True)
                        params.extend(expert.parameters())
                for p in (*blk.router_list, *blk.w_noise_list):
                    p.requires_grad_(True)
                    params.append(p)
        return params

    def named_like_ours(self) -> dict[str, nn.Parameter]:
        """The adapter parameters under our MoECLIP's names (visual_moe.{l}.experts.{e}.down_proj.weight, ...)."""
        out = {}
        for tower, blocks in (("visual_moe", self.visual_blocks), ("text_moe", self.text_blocks)):
            for layer, blk in enumerate(blocks):
                for e, expert in enumerate(blk.adaptmlp_list):
                    for n, p in expert.named_parameters():
                        out[f"{tower}.{layer}.experts.{e}.{n}"] = p
                for t, p in enumerate(blk.router_list):
                    out[f"{tower}.{layer}.routers.{t}"] = p
                for t, p in enumerate(blk.w_noise_list):
                    out[f"{tower}.{layer}.noise.{t}"] = p
        return out

    # ------------------------------------------------------------------ forward
    def encode_image(self, images: torch.Tensor, route: int | None, noisy: bool) -> torch.Tensor:
        x = self.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + self.visual_positional_embedding
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND
        for blk in self.visual_blocks:
            x = blk(x, route, noisy)
        x = x.permute(1, 0, 2)  # LND -> NLD
        return self.ln_post(x[:, 0, :]) @ self.proj

    def encode_text(self, tokens: torch.Tensor, route: int | None, noisy: bool) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.positional_embedding
        x = x.permute(1, 0, 2)  # NLD -> LND, the whole context
        for blk in self.text_blocks:
            x = blk(x, route, noisy)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def loss(self, images, tokens, labels, route: int, noisy: bool, label_smoothing: float) -> torch.Tensor:
        """One iteration's loss: the text features of every class first, then the images (as finetune.py)."""
        txt = self.encode_text(tokens, route, noisy)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        img = self.encode_image(images, route, noisy)
        img = img / img.norm(dim=-1, keepdim=True)
        return F.cross_entropy(self.logit_scale.exp() * img @ txt.t(), labels, label_smoothing=label_smoothing)
