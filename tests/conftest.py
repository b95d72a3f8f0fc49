"""Shared fixtures: CPU only, tiny sizes, temporary folders, no network."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
import yaml

from moe_adapters.config import load_config
from moe_adapters.data.prepared import write_prepared
from moe_adapters.model.clip import BackboneSpec, build_model, tokenizer_for
from moe_adapters.model.moe import MoESpec

from .slurm_workflow import SLURM_TEST, slurm_mini_in_background
from .workflow_helpers import reduced_mini_origin, reproduce_mini

# two threads on this 2-core machine; one per worker when pytest-xdist runs several
torch.set_num_threads(1 if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1 else 2)

TINY = BackboneSpec("tiny-clip", True, None)


def moe_spec(**overrides) -> MoESpec:
    """The paper's adapter shape (from the default run config: 22 experts, top-2, 11 routers) with overrides."""
    return replace(MoESpec.from_model(load_config().model, 11), **overrides)


def ddas_options(**overrides):
    """The reference's DDAS decision (threshold 0.0655, per batch of 128, untrained autoencoders compete)."""
    from moe_adapters.model.ddas import DDASOptions

    d = load_config().ddas
    return DDASOptions(**{"threshold": d.threshold, "only_trained": d.only_trained, "per_sample": d.per_sample,
                          "batch_size": load_config().eval.batch_size, **overrides})


def task_config(**overrides):
    """The paper's full-shot training hyper-parameters (task 0 of Order I's learning rate) with overrides."""
    from moe_adapters.steps.specs import task_spec
    from moe_adapters.steps.train import task_config as from_spec

    return replace(from_spec(task_spec(load_config(), 0)), **overrides)


def ae_config(**overrides):
    """The paper's autoencoder training (task autoencoders: 300 iterations, lr 0.01) with overrides."""
    from moe_adapters.training.autoencoder import AETrainConfig

    d, t = load_config().ddas, load_config().train
    return AETrainConfig(**{"iterations": d.iterations, "lr": d.lr, "weight_decay": d.weight_decay,
                            "decay_every_epochs": d.decay_every_epochs, "seed": t.seed, **overrides})


# Expensive shared fixtures, each built once per test session: under `pytest -n 2 --dist loadgroup` (make test)
# every test that uses one runs on the same worker as the others that do, in the group named here (the first that
# matches wins, so the SLURM run of the reduced mini stays with the reduced mini it is compared with).
SHARED_FIXTURE_GROUPS = {
    "reduced_mini_run": "reduced_mini",
    "imported": "imported_release",
    "slurm": "slurm",
}


def _join_group(item, group: str) -> None:
    """What pytest-xdist does for an `xdist_group` mark: the group after an '@' in the node id, which its loadgroup
    scheduler splits on. Done here because xdist 3.8 writes `item._nodeid`, which pytest 9.2 no longer reads (its
    node ids live in `item._id`), so marks alone would leave every test ungrouped."""
    if "@" in item.nodeid:
        return
    if hasattr(item, "_id"):
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(f"{item.nodeid}@{group}")
    else:
        item._nodeid = f"{item.nodeid}@{group}"


def pytest_collection_modifyitems(config, items):
    grouping = bool(getattr(config.option, "loadgroup", False))  # set in pytest-xdist's workers under loadgroup
    for item in items:
        group = next((g for f, g in SHARED_FIXTURE_GROUPS.items() if f in getattr(item, "fixturenames", ())), None)
        if group is not None and grouping:
            _join_group(item, group)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def trained_looking(model, std: float = 0.05, seed: int = 7):
    """Non-zero up-projections, routers and noise weights, as after training (a fresh model is plain CLIP)."""
    return model.randomize_adapters(std, seed)


@pytest.fixture(scope="session", autouse=True)
def verification_cache(tmp_path_factory):
    """The hashes the tests' steps verify are cached in the session's folder (their jobs inherit it), not ~/.cache."""
    os.environ["MOE_ADAPTERS_CACHE"] = str(tmp_path_factory.mktemp("verification_cache"))


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(TINY, moe_spec(num_routers=3), init_seed=42)


@pytest.fixture(scope="session")
def tokenizer():
    return tokenizer_for(TINY)


def toy_images(kind: str, n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Small labelled image sets of clearly different appearance; the label sets a blob's quadrant."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    base = np.zeros((n, size, size, 3), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i, lab in enumerate(labels):
        if kind == "red":
            img = np.stack(
                [
                    0.8 + 0.1 * rng.random((size, size)),
                    0.1 * rng.random((size, size)),
                    0.1 * rng.random((size, size)),
                ],
                -1,
            )
        elif kind == "green":
            stripes = ((xx // 4) % 2).astype(np.float32)
            img = np.stack([0.1 * stripes, 0.5 + 0.4 * stripes, 0.1 * stripes], -1)
        elif kind == "blue":
            img = np.stack(
                [
                    0.05 * rng.random((size, size)),
                    0.05 * rng.random((size, size)),
                    0.9 - 0.1 * rng.random((size, size)),
                ],
                -1,
            )
        elif kind == "noise":
            img = rng.random((size, size, 3))
        else:
            raise ValueError(kind)
        cy, cx = (lab // 2) * size // 2 + size // 4, (lab % 2) * size // 2 + size // 4
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < (size // 6) ** 2
        img = img.copy()
        img[blob] = 1.0 - img[blob]
        base[i] = img
    return (base * 255).round().astype(np.uint8), labels


QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]
TEMPLATES = ["a photo with a blob at the {c}.", "a {c} blob."]


def make_prepared(root, name: str, kind: str, n_train: int = 64, n_test: int = 40, seed: int = 0):
    train, ytr = toy_images(kind, n_train, seed=seed)
    test, yte = toy_images(kind, n_test, seed=seed + 1)
    return write_prepared(
        root / name,
        name=name,
        classnames=QUADRANTS,
        templates=TEMPLATES,
        test_images=np.ascontiguousarray(test.transpose(0, 3, 1, 2)),
        test_labels=yte,
        train_images=train,
        train_labels=ytr,
    )


@pytest.fixture
def toy_run(tmp_path):
    """A complete tiny run: protocol, prepared datasets (two tasks, generic data, an unseen set) and a config."""
    data = tmp_path / "data"
    make_prepared(data, "Red", "red", seed=0)
    make_prepared(data, "Green", "green", seed=10)
    make_prepared(data, "Generic", "noise", seed=20)
    make_prepared(data, "Blue", "blue", seed=30)
    proto = {
        "orders": {"order1": ["Red", "Green"]},
        "datasets": {
            name: {"classnames": QUADRANTS, "templates": TEMPLATES, "lr_full_shot": 0.01}
            for name in ("Red", "Green", "Blue", "Generic")
        },
    }
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(proto))
    cfg = {
        "benchmark": "mini",
        "protocol": str(tmp_path / "protocol.yaml"),
        "data_root": str(data),
        "results_dir": str(tmp_path / "results"),
        "device": "cpu",
        "model": {"name": "tiny-clip", "pretrained": None, "num_experts": 4},
        "train": {"iterations": 8, "batch_size": 16, "warmup": 2, "checkpoint_every": 3, "num_workers": 0},
        "ddas": {
            "feature": "pixels",
            "pixel_size": 8,
            "code_dim": 100,
            "decay_every_epochs": 10,
            "iterations_generic": 60,
            "iterations": 60,
            "threshold": 0.02,
            "generic_dataset": "Generic",
        },
        "eval": {"batch_size": 8, "num_workers": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return tmp_path, path


@dataclass
class WorkflowRun:
    workdir: Path
    config: Path
    returncode: int
    log: str
    slurm: object | None = None  # tests/slurm_workflow.SlurmMiniRun, where the SLURM test of the reduced mini runs

    def check(self) -> None:
        assert self.returncode == 0, self.log[-3000:]


def _selected(session, name: str) -> bool:
    return any(getattr(item, "originalname", item.name) == name for item in session.items)


@pytest.fixture(scope="session")
def reduced_mini_run(tmp_path_factory, request):
    """The reduced mini benchmark, run once by `dvc repro mini` (hence through Snakemake) in a git repository
    holding a copy of the project; shared by the workflow, report, DVC and SLURM tests.

    Where the SLURM test of the reduced mini is selected, the same commit's MTIL table is built through a real
    SLURM at the same time (tests/slurm_workflow.py): its jobs mostly wait for status polls, so it overlaps the
    local run rather than following it; that test waits for it and compares."""
    root = tmp_path_factory.mktemp("reduced_mini")
    repo = reduced_mini_origin(root, root / "remote")
    with contextlib.ExitStack() as stack:
        slurm = None
        if _selected(request.session, SLURM_TEST):
            slurm = stack.enter_context(slurm_mini_in_background(repo, root / "slurm"))
        r = reproduce_mini(repo)
        yield WorkflowRun(repo, repo / "config/mini.yaml", r.returncode, r.stderr + r.stdout, slurm)
