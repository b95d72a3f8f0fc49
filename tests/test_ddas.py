"""DDAS: autoencoder size, the batch decision rule, and routing of real image sets end to end."""

import pytest
import torch

from moe_adapters.data.batches import ArrayImageDataset, TrainBatches
from moe_adapters.data.transforms import train_transform
from moe_adapters.evaluation import routed_logits, text_head
from moe_adapters.model.ddas import (
    Autoencoder,
    PixelFeatures,
    autoencoder_mse,
    build_feature_extractor,
    decide_routes,
    feature_dim,
    init_autoencoder,
)
from moe_adapters.model.moe import ZERO_SHOT
from moe_adapters.training.autoencoder import train_autoencoder
from moe_adapters.training.schedules import ae_lr

from .conftest import QUADRANTS, TEMPLATES, ae_config, ddas_options, toy_images


def test_alexnet_conv5_feature_and_autoencoder_sizes():
    ext = build_feature_extractor("alexnet_random")
    assert feature_dim(ext, 224) == 256 * 13 * 13
    out = ext(torch.randn(2, 3, 224, 224))
    assert out.min() > 0 and out.max() < 1  # after the sigmoid
    assert sum(p.numel() for p in Autoencoder(43_264, 100).parameters()) == 8_696_164


def test_missing_alexnet_weights_fail_fast_with_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="alexnet-owt-7be5be79.pth"):
        build_feature_extractor("alexnet", weights=str(tmp_path / "nope.pth"))


def test_untrained_autoencoders_are_the_same_in_every_job():
    a, b = init_autoencoder(3, 50, 100, 42), init_autoencoder(3, 50, 100, 42)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    c = init_autoencoder(4, 50, 100, 42)
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)


def test_step_decay_of_the_autoencoder_learning_rate():
    assert ae_lr(0.01, 0, 5, 10) == 0.01
    assert ae_lr(0.01, 49, 5, 10) == 0.01
    assert ae_lr(0.01, 50, 5, 10) == pytest.approx(0.001)
    assert ae_lr(0.01, 300, 10_000, 10) == 0.01  # large data: no decay within 300 steps


def test_batch_decision_rule():
    # 4 samples, 4 autoencoders (0 = generic); batches of 2
    mse = torch.tensor(
        [
            [0.05, 0.01, 0.03, 0.04],  # batch 0: autoencoder 1 wins -> route 0
            [0.05, 0.01, 0.03, 0.04],
            [0.01, 0.02, 0.03, 0.04],  # batch 1: autoencoder 0 wins -> zero-shot
            [0.01, 0.02, 0.03, 0.04],
        ]
    )
    opts = ddas_options(threshold=0.0655, batch_size=2)
    assert decide_routes(mse, 4, opts).tolist() == [0, 0, ZERO_SHOT, ZERO_SHOT]
    # above the threshold: zero-shot even if a task autoencoder wins
    assert decide_routes(mse + 0.1, 4, opts).tolist() == [ZERO_SHOT] * 4
    # ties go to the earlier autoencoder
    tie = torch.tensor([[0.02, 0.01, 0.01, 0.01]] * 2)
    assert decide_routes(tie, 4, opts).tolist() == [0, 0]
    # the batch decides on the mean: one odd sample does not flip its batch, per-sample does
    mixed = torch.tensor([[0.05, 0.01, 0.03], [0.05, 0.04, 0.02], [0.05, 0.01, 0.03]])
    assert decide_routes(mixed, 3, ddas_options(batch_size=3)).tolist() == [0, 0, 0]
    assert decide_routes(mixed, 3, ddas_options(batch_size=3, per_sample=True)).tolist() == [0, 1, 0]


def test_untrained_autoencoders_compete_unless_only_trained():
    mse = torch.tensor([[0.05, 0.03, 0.01]])  # autoencoder 2 (task 1) is untrained but lowest
    assert decide_routes(mse, 2, ddas_options()).tolist() == [1]
    assert decide_routes(mse, 2, ddas_options(only_trained=True)).tolist() == [0]


def fit(kind, index, seed):
    x, y = toy_images(kind, 64, seed=seed)
    batches = TrainBatches(ArrayImageDataset(x, y), train_transform(32), 16, seed, 0)
    ae = init_autoencoder(index, 3 * 8 * 8, 32, 42)
    cfg = ae_config(iterations=150, lr=0.01)
    losses = train_autoencoder(ae, PixelFeatures(8), batches, cfg, name=kind, progress=False)
    assert losses[-1] < losses[0]
    return ae


def eval_images(kind, seed):
    from moe_adapters.data.transforms import eval_transform

    x, y = toy_images(kind, 32, seed=seed)
    t = eval_transform(32)
    from PIL import Image

    return torch.stack([t(Image.fromarray(i)) for i in x]), torch.as_tensor(y)


def test_each_set_routes_to_its_own_autoencoder_and_unseen_data_to_zero_shot(tiny_model, tokenizer):
    aes = [fit("noise", 0, 1), fit("red", 1, 2), fit("green", 2, 3)]
    with torch.no_grad():
        check_routing(aes, tiny_model, tokenizer)


def check_routing(aes, tiny_model, tokenizer):
    ext = PixelFeatures(8)
    opts = ddas_options(threshold=0.02, batch_size=8)
    routes = {}
    for kind in ("red", "green", "blue"):
        x, _ = eval_images(kind, 100)
        routes[kind] = decide_routes(autoencoder_mse(ext, aes, x), 3, opts)
    assert routes["red"].tolist() == [0] * 32
    assert routes["green"].tolist() == [1] * 32
    assert routes["blue"].tolist() == [ZERO_SHOT] * 32

    # the unseen set's logits are plain CLIP's, even with trained adapters in the model
    m = tiny_model.eval()
    for p in m.visual_moe.parameters():
        p.add_(torch.randn_like(p) * 0.3)
    x, _ = eval_images("blue", 100)
    heads = {r: text_head(m, tokenizer, QUADRANTS, TEMPLATES, r) for r in (ZERO_SHOT, 0, 1)}
    logits = routed_logits(m, x, routes["blue"], heads.__getitem__)
    plain_img = m.clip.encode_image(x)
    plain_img = plain_img / plain_img.norm(dim=-1, keepdim=True)
    plain_txt = torch.stack(
        [
            (lambda e: (e / e.norm(dim=-1, keepdim=True)).mean(0))(
                m.clip.encode_text(tokenizer([t.format(c=c) for t in TEMPLATES]))
            )
            for c in QUADRANTS
        ]
    )
    plain_txt = plain_txt / plain_txt.norm(dim=-1, keepdim=True)
    assert torch.allclose(logits, 100.0 * plain_img @ plain_txt.T, rtol=1e-5, atol=1e-4)
    # and a learned set's logits are not plain CLIP's
    xr, _ = eval_images("red", 100)
    assert not torch.allclose(
        routed_logits(m, xr, routes["red"], heads.__getitem__),
        100 * torch.nn.functional.normalize(m.clip.encode_image(xr), dim=-1) @ plain_txt.T,
        atol=1e-3,
    )
