"""A tiny stand-in for the authors' release: a toy MTIL setting (two tasks) on the tiny CLIP, and its files in the
reference's key layout ({Dataset}.pth and {Dataset}_autochooser.pth, each {"state_dict": ...})."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

from moe_adapters.model.clip import BackboneSpec, MoECLIP, build_model
from moe_adapters.model.ddas import Autoencoder
from moe_adapters.model.moe import MoESpec
from moe_adapters.reference import autochooser_layout, to_reference_layout

from .conftest import QUADRANTS, TEMPLATES, make_prepared

DATASETS = ("Red", "Green")
EXTRA_SLOTS = 2  # the reference's ModuleList may hold more autoencoders than the run has (24 for 12)


def toy_mtil_config(root: Path, *, data_root: str, results_dir: str, protocol: str) -> dict:
    """An MTIL-benchmark config on toy data: two tasks, the tiny CLIP (random seeded backbone), pixel DDAS."""
    proto = {
        "orders": {"order1": list(DATASETS)},
        "datasets": {n: {"classnames": QUADRANTS, "templates": TEMPLATES, "lr_full_shot": 0.01} for n in DATASETS},
    }
    (root / protocol).parent.mkdir(parents=True, exist_ok=True)
    (root / protocol).write_text(yaml.safe_dump(proto))
    make_prepared(root / data_root, "Red", "red", seed=0)
    make_prepared(root / data_root, "Green", "green", seed=10)
    return {
        "benchmark": "mtil",
        "protocol": protocol,
        "data_root": data_root,
        "results_dir": results_dir,
        "device": "cpu",
        "model": {"name": "tiny-clip", "pretrained": None, "num_experts": 4},
        "train": {"num_workers": 0},
        "ddas": {"feature": "pixels", "pixel_size": 8, "code_dim": 10, "threshold": 0.2},
        "eval": {"batch_size": 8, "num_workers": 0},
    }


def tiny_release_model(num_tasks: int = len(DATASETS)) -> MoECLIP:
    return build_model(BackboneSpec("tiny-clip", True, None), MoESpec.from_model(_model_cfg(), num_tasks), init_seed=0)


def _model_cfg():
    from moe_adapters.config import load_config

    return load_config(overrides={"model": {"name": "tiny-clip", "pretrained": None, "num_experts": 4}}).model


def write_release(folder: Path, code_dim: int = 10, feature_dim: int = 3 * 8 * 8) -> dict:
    """The release's files in `folder`; returns what they hold in this project's terms: per task the model state
    ("models", MoE state dicts), the trained and the initial autoencoders."""
    folder.mkdir(parents=True, exist_ok=True)
    T = len(DATASETS)
    model = tiny_release_model(T)
    models = []
    for k, d in enumerate(DATASETS):
        model.randomize_adapters(0.2, seed=100 + k)
        with torch.no_grad():  # as the reference's: the routers of later tasks are still zero
            for moe in (*model.visual_moe, *model.text_moe):
                for t in range(k + 1, T):
                    moe.routers[t].zero_()
                    moe.noise[t].zero_()
        models.append({k2: v.clone() for k2, v in model.moe_state_dict().items()})
        torch.save({"state_dict": to_reference_layout(model)}, folder / f"{d}.pth")
    torch.manual_seed(3)
    initial = [Autoencoder(feature_dim, code_dim) for _ in range(T + 1 + EXTRA_SLOTS)]
    trained = [copy.deepcopy(a) for a in initial]
    for j, a in enumerate(trained):
        with torch.no_grad():
            for p in a.parameters():
                p.add_(0.01 * (j + 1))
    for i, d in enumerate(DATASETS):  # after task i: autoencoders 0..i+1 trained, the others at their initialisation
        slots = [trained[j] if j <= i + 1 else initial[j] for j in range(len(initial))]
        torch.save({"state_dict": autochooser_layout(slots)}, folder / f"{d}_autochooser.pth")
    return {"model": model, "models": models, "trained": trained[: T + 1], "initial": initial[: T + 1]}
