"""The MoE CLIP against plain open_clip, routes, parameter counts."""

import json

import pytest
import torch

from moe_adapters.cli import main
from moe_adapters.model.clip import BackboneSpec, MoECLIP, create_backbone
from moe_adapters.model.moe import ZERO_SHOT

from .conftest import moe_spec

MTIL_SPEC = moe_spec()
CIL_SPEC = moe_spec(num_experts=2, top_k=2, num_routers=1)


@torch.no_grad()
def test_every_route_of_a_fresh_model_equals_plain_clip(tiny_model, tokenizer):
    m = tiny_model
    m.eval()
    m.truncate_text = False
    images = torch.randn(4, 3, 32, 32)
    tokens = tokenizer(["a photo of a cat.", "a diagram", "a photo of a very large dog in a park."])
    ref_i = m.clip.encode_image(images)
    ref_t = m.clip.encode_text(tokens)
    for route in (ZERO_SHOT, 0, 1, 2):
        assert torch.equal(m.encode_image(images, route), ref_i), route
        assert torch.equal(m.encode_text(tokens, route), ref_t), route


@torch.no_grad()
def test_text_truncation_after_longest_prompt_is_exact(tiny_model, tokenizer):
    m = tiny_model.eval()
    tokens = tokenizer(["a cat.", "a photo of a very large dog in a park."])
    m.truncate_text = False
    full = m.encode_text(tokens, ZERO_SHOT)
    m.truncate_text = True
    cut = m.encode_text(tokens, ZERO_SHOT)
    assert torch.allclose(full, cut, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_zero_shot_route_bypasses_trained_adapters(tiny_model):
    m = tiny_model.eval()
    for p in m.visual_moe.parameters():
        p.add_(torch.randn_like(p) * 0.5)
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(m.encode_image(images, ZERO_SHOT), m.clip.encode_image(images))
    assert not torch.allclose(m.encode_image(images, 0), m.clip.encode_image(images))


def test_unknown_route_is_refused(tiny_model):
    with pytest.raises(ValueError, match="route 3"):
        tiny_model.encode_image(torch.randn(1, 3, 32, 32), 3)


@torch.no_grad()
def test_vit_b16_zero_shot_and_fresh_routes_equal_open_clip():
    torch.manual_seed(0)
    clip = create_backbone(BackboneSpec("ViT-B-16", True, None))
    m = MoECLIP(clip, MTIL_SPEC, BackboneSpec("ViT-B-16", True, None), init_seed=42).eval()
    m.set_trainable(None)
    images = torch.randn(2, 3, 224, 224)
    ref = clip.encode_image(images)
    assert torch.equal(m.encode_image(images, ZERO_SHOT), ref)
    assert torch.equal(m.encode_image(images, 10), ref)


def test_paper_parameter_counts(capsys):
    assert main(["params", "--model", "ViT-B-16", "--setting", "mtil", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moe"] == 51_059_712
    assert out["router_per_task"] == 675_840
    assert out["expert_vision"] == 99_136
    assert out["expert_text"] == 66_112
    assert out["autoencoder"] == 8_696_164
    assert out["total"] == 149_620_737 + 51_059_712
    assert main(["params", "--model", "ViT-B-16", "--setting", "cil", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["moe"] == 4_027_392


def test_expert_and_router_totals_split_as_in_spec():
    clip = create_backbone(BackboneSpec("ViT-B-16", True, None))
    c = MoECLIP(clip, MTIL_SPEC, BackboneSpec("ViT-B-16", True, None), init_seed=42).parameter_counts()
    assert c["experts"] == 43_625_472
    assert c["moe"] - c["experts"] == 7_434_240
    assert MoECLIP(clip, CIL_SPEC, BackboneSpec("ViT-B-16", True, None), init_seed=42).parameter_counts()["moe"] == 4_027_392


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).norm() / b.detach().norm().clamp_min(1e-30))


def test_training_attention_equals_open_clip_and_evaluation_is_open_clip_bit_for_bit(tiny_model):
    """The grad-mode attention (sequence-first, contiguous input to the projections) computes what open_clip's
    batch-first nn.MultiheadAttention call computes, values and input gradients, in both towers (the text one
    with its causal mask); without gradients it is open_clip's own call, bit for bit."""
    from moe_adapters.model.clip import _attention

    c = tiny_model.clip
    g = torch.Generator().manual_seed(0)
    n = 9
    cases = {
        "visual": (c.visual.transformer.resblocks[1], torch.randn(3, 17, c.visual.transformer.width, generator=g), None),
        "text": (c.transformer.resblocks[1], torch.randn(3, n, c.transformer.width, generator=g), c.attn_mask[:n, :n]),
    }
    for tower, (blk, x, mask) in cases.items():
        blk.train()
        x = x.requires_grad_()
        ours = _attention(blk, x, mask)
        theirs = blk.attention(q_x=x, attn_mask=mask)
        assert ours.shape == theirs.shape == x.shape
        assert _rel(ours, theirs) < 1e-6, tower
        w = torch.randn(x.shape, generator=g)
        (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
        (g_theirs,) = torch.autograd.grad((theirs * w).sum(), x)
        assert _rel(g_ours, g_theirs) < 1e-6, tower
        if mask is not None:  # the mask is applied: a later token changes no earlier output
            y = x.detach().clone()
            y[:, -1] += 1.0
            assert torch.allclose(_attention(blk, y.requires_grad_(), mask)[:, :-1], ours[:, :-1], atol=1e-6)
        blk.eval()
        with torch.no_grad():
            assert torch.equal(_attention(blk, x, mask), blk.attention(q_x=x, attn_mask=mask)), tower


def test_training_forward_and_gradients_equal_open_clip_attention(tiny_model, tokenizer, monkeypatch):
    """A whole training forward and backward of both towers, with the grad-mode attention and the last block cut
    to the positions that reach the output, gives the loss, the gradients and the selection counts that open_clip's
    own attention call over every position gives. In float64, so that what is left of the two paths' different
    summation orders (about 1e-6 relative in float32, more or less by CPU type) is far below the tolerance."""
    import moe_adapters.model.clip as clip_module

    m = tiny_model.double()
    m.randomize_adapters(0.05, seed=3)
    params = m.set_trainable(1)
    m.eval()  # no dropout; the gating noise on and drawn from the same seed
    m.eval_noise = True
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tokens = tokenizer(["a photo of a cat.", "a diagram", "a photo of a very large dog in a park."])

    def loss_and_grads():
        torch.manual_seed(7)
        counts = m.new_counts()
        text = m.encode_text(tokens, 1, counts["text"], normalize=True)
        image = m.encode_image(images, 1, counts["visual"], normalize=True)
        loss = torch.nn.functional.cross_entropy(20.0 * image @ text.T, torch.tensor([0, 1, 2, 0]))
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss.detach(), grads, counts

    assert m.cut_last_block
    loss_ours, grads_ours, counts_ours = loss_and_grads()
    monkeypatch.setattr(clip_module, "_attention", lambda blk, q, mask: blk.attention(q_x=q, attn_mask=mask))
    m.cut_last_block = False
    loss_ref, grads_ref, counts_ref = loss_and_grads()
    assert loss_ours.dtype == torch.float64
    assert _rel(loss_ours, loss_ref) < 1e-12
    assert all(torch.equal(counts_ours[t], counts_ref[t]) for t in counts_ref)
    with_grad = [(a, b) for a, b in zip(grads_ours, grads_ref, strict=True) if b is not None]
    assert len(with_grad) > 10
    assert all((a is None) == (b is None) for a, b in zip(grads_ours, grads_ref, strict=True))
    flat = lambda gs: torch.cat([t.flatten() for t in gs])  # noqa: E731
    assert _rel(flat(a for a, _ in with_grad), flat(b for _, b in with_grad)) < 1e-12


def test_last_block_attention_at_kept_positions_equals_those_rows_of_the_full_attention(tiny_model):
    """_attention_at computes the full attention's rows at the kept positions (per sample, the causal mask's own
    row for each), so the cut last block reads the same numbers."""
    from moe_adapters.model.clip import _attention, _attention_at

    c = tiny_model.clip
    blk = c.transformer.resblocks[-1]
    n = 7
    x = torch.randn(3, n, c.transformer.width, generator=torch.Generator().manual_seed(4), requires_grad=True)
    keep = torch.tensor([[0, 6], [0, 2], [0, 4]])
    full = _attention(blk, x, c.attn_mask[:n, :n])
    cut = _attention_at(blk, x, keep, c.attn_mask[:n, :n])
    want = full[torch.arange(3).unsqueeze(1), keep]
    assert cut.shape == (3, 2, c.transformer.width)
    assert _rel(cut, want) < 1e-6
    assert not torch.allclose(cut[1, 1], full[1, 4], atol=1e-3)  # each sample's own position, not another's
