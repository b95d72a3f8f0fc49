"""Training is the reference's: 5-shot autoencoders on fixed 5-per-class subsets (autoencoder 0 included) with the
full loader's epoch count, and the seed governs the adapters' initialisation too."""

import numpy as np
import pytest
import torch

from moe_adapters.config import load_config
from moe_adapters.data.prepared import PreparedDataset, write_prepared
from moe_adapters.steps.build import adapted_model
from moe_adapters.steps.ddas import autoencoder_batches
from moe_adapters.steps.specs import autoencoder_spec, task_spec

from .conftest import toy_images


@pytest.fixture
def prepared(tmp_path):
    x, y = toy_images("red", 300, seed=1)  # 4 classes, about 75 images each
    t, ty = toy_images("red", 8, seed=2)
    write_prepared(tmp_path / "Red", name="Red", classnames=["a", "b", "c", "d"], templates=["{c}"],
                   test_images=np.ascontiguousarray(t.transpose(0, 3, 1, 2)), test_labels=ty,
                   train_images=x, train_labels=y)
    return PreparedDataset(tmp_path / "Red")


def test_few_shot_autoencoders_train_on_five_per_class_with_the_full_loaders_epochs(prepared):
    rc = load_config(overrides={"shots": 5})
    for index in (0, 3):  # autoencoder 0 (generic data) too, as the reference's few-shot DDAS
        spec = autoencoder_spec(rc, index)
        assert (spec.shots, spec.lr, spec.batch_size) == (5, 0.003, 64)
        batches, decay_batches = autoencoder_batches(spec, prepared, 0)
        labels = [int(batches.dataset[i][1]) for i in range(len(batches.dataset))]
        assert len(labels) == 5 * 4 and np.bincount(labels).tolist() == [5, 5, 5, 5]
        # crops drawn once: the subset holds tensors, and every epoch serves the same ones
        assert batches.transform is None and isinstance(batches.dataset[0][0], torch.Tensor)
        # the step decay still counts epochs of the full train loader (300 images / 64 = 5 batches), not the subset's
        assert decay_batches == -(-300 // 64) and batches.batches_per_epoch == 1
    full = autoencoder_spec(load_config(), 0)
    assert full.shots == 0 and full.lr == 0.01
    batches, decay_batches = autoencoder_batches(full, prepared, 0)
    assert len(batches.dataset) == 300 and decay_batches == batches.batches_per_epoch
    off = autoencoder_spec(load_config(overrides={"shots": 5, "ddas": {"few_shot_autoencoders": False}}), 1)
    assert off.shots == 0  # the named alternative: the full train split


def test_the_seed_governs_the_adapters_initialisation():
    def init(seed):
        spec = task_spec(load_config(overrides={"model": {"name": "tiny-clip", "pretrained": None},
                                                "train": {"seed": seed}}), 0)
        m = adapted_model(spec, None, init_seed=spec.seed)
        return m.visual_moe[0].experts[0].down_proj.weight.detach().clone()

    assert torch.equal(init(42), init(42))
    assert not torch.equal(init(42), init(43))
