"""Activate-freeze: what each task trains, and that frozen experts and other routers never move."""

import torch

from moe_adapters.data.batches import ArrayImageDataset, TaskData
from moe_adapters.training.task import train_task

from .conftest import QUADRANTS, TEMPLATES, task_config, toy_images


def toy_task(name, kind, seed):
    x, y = toy_images(kind, 48, seed=seed)
    ds = ArrayImageDataset(x, y)
    return TaskData(name, QUADRANTS, TEMPLATES, ds)


def snapshot(model):
    return {k: v.clone() for k, v in model.moe_state_dict().items()}


def test_optimizer_sees_only_unfrozen_experts_and_the_task_router(tiny_model):
    m = tiny_model
    m.frozen_visual[0, 1] = True
    m.frozen_text[1, 0] = True
    params = m.set_trainable(1)
    ids = {id(p) for p in params}
    named = dict(m.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert {n for n, p in named.items() if id(p) in ids} == trainable
    assert not any(n.startswith("clip.") for n in trainable)
    assert "visual_moe.0.experts.1.down_proj.weight" not in trainable
    assert "text_moe.1.experts.0.up_proj.bias" not in trainable
    assert "visual_moe.0.experts.0.down_proj.weight" in trainable
    assert {n for n in trainable if ".routers." in n or ".noise." in n} == {
        f"{t}_moe.{layer}.{kind}.1"
        for t in ("visual", "text")
        for layer in range(2)
        for kind in ("routers", "noise")
    }
    E = m.spec.num_experts
    expert_params = (len(m.visual_moe) + len(m.text_moe)) * E - 2
    assert len(params) == expert_params * 4 + 2 * 2 * 2


def test_frozen_set_is_torch_topk_choice_on_counts_with_ties_and_only_grows(tiny_model):
    m = tiny_model
    L, E = m.frozen_visual.shape
    counts = {"visual": torch.zeros(L, E, dtype=torch.long), "text": torch.zeros(L, E, dtype=torch.long)}
    counts["visual"][0] = torch.tensor([5, 9, 9] + [0] * (E - 3))
    counts["text"][0] = torch.tensor([3, 3, 3, 3] + [0] * (E - 4))  # a four-way tie at the top
    m.freeze_most_selected(counts, 2)
    # the reference: torch.topk(count_vector, 2) per layer and tower, on a 1-D float32 CPU vector
    for tower, frozen in (("visual", m.frozen_visual), ("text", m.frozen_text)):
        for layer in range(L):
            want = sorted(torch.topk(counts[tower][layer].float(), 2).indices.tolist())
            assert frozen[layer].nonzero().flatten().tolist() == want, (tower, layer)
    assert m.frozen_visual[0].nonzero().flatten().tolist() == [1, 2]
    # on ties topk does not prefer the lowest index (a stable sort would freeze experts 0 and 1)
    assert m.frozen_visual[1].nonzero().flatten().tolist() != [0, 1]
    before = m.frozen_visual.clone()
    counts["visual"][0] = torch.tensor([0, 0, 0] + [7] * (E - 3))
    m.freeze_most_selected(counts, 2)
    grown = sorted({1, 2} | set(torch.topk(counts["visual"][0].float(), 2).indices.tolist()))
    assert m.frozen_visual[0].nonzero().flatten().tolist() == grown
    assert (m.frozen_visual | before).equal(m.frozen_visual)


def test_next_task_leaves_frozen_experts_and_other_routers_bit_identical(tiny_model, tokenizer):
    m = tiny_model
    cfg = task_config(lr=0.05, iterations=6, batch_size=16, warmup=1, image_size=32)
    c0 = train_task(m, 0, toy_task("A", "red", 0), tokenizer, cfg, progress=False)
    assert int(m.frozen_visual.sum()) == 2 * len(m.visual_moe)
    assert int(m.frozen_text.sum()) == 2 * len(m.text_moe)
    assert sum(int(v.sum()) for v in c0.values()) > 0
    before = snapshot(m)
    frozen = {"visual": m.frozen_visual.clone(), "text": m.frozen_text.clone()}
    train_task(m, 1, toy_task("B", "green", 1), tokenizer, cfg, progress=False)
    after = snapshot(m)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    for tower in ("visual", "text"):
        for layer, row in enumerate(frozen[tower]):
            for e in row.nonzero().flatten().tolist():
                for p in ("down_proj.weight", "down_proj.bias", "up_proj.weight", "up_proj.bias"):
                    assert f"{tower}_moe.{layer}.experts.{e}.{p}" not in moved
    assert not any(
        ".routers.0" in k or ".noise.0" in k or ".routers.2" in k or ".noise.2" in k for k in moved
    )
    # the task did learn: its router and some unfrozen experts moved
    assert any(".routers.1" in k for k in moved)
    assert any(".experts." in k for k in moved)
    # the frozen set only grew
    assert (m.frozen_visual | frozen["visual"]).equal(m.frozen_visual)
