"""The MoE adapter: experts, per-task routers and noisy top-k gating (SPEC section 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ZERO_SHOT = -1
"""Route value that bypasses every adapter (plain CLIP)."""


@dataclass(frozen=True)
class MoESpec:
    """Shape of the MoE adapters (the run configuration's `model` section gives the values; see from_model)."""

    num_experts: int
    top_k: int
    bottleneck: int
    num_routers: int
    dropout: float
    scale: float
    noise_epsilon: float

    @classmethod
    def from_model(cls, model, num_routers: int) -> MoESpec:
        """From a config.ModelConfig: one router per task of the order."""
        return cls(
            num_experts=model.num_experts,
            top_k=model.top_k,
            bottleneck=model.bottleneck,
            num_routers=num_routers,
            dropout=model.expert_dropout,
            scale=model.expert_scale,
            noise_epsilon=model.noise_epsilon,
        )

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k={self.top_k} must lie in 1..num_experts={self.num_experts}")
        if self.num_routers < 1 or self.bottleneck < 1:
            raise ValueError("num_routers and bottleneck must be positive")


class Expert(nn.Module):
    """One adapter expert: Linear(d, r) -> ReLU -> Dropout -> Linear(r, d), times a fixed scale."""

    def __init__(self, width: int, bottleneck: int, dropout: float, scale: float):
        super().__init__()
        self.down_proj = nn.Linear(width, bottleneck)
        self.up_proj = nn.Linear(bottleneck, width)
        self.dropout = dropout
        self.scale = scale
        # AdaptFormer's "lora" init: the up-projection is zero, so a new expert outputs exactly 0.
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down_proj(x)), p=self.dropout, training=self.training)
        return self.up_proj(h) * self.scale


@dataclass
class Gating:
    """Result of routing one batch: dense gates and the chosen experts with their weights."""

    gates: torch.Tensor  # [B, E], exactly top_k non-zero entries per row
    indices: torch.Tensor  # [B, k] chosen experts, highest logit first
    weights: torch.Tensor  # [B, k] softmax over the chosen logits


def noisy_top_k_gating(
    c: torch.Tensor,
    w_gate: torch.Tensor,
    w_noise: torch.Tensor,
    top_k: int,
    noisy: bool,
    noise_epsilon: float,
) -> Gating:
    """Noisy top-k gating (Shazeer et al. 2017) with softmax over the kept logits only.

    Ties are broken towards the lower expert index (stable sort), so routing with an
    all-zero router is the same on every device.
    """
    logits = c @ w_gate
    if noisy:
        noise_std = F.softplus(c @ w_noise) + noise_epsilon
        logits = logits + torch.randn_like(logits) * noise_std
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    indices = order[:, :top_k]
    weights = torch.softmax(logits.gather(1, indices), dim=1)
    gates = torch.zeros_like(logits).scatter(1, indices, weights)
    return Gating(gates=gates, indices=indices, weights=weights)


class MoELayer(nn.Module):
    """The experts and per-task routers of one transformer block."""

    def __init__(self, width: int, spec: MoESpec):
        super().__init__()
        self.width = width
        self.spec = spec
        self.experts = nn.ModuleList(
            Expert(width, spec.bottleneck, spec.dropout, spec.scale) for _ in range(spec.num_experts)
        )
        self.routers = nn.ParameterList(
            nn.Parameter(torch.zeros(width, spec.num_experts)) for _ in range(spec.num_routers)
        )
        self.noise = nn.ParameterList(
            nn.Parameter(torch.zeros(width, spec.num_experts)) for _ in range(spec.num_routers)
        )

    def gate(self, c: torch.Tensor, router: int, noisy: bool) -> Gating:
        """Route a batch from its position-0 hidden states `c` [B, d] with router `router`."""
        if not 0 <= router < self.spec.num_routers:
            raise IndexError(f"router {router} out of range 0..{self.spec.num_routers - 1}")
        return noisy_top_k_gating(
            c, self.routers[router], self.noise[router], self.spec.top_k, noisy, self.spec.noise_epsilon
        )

    def forward(
        self,
        x: torch.Tensor,
        router: int,
        noisy: bool,
        counts: torch.Tensor | None = None,
        batched: bool = True,
    ) -> torch.Tensor:
        """Adapter output for x [B, N, d]; every token of a sample uses that sample's experts.

        `counts` [E], when given, is increased by the number of samples that selected each expert.
        """
        g = self.gate(x[:, 0], router, noisy)
        if counts is not None:
            counts += torch.bincount(g.indices.flatten(), minlength=self.spec.num_experts).to(counts)
        if batched:
            return self.combine_batched(x, g)
        return self.combine_dispatch(x, g)

    def combine_batched(self, x: torch.Tensor, g: Gating) -> torch.Tensor:
        """All chosen experts of all samples in two batched matmuls (one down, one up).

        Only the experts some sample chose enter the computation, so an expert no sample chose gets no gradient
        at all (grad None), as with the reference's sparse dispatch, and AdamW leaves its weights and state alone.
        """
        B, N, d = x.shape
        k, r = self.spec.top_k, self.spec.bottleneck
        idx = g.indices.reshape(-1).contiguous()  # [B*k]
        used = torch.unique(idx)  # sorted expert indices that some sample chose
        pos = torch.searchsorted(used, idx)  # each choice as a position among the used experts
        experts = [self.experts[e] for e in used.tolist()]
        w_down = torch.stack([e.down_proj.weight for e in experts])  # [U, r, d]
        b_down = torch.stack([e.down_proj.bias for e in experts])  # [U, r]
        w_up = torch.stack([e.up_proj.weight.T for e in experts])  # [U, r, d]
        b_up = torch.stack([e.up_proj.bias for e in experts])  # [U, d]
        # Down-projections of a sample's k experts side by side: [B, d, k*r]; index_select has a much cheaper
        # backward than fancy indexing.
        wd = w_down.index_select(0, pos).view(B, k * r, d).transpose(1, 2)
        h = torch.baddbmm(b_down.index_select(0, pos).view(B, 1, k * r), x, wd)
        h = F.dropout(F.relu(h), p=self.spec.dropout, training=self.training)
        # Fold gate and scale into the hidden units, so one matmul sums the k experts.
        gs = g.weights * self.spec.scale  # [B, k]
        h = (h.view(B, N, k, r) * gs.view(B, 1, k, 1)).view(B, N, k * r)
        wu = w_up.index_select(0, pos).view(B, k * r, d)
        bias = (gs.unsqueeze(-1) * b_up.index_select(0, pos).view(B, k, d)).sum(1, keepdim=True)  # [B, 1, d]
        return torch.baddbmm(bias, h, wu)

    def combine_dispatch(self, x: torch.Tensor, g: Gating) -> torch.Tensor:
        """Reference-style per-expert dispatch: split the batch by expert, loop, index_add back."""
        B, N, d = x.shape
        flat = x.reshape(B, N * d)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows = (g.gates[:, e] > 0).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            y = expert(x[rows]).reshape(rows.numel(), N * d)
            out = out.index_add(0, rows, y * g.gates[rows, e].unsqueeze(1))
        return out.view(B, N, d)
