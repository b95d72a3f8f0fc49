"""The speed-ups that are on by default give the logits of the straightforward paths (CPU, tiny model).

Straightforward = the reference's way: a loop over experts, the full 77-token text context, every text
head and every zero-shot image feature recomputed, every test image read for every evaluation.
"""

import pytest
import torch

from moe_adapters.data.prepared import PreparedDataset
from moe_adapters.evaluation import evaluate_dataset, image_features, routed_logits, text_head
from moe_adapters.model.moe import ZERO_SHOT

from .conftest import QUADRANTS, TEMPLATES, make_prepared, trained_looking


def set_fast(model, fast: bool):
    model.batched_experts = fast
    model.truncate_text = fast


def close(a, b, rtol=1e-5):
    return float((a - b).norm() / b.norm()) < rtol


@torch.no_grad()
def test_batched_experts_and_cut_text_equal_the_loop_and_full_context(tiny_model, tokenizer):
    m = trained_looking(tiny_model).eval()
    images = torch.randn(6, 3, 32, 32)
    tokens = tokenizer([t.format(c=c) for c in QUADRANTS for t in TEMPLATES])
    for route in (ZERO_SHOT, 0, 1, 2):
        set_fast(m, False)
        ref_i, ref_t = m.encode_image(images, route), m.encode_text(tokens, route)
        set_fast(m, True)
        fast_i, fast_t = m.encode_image(images, route), m.encode_text(tokens, route)
        assert close(fast_i, ref_i) and close(fast_t, ref_t), route
        if route != ZERO_SHOT:  # and the adapters really are in the path
            assert not close(ref_i, m.encode_image(images, ZERO_SHOT), rtol=1e-2)


@pytest.fixture
def prepared(tmp_path):
    make_prepared(tmp_path, "Red", "red", n_train=8, n_test=30)
    return PreparedDataset(tmp_path / "Red")


def test_evaluation_with_every_cache_equals_recomputing_everything(tiny_model, tokenizer, prepared):
    m = trained_looking(tiny_model).eval()
    bs = 8
    # DDAS's decision, mixed: batch 0 zero-shot, batch 1 task 0, batch 2 task 1, batch 3 split
    routes = torch.tensor([ZERO_SHOT] * 8 + [0] * 8 + [1] * 8 + [ZERO_SHOT, 2] * 3)
    cls, tpl = prepared.meta["classnames"], prepared.meta["templates"]

    # straightforward: loop over experts, full context, eager images, heads and zero-shot features recomputed
    set_fast(m, False)
    ref = evaluate_dataset(m, tokenizer, cls, tpl, lambda: prepared.test_batches(bs), routes=routes, batch_size=bs)
    ref_logits = []
    heads = {}
    for i, (x, _) in enumerate(prepared.test_batches(bs)):
        r = routes[i * bs : (i + 1) * bs]
        ref_logits.append(
            routed_logits(m, x, r, lambda k: heads.setdefault(k, text_head(m, tokenizer, cls, tpl, k)))
        )

    # ours: batched experts, cut text, zero-shot features and head computed once, images read lazily
    set_fast(m, True)
    zs = image_features(m, prepared.test_batches(bs), ZERO_SHOT)
    zs_head = text_head(m, tokenizer, cls, tpl, ZERO_SHOT)
    reads = []

    def lazy():
        for x, y in prepared.test_batches(bs, lazy=True):
            yield (lambda x=x: reads.append(1) or x()), y

    fast = evaluate_dataset(
        m, tokenizer, cls, tpl, lazy, routes=routes, batch_size=bs, zero_shot_features=zs, zero_shot_head=zs_head
    )
    assert fast.to_json() == ref.to_json()
    assert len(reads) == 3  # the all-zero-shot batch is never read
    fast_heads = {ZERO_SHOT: zs_head}
    for i, (x, _) in enumerate(prepared.test_batches(bs)):
        r = routes[i * bs : (i + 1) * bs]
        got = routed_logits(
            m, x, r, lambda k: fast_heads.setdefault(k, text_head(m, tokenizer, cls, tpl, k)),
            zero_shot_features=zs[i * bs : (i + 1) * bs],
        )
        assert close(got, ref_logits[i]), i
        assert torch.equal(got.argmax(1), ref_logits[i].argmax(1))


@torch.no_grad()
def test_bf16_autocast_is_close_but_not_exact_and_returns_fp32(tiny_model):
    m = trained_looking(tiny_model).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = m.encode_image(x, 0, normalize=True)
    m.autocast_dtype = torch.bfloat16
    out = m.encode_image(x, 0, normalize=True)
    assert out.dtype == torch.float32
    assert not torch.equal(out, ref)  # it is an approximation, hence off by default and recorded
    assert close(out, ref, rtol=5e-2)


@pytest.mark.slow
@torch.no_grad()
def test_compiled_regions_match_eager(tiny_model):
    m = trained_looking(tiny_model).eval()
    x = torch.randn(4, 3, 32, 32)
    ref = {r: m.encode_image(x, r) for r in (ZERO_SHOT, 0)}
    m.compile_regions()
    for r, want in ref.items():
        assert close(m.encode_image(x, r), want), r


def _train_over_adamw_steps(tokenizer, configure) -> dict:
    """Five iterations (six AdamW steps) of train_task on a float64 tiny model with 16 experts, dropout off (two
    paths would draw their dropout masks differently), the gating noise on (shared seeds); configure(model) picks the
    paths. Returns which tensors had no gradient at each step, the counts, the AdamW state and the weights."""
    from moe_adapters.data.batches import ArrayImageDataset, TaskData
    from moe_adapters.model.clip import build_model
    from moe_adapters.training.task import train_task

    from .conftest import TINY, moe_spec, task_config, toy_images

    x, y = toy_images("red", 24, seed=5)
    task = TaskData("Red", QUADRANTS, TEMPLATES, ArrayImageDataset(x, y))
    cfg = task_config(lr=0.02, iterations=5, batch_size=4, warmup=1, image_size=32, freeze_top=2)
    # float64, so that what remains of two paths' different summation orders is far below any tolerance
    m = build_model(TINY, moe_spec(num_routers=2, num_experts=16, dropout=0.0), init_seed=42).double()
    m.randomize_adapters(0.05, seed=3)
    configure(m)
    seen = {"none": []}

    def on_step(it, loss, opt):
        seen["opt"] = opt
        seen["none"].append(tuple(p.grad is None for p in opt.param_groups[0]["params"]))

    names = {id(p): n for n, p in m.named_parameters()}
    counts = train_task(m, 0, task, tokenizer, cfg, progress=False, on_step=on_step)
    opt = seen["opt"]
    params = opt.param_groups[0]["params"]
    return {
        "none": seen["none"],
        "counts": {k: v.clone() for k, v in counts.items()},
        "state": {names[id(p)]: {k: v.clone() for k, v in opt.state[p].items()} for p in params if p in opt.state},
        "weights": {n: p.detach().clone() for n, p in m.named_parameters() if not n.startswith("clip.")},
        "names": [names[id(p)] for p in params],
        "frozen": (m.frozen_visual.clone(), m.frozen_text.clone()),
    }


def _assert_same_run(fast: dict, ref: dict) -> set[str]:
    """The same experts without gradient at every step, the same counts and frozen set, the same AdamW steps and
    moments (1e-9 of each element, or of the tensor's largest where an element's sum cancels), the same weights
    (1e-10), never-chosen experts untouched bit for bit. Returns the trainable tensors no sample ever chose."""
    assert fast["none"] == ref["none"] and len(fast["none"]) == 6  # iterations + 1 steps
    assert all(torch.equal(fast["counts"][t], ref["counts"][t]) for t in ("visual", "text"))
    assert all(torch.equal(a, b) for a, b in zip(fast["frozen"], ref["frozen"], strict=True))
    assert fast["state"].keys() == ref["state"].keys()
    never = set(ref["names"]) - set(ref["state"])  # trainable, yet no sample ever chose them: no state at all
    for name, st in ref["state"].items():
        assert torch.equal(fast["state"][name]["step"], st["step"]), name  # AdamW stepped the same tensors
        for k in ("exp_avg", "exp_avg_sq"):
            # the two paths sum in different orders: with one thread an element of 1e-11 of its tensor's scale
            # reached 1.8e-9 relative
            scale = float(st[k].abs().max())
            assert torch.allclose(fast["state"][name][k], st[k], rtol=1e-9, atol=1e-9 * scale), (name, k)
    for name, w in ref["weights"].items():
        if name in never:
            assert torch.equal(fast["weights"][name], w), name  # untouched, bit for bit
        else:
            # in float64 the summation order leaves ~1e-12 after 6 steps of lr 0.02
            assert float((fast["weights"][name] - w).abs().max()) < 1e-10, name
    return never


def test_batched_experts_train_as_the_dispatch_path_over_adamw_steps(tokenizer):
    """Over several AdamW steps, with experts unselected in some steps: the same experts get no gradient at all,
    the optimizer state (step counts, both moments) and the weights end the same as with per-expert dispatch."""

    def batched(on):
        def configure(m):
            m.batched_experts = on

        return configure

    fast, ref = _train_over_adamw_steps(tokenizer, batched(True)), _train_over_adamw_steps(tokenizer, batched(False))
    unselected = [
        {n for n, none in zip(ref["names"], step, strict=True) if none and ".experts." in n} for step in ref["none"]
    ]
    assert all(unselected) and len(set.union(*unselected)) > len(set.intersection(*unselected))  # varies by step
    never = _assert_same_run(fast, ref)
    assert any(".experts." in n for n in never)


def test_training_fast_paths_train_as_plain_open_clip_blocks_over_adamw_steps(tokenizer, monkeypatch):
    """Every training speed-up on by default (batched experts, text cut after the longest prompt, the contiguous
    attention input, the last block cut to the positions that reach the output) against none of them: open_clip's
    own attention call at every position of every block, the per-expert loop, the full 77-token context. Over six
    AdamW steps: the same gradients' presence, counts, frozen set, optimizer state and weights."""
    import moe_adapters.model.clip as clip_module

    def fast(m):
        assert m.batched_experts and m.truncate_text and m.cut_last_block  # the defaults

    fast_run = _train_over_adamw_steps(tokenizer, fast)

    def plain(m):
        m.batched_experts = m.truncate_text = m.cut_last_block = False

    with monkeypatch.context() as mp:
        mp.setattr(clip_module, "_attention", lambda blk, q, mask: blk.attention(q_x=q, attn_mask=mask))
        mp.setattr(clip_module, "_attention_at", None)  # never called on the plain path
        plain_run = _train_over_adamw_steps(tokenizer, plain)
    _assert_same_run(fast_run, plain_run)
