"""On a CUDA device: the fast paths agree with the straightforward ones, and training fits the memory target.

Skipped where there is no CUDA device (see conftest). Timing targets live in benchmarks/, not here.
"""

import pytest
import torch
import torch.nn.functional as F

from moe_adapters.model.clip import BackboneSpec, MoECLIP, build_model, create_backbone, tokenizer_for
from moe_adapters.model.moe import ZERO_SHOT

from .conftest import TINY, moe_spec, trained_looking

pytestmark = pytest.mark.gpu


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def test_fast_paths_equal_straightforward_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    m = trained_looking(build_model(TINY, moe_spec(num_routers=3), init_seed=42)).cuda().eval()
    tok = tokenizer_for(TINY)
    x = torch.randn(16, 3, 32, 32, device="cuda")
    t = tok(["a photo of a cat.", "a blob at the top left.", "a diagram of a very large dog."]).cuda()
    for route in (ZERO_SHOT, 0, 2):
        m.batched_experts = m.truncate_text = False
        ref_i, ref_t = m.encode_image(x, route), m.encode_text(t, route)
        m.batched_experts = m.truncate_text = True
        assert rel(m.encode_image(x, route), ref_i) < 1e-5
        assert rel(m.encode_text(t, route), ref_t) < 1e-5


def test_paper_training_step_peak_memory_under_12_gb():
    spec = BackboneSpec("ViT-B-16", True, None)
    m = MoECLIP(create_backbone(spec), moe_spec(), spec, init_seed=42).cuda().train()
    params = m.set_trainable(3)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    tok = tokenizer_for(spec)
    images = torch.randn(64, 3, 224, 224, device="cuda")
    texts = tok([f"a photo of a scene number {i}." for i in range(397)]).cuda()
    labels = torch.randint(0, 397, (64,), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        logits = 100.0 * m.encode_image(images, 3, normalize=True) @ m.encode_text(texts, 3, normalize=True).T
        loss = F.cross_entropy(logits, labels, label_smoothing=0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    peak = torch.cuda.max_memory_allocated()
    assert peak <= 12 * 2**30, f"peak {peak / 2**30:.2f} GiB"


@torch.no_grad()
def test_bf16_and_compile_on_cuda_stay_close():
    m = trained_looking(build_model(TINY, moe_spec(num_routers=3), init_seed=42)).cuda().eval()
    x = torch.randn(8, 3, 32, 32, device="cuda")
    ref = m.encode_image(x, 1, normalize=True)
    m.autocast_dtype = torch.bfloat16
    assert rel(m.encode_image(x, 1, normalize=True), ref) < 5e-2
    m.autocast_dtype = None
    m.compile_regions()
    assert rel(m.encode_image(x, 1, normalize=True), ref) < 1e-4
