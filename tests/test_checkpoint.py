"""Checkpoints: round trip, identity checks, and no code execution on load."""

import os
import pickle

import pytest
import torch

from moe_adapters.checkpoint import (
    CheckpointError,
    load_autoencoder,
    load_task_checkpoint,
    load_tensors,
    safe_torch_load,
    save_autoencoder,
    save_task_checkpoint,
    save_torch,
)
from moe_adapters.model.clip import BackboneSpec, MoECLIP, build_model, create_backbone
from moe_adapters.model.ddas import init_autoencoder

from .conftest import TINY, moe_spec


def perturb(model):
    with torch.no_grad():
        for p in model.visual_moe.parameters():
            p.add_(torch.randn_like(p))
    model.frozen_text[0, 2] = True


def test_round_trip_holds_only_what_training_changed(tiny_model, tmp_path):
    perturb(tiny_model)
    path = tmp_path / "t.safetensors"
    counts = tiny_model.new_counts()
    counts["visual"] += 3
    save_task_checkpoint(path, tiny_model, task=1, dataset="X", counts=counts, extra={"note": "hi"})
    tensors, meta = load_tensors(path)
    assert not any(k.startswith("clip.") for k in tensors)
    assert meta["backbone"]["name"] == "tiny-clip" and meta["task"] == 1 and meta["note"] == "hi"
    fresh = MoECLIP(tiny_model.clip, tiny_model.spec, tiny_model.backbone, init_seed=42)
    meta = load_task_checkpoint(path, fresh)
    for k, v in tiny_model.moe_state_dict().items():
        assert torch.equal(fresh.moe_state_dict()[k], v), k
    assert torch.equal(meta["counts"]["visual"], counts["visual"])


def test_other_expert_count_is_refused_by_name(tiny_model, tmp_path):
    path = tmp_path / "t.safetensors"
    save_task_checkpoint(path, tiny_model, task=0, dataset="X", counts=None, extra={})
    other = MoECLIP(tiny_model.clip, moe_spec(num_experts=4, num_routers=3), tiny_model.backbone, init_seed=42)
    with pytest.raises(CheckpointError, match="num_experts=22, this model has num_experts=4"):
        load_task_checkpoint(path, other)


def test_other_backbone_is_refused(tiny_model, tmp_path):
    path = tmp_path / "t.safetensors"
    save_task_checkpoint(path, tiny_model, task=0, dataset="X", counts=None, extra={})
    other = build_model(TINY, moe_spec(num_routers=3), init_seed=42)
    with torch.no_grad():
        other.clip.ln_final.weight[0] += 1e-3  # same architecture, slightly other weights
    with pytest.raises(CheckpointError, match="another backbone"):
        load_task_checkpoint(path, other)


def test_crafted_pickle_that_would_execute_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    with pytest.raises(CheckpointError, match="execute code"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="execute code"):
        load_tensors(path)
    assert not marker.exists()


def test_resume_state_round_trips_with_weights_only(tmp_path):
    state = {
        "step": 3,
        "rng": torch.get_rng_state(),
        "opt": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}],
        },
    }
    save_torch(tmp_path / "s.pt", state)
    back = safe_torch_load(tmp_path / "s.pt")
    assert back["step"] == 3 and torch.equal(back["rng"], state["rng"])


def test_corrupt_or_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tensors(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_tensors(bad)


def test_autoencoder_round_trip_and_shape_check(tmp_path):
    ae = init_autoencoder(2, 30, 7, 42)
    save_autoencoder(tmp_path / "ae.safetensors", ae, index=2, trained=True, extra={"dataset": "X"})
    other = init_autoencoder(5, 30, 7, 42)
    meta = load_autoencoder(tmp_path / "ae.safetensors", other)
    assert meta["index"] == 2 and meta["dataset"] == "X"
    assert torch.equal(other.decoder[0].weight, ae.decoder[0].weight)
    with pytest.raises(CheckpointError, match="shape"):
        load_autoencoder(tmp_path / "ae.safetensors", init_autoencoder(2, 31, 7, 42))


def test_writes_are_atomic_no_partial_file_on_failure(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "t.safetensors"
    import moe_adapters.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_task_checkpoint(path, tiny_model, task=0, dataset="X", counts=None, extra={})
    assert list(tmp_path.iterdir()) == []


def test_missing_pretrained_weights_fail_fast(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_backbone(BackboneSpec("tiny-clip", True, str(tmp_path / "w.safetensors")))
    with pytest.raises(FileNotFoundError, match="Hugging Face cache"):
        os.environ["HF_HOME"] = str(tmp_path / "hf")
        try:
            create_backbone(BackboneSpec("ViT-B-16", True, "openai"))
        finally:
            del os.environ["HF_HOME"]


@pytest.mark.parametrize("text", ["5826e69", "1234567", "0012", "true", "null", "moe-adapters/1"])
def test_metadata_strings_read_back_as_strings_even_where_they_look_like_json(tmp_path, text):
    """A git commit such as 5826e69 is a valid JSON number: metadata must not turn it into 5.826e+72."""
    from moe_adapters.checkpoint import read_metadata, save_tensors

    path = tmp_path / "t.safetensors"
    save_tensors(path, {"x": torch.zeros(1)}, {"commit": text, "n": 3, "cost": {"device": "cpu"}})
    for meta in (read_metadata(path), load_tensors(path)[1]):
        assert meta["commit"] == text and meta["n"] == 3 and meta["cost"] == {"device": "cpu"}
