"""Gating and expert computation of one MoE layer."""

import pytest
import torch

from moe_adapters.model.moe import Expert, MoELayer, noisy_top_k_gating

from .conftest import moe_spec


def randomize(layer: MoELayer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def test_expert_outputs_zero_at_init_and_has_paper_size():
    e = Expert(768, 64, 0.1, 0.1)
    assert sum(p.numel() for p in e.parameters()) == 99_136
    assert sum(p.numel() for p in Expert(512, 64, 0.1, 0.1).parameters()) == 66_112
    x = torch.randn(3, 5, 768)
    assert torch.equal(e(x), torch.zeros(3, 5, 768))
    assert e.down_proj.weight.abs().sum() > 0  # the down projection is not zero


@pytest.mark.parametrize("noisy", [False, True])
def test_exactly_two_gates_summing_to_one(noisy):
    torch.manual_seed(0)
    c = torch.randn(64, 32)
    g = noisy_top_k_gating(c, torch.randn(32, 22), torch.randn(32, 22), 2, noisy, noise_epsilon=0.01)
    assert ((g.gates != 0).sum(dim=1) == 2).all()
    assert torch.allclose(g.gates.sum(dim=1), torch.ones(64), atol=1e-6)
    # the chosen experts are where the gates are, highest weight first
    assert torch.equal(g.gates.gather(1, g.indices), g.weights)
    assert (g.weights[:, 0] >= g.weights[:, 1]).all()


def test_no_noise_in_evaluation_and_noise_in_training():
    torch.manual_seed(0)
    c, w, wn = torch.randn(16, 8), torch.randn(8, 6), torch.randn(8, 6)
    a = noisy_top_k_gating(c, w, wn, 2, noisy=False, noise_epsilon=0.01)
    b = noisy_top_k_gating(c, w, wn, 2, noisy=False, noise_epsilon=0.01)
    assert torch.equal(a.gates, b.gates)
    clean = c @ w
    assert torch.equal(a.indices, clean.topk(2, dim=1).indices)
    assert torch.allclose(a.weights, torch.softmax(clean.topk(2, dim=1).values, dim=1))
    n1 = noisy_top_k_gating(c, w, wn, 2, noisy=True, noise_epsilon=0.01)
    n2 = noisy_top_k_gating(c, w, wn, 2, noisy=True, noise_epsilon=0.01)
    assert not torch.equal(n1.gates, n2.gates)


def test_ties_go_to_lower_expert_index():
    c = torch.randn(4, 8)
    g = noisy_top_k_gating(c, torch.zeros(8, 5), torch.zeros(8, 5), 2, noisy=False, noise_epsilon=0.01)
    assert g.indices.tolist() == [[0, 1]] * 4
    assert torch.equal(g.weights, torch.full((4, 2), 0.5))


def test_batched_experts_equal_per_expert_dispatch_forward_and_backward():
    spec = moe_spec(num_experts=7, top_k=2, bottleneck=6, num_routers=2, dropout=0.0)
    layer = MoELayer(16, spec)
    randomize(layer)
    x = torch.randn(9, 5, 16, requires_grad=True)
    y1 = layer(x, router=1, noisy=False, batched=True)
    g1 = torch.autograd.grad(y1.square().sum(), [x, *layer.parameters()], allow_unused=True)
    y2 = layer(x, router=1, noisy=False, batched=False)
    g2 = torch.autograd.grad(y2.square().sum(), [x, *layer.parameters()], allow_unused=True)
    assert torch.allclose(y1, y2, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        else:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_every_token_of_a_sample_uses_the_sample_experts():
    spec = moe_spec(num_experts=4, top_k=1, bottleneck=3, num_routers=1, dropout=0.0)
    layer = MoELayer(8, spec)
    randomize(layer, 1)
    x = torch.randn(2, 6, 8)
    g = layer.gate(x[:, 0], 0, noisy=False)
    y = layer(x, 0, noisy=False)
    for b in range(2):
        e = layer.experts[int(g.indices[b, 0])]
        assert torch.allclose(y[b], e(x[b]) * g.weights[b, 0], atol=1e-6)


def test_selection_counts_per_expert():
    spec = moe_spec(num_experts=5, top_k=2, bottleneck=3, num_routers=1)
    layer = MoELayer(8, spec)
    randomize(layer, 2)
    counts = torch.zeros(5, dtype=torch.long)
    x = torch.randn(10, 3, 8)
    layer(x, 0, noisy=False, counts=counts)
    g = layer.gate(x[:, 0], 0, noisy=False)
    assert counts.sum() == 20
    assert torch.equal(counts, (g.gates > 0).sum(0))


def test_router_out_of_range_is_an_error():
    layer = MoELayer(8, moe_spec(num_experts=3, num_routers=2, bottleneck=2))
    with pytest.raises(IndexError):
        layer(torch.randn(1, 2, 8), router=2, noisy=False)
