"""Routed-feature reuse across checkpoints (reuse.py): the logits with the saving are exactly those without it.

The tiny model's checkpoint "k+1" is checkpoint k with some experts changed: groups whose computation read only
unchanged experts are reused, the others recomputed, and every logit is torch.equal to recomputing everything.
"""

import copy

import pytest
import torch

from moe_adapters.data.prepared import PreparedDataset
from moe_adapters.evaluation import evaluate_dataset, routed_logits, text_head
from moe_adapters.model.moe import ZERO_SHOT
from moe_adapters.reuse import RoutedFeatureCache

from .conftest import QUADRANTS, TEMPLATES, make_prepared, trained_looking

BS = 4


@pytest.fixture
def prepared(tmp_path):
    make_prepared(tmp_path, "Red", "red", n_train=8, n_test=40)
    return PreparedDataset(tmp_path / "Red")


@pytest.fixture
def model(tiny_model):
    return trained_looking(tiny_model).eval()


def routes_mixed(n):
    """Per batch of 4: route 0, route 1, zero-shot, and a batch split between routes 0 and 1."""
    pattern = [[0] * BS, [1] * BS, [ZERO_SHOT] * BS, [0, 1, 0, 1]]
    r = [pattern[(i // BS) % len(pattern)][i % BS] for i in range(n)]
    return torch.tensor(r)


def logits_of(model, tokenizer, prepared, routes, cache=None, device="cpu"):
    """Every batch's logits, as evaluate_dataset computes them (text heads recomputed, zero-shot features absent)."""
    heads = {}
    head = lambda r: heads.setdefault(r, text_head(model, tokenizer, QUADRANTS, TEMPLATES, r, device))  # noqa: E731
    out, total = [], 0
    for x, y in prepared.test_batches(BS, device, lazy=True):
        r = routes[total : total + len(y)]
        out.append(routed_logits(model, x, r, head, device=device, feature_cache=cache, offset=total))
        total += len(y)
    return torch.cat(out)


def change_expert(model, layer, e, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        p = model.visual_moe[layer].experts[e].up_proj.weight
        p.add_((torch.randn(p.shape, generator=g) * 0.05).to(p.device))


def first_checkpoint(model, tokenizer, prepared, routes, path, device="cpu"):
    cache = RoutedFeatureCache(model, prepared.meta["sha256"]["test_images.npy"])
    logits_of(model, tokenizer, prepared, routes, cache, device)
    cache.save(path, "Red")
    return cache


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@torch.no_grad()
def test_reuse_gives_exactly_the_logits_of_recomputing_with_both_branches(model, tokenizer, prepared, tmp_path, device):
    routes = routes_mixed(40)
    path = tmp_path / "Red.safetensors"
    model = model.to(device)
    first = first_checkpoint(model, tokenizer, prepared, routes, path, device)
    groups = list(first.current.values())
    used = torch.stack([u for _, u, _ in groups])  # [groups, layers, experts]
    # an expert some groups read and others did not: changing it leaves both kinds of group
    some = (used.any(0) & ~used.all(0)).nonzero().tolist()
    assert some, "every group read every expert: the tiny setting cannot tell reuse from recomputation"
    nxt = copy.deepcopy(model)
    change_expert(nxt, *some[0])
    without = logits_of(nxt, tokenizer, prepared, routes, device=device)
    cache = RoutedFeatureCache(nxt, prepared.meta["sha256"]["test_images.npy"]).load(path)
    with_reuse = logits_of(nxt, tokenizer, prepared, routes, cache, device)
    assert cache.reused > 0 and cache.computed > 0  # both branches ran
    assert cache.reused + cache.computed == int((routes != ZERO_SHOT).sum())
    assert torch.equal(with_reuse, without)
    # and the reused groups really were the unchanged ones: the change moved some logits
    assert not torch.equal(without, logits_of(model, tokenizer, prepared, routes, device=device))


@torch.no_grad()
def test_a_changed_expert_forces_recomputation(model, tokenizer, prepared, tmp_path):
    routes = routes_mixed(40)
    path = tmp_path / "Red.safetensors"
    first_checkpoint(model, tokenizer, prepared, routes, path)
    sha = prepared.meta["sha256"]["test_images.npy"]
    # unchanged checkpoint: every group is reused, nothing is forwarded
    same = RoutedFeatureCache(model, sha).load(path)
    assert torch.equal(logits_of(model, tokenizer, prepared, routes, same), logits_of(model, tokenizer, prepared, routes))
    assert same.computed == 0 and same.reused == int((routes != ZERO_SHOT).sum())
    # change every expert some group read at layer 0: every group is recomputed, and gets the new features
    nxt = copy.deepcopy(model)
    for _, used, _ in same.current.values():
        for e in used[0].nonzero().flatten().tolist():
            change_expert(nxt, 0, e, seed=e)
    cache = RoutedFeatureCache(nxt, sha).load(path)
    got = logits_of(nxt, tokenizer, prepared, routes, cache)
    assert cache.reused == 0
    assert torch.equal(got, logits_of(nxt, tokenizer, prepared, routes))
    assert not torch.equal(got, logits_of(model, tokenizer, prepared, routes))


@torch.no_grad()
def test_a_changed_router_other_images_or_group_recompute(model, tokenizer, prepared, tmp_path):
    routes = routes_mixed(40)
    path = tmp_path / "Red.safetensors"
    first_checkpoint(model, tokenizer, prepared, routes, path)
    sha = prepared.meta["sha256"]["test_images.npy"]
    nxt = copy.deepcopy(model)
    with torch.no_grad():
        nxt.visual_moe[1].routers[1].add_(0.01)  # route 1's router: its groups recompute, route 0's are reused
    cache = RoutedFeatureCache(nxt, sha).load(path)
    assert torch.equal(logits_of(nxt, tokenizer, prepared, routes, cache), logits_of(nxt, tokenizer, prepared, routes))
    assert cache.computed == int((routes == 1).sum()) and cache.reused == int((routes == 0).sum())
    other = RoutedFeatureCache(model, "another test set").load(path)
    logits_of(model, tokenizer, prepared, routes, other)
    assert other.reused == 0
    # a different group (DDAS split the batches differently): recomputed, never a subset of a stored group
    regrouped = RoutedFeatureCache(model, sha).load(path)
    logits_of(model, tokenizer, prepared, torch.zeros(40, dtype=torch.long), regrouped)
    same_groups = sum(BS for b in range(40 // BS) if b % 4 == 0)  # only the all-route-0 batches are the same groups
    assert regrouped.reused == same_groups and regrouped.computed == 40 - same_groups
    # a corrupt cache is ignored, not trusted
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    broken = RoutedFeatureCache(model, sha).load(path)
    assert broken.previous == {}


def test_a_cache_written_on_another_cpu_model_is_not_reused(model, tokenizer, prepared, tmp_path, monkeypatch):
    """Results pulled from a machine with another CPU: its kernels may give other bits, so its features recompute."""
    import moe_adapters.reuse as reuse

    routes = routes_mixed(40)
    path = tmp_path / "Red.safetensors"
    sha = prepared.meta["sha256"]["test_images.npy"]
    with monkeypatch.context() as m:
        m.setattr(reuse, "device_name", lambda dev: "cpu (Another CPU 9000)")
        first_checkpoint(model, tokenizer, prepared, routes, path)
    here = RoutedFeatureCache(model, sha).load(path)
    logits_of(model, tokenizer, prepared, routes, here)
    assert here.reused == 0 and here.computed == int((routes != ZERO_SHOT).sum())
    first_checkpoint(model, tokenizer, prepared, routes, path)  # written here: the same checkpoint reuses it all
    again = RoutedFeatureCache(model, sha).load(path)
    logits_of(model, tokenizer, prepared, routes, again)
    assert again.computed == 0 and again.reused == int((routes != ZERO_SHOT).sum())


@torch.no_grad()
def test_evaluate_dataset_counts_equal_with_and_without_reuse(model, tokenizer, prepared, tmp_path):
    routes = routes_mixed(40)
    path = tmp_path / "Red.safetensors"
    first_checkpoint(model, tokenizer, prepared, routes, path)
    nxt = copy.deepcopy(model)
    change_expert(nxt, 0, 0)
    sha = prepared.meta["sha256"]["test_images.npy"]

    def run(cache):
        return evaluate_dataset(
            nxt, tokenizer, QUADRANTS, TEMPLATES, lambda: prepared.test_batches(BS, lazy=True),
            routes=routes, batch_size=BS, feature_cache=cache,
        ).to_json()

    assert run(RoutedFeatureCache(nxt, sha).load(path)) == run(None)


@pytest.mark.slow
def test_evaluate_step_with_and_without_reuse_writes_the_same_results(toy_run, tmp_path):
    """Through the workflow's step: checkpoints 0 and 1 of a tiny trained run, evaluated in order with the cache
    and without it; the results are the same and checkpoint 1's evaluation read the cache."""
    from moe_adapters.config import read_yaml
    from moe_adapters.integrity import read_evaluation
    from moe_adapters.steps.ddas import train_autoencoder_step
    from moe_adapters.steps.evaluate import evaluate_step, features_step
    from moe_adapters.steps.specs import Runtime
    from moe_adapters.steps.train import train_task_step
    from moe_adapters.workflow.plan import Plan

    root, cfg = toy_run
    plan = Plan(read_yaml(cfg))
    run = plan.default_run
    data = root / "data"
    out = root / "out"
    rt = Runtime(0, 0, True, True)
    n = len(plan.spec("evaluate", run, 0).datasets)
    ckpts, aes = [], []
    for k in range(n):
        spec = plan.spec("task", run, k)
        ck = out / f"task_{k}.safetensors"
        train_task_step(spec, rt, data / spec.dataset, ck, ckpts[-1] if ckpts else None, progress=False)
        ckpts.append(ck)
    for k in range(n + 1):
        spec = plan.spec("autoencoder", run, k)
        ae = out / f"ae_{k}.safetensors"
        train_autoencoder_step(spec, rt, data / spec.dataset, ae, progress=False)
        aes.append(ae)
    feats = {}
    for d in plan.spec("evaluate", run, 0).datasets:
        feats[d] = out / "features" / f"{d}.safetensors"
        features_step(plan.spec("features", run, d), rt, data / d, aes, feats[d])
    got = {}
    for reuse in (True, False):
        ev = out / ("reuse" if reuse else "plain")
        runtime = Runtime(0, 0, True, True, reuse_features=reuse)
        for k in range(n):
            evaluate_step(plan.spec("evaluate", run, k), runtime, data, feats, ev / f"task_{k}.json", ckpts[k])
        got[reuse] = [read_evaluation(ev / f"task_{k}.json") for k in range(n)]
    for a, b in zip(got[True], got[False], strict=True):
        assert a["results"] == b["results"]
    work = got[True][1]["cost"]["work"]
    assert work["image_forwards"] + work["reused"] > 0
    assert (out / "reuse" / "reuse").is_dir() and not (out / "plain" / "reuse").exists()
