"""`moe-adapters prepare --check-all` names missing pretrained weights (ViT-B/16, AlexNet) beside missing data,
with where each is looked for and how to get it, before any job; and lists them where they are present."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .workflow_helpers import REPO

ALEXNET = "alexnet-owt-7be5be79.pth"


def check_all(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a fresh process whose caches (Hugging Face, ~/.cache/clip, torch hub) are empty folders."""
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "src"),
        "HOME": str(home),
        "HF_HOME": str(home / "hf"),
        "TORCH_HOME": str(home / "torch"),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "moe_adapters.cli",
        "prepare",
        "--check-all",
        "--set",
        f"data_root={tmp_path / 'data'}",
    ]
    start = time.monotonic()
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    return r, time.monotonic() - start


def test_missing_weights_are_named_with_path_and_source_beside_missing_data(tmp_path):
    r, took = check_all(tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr
    assert "2 of 2 pretrained weights files are missing" in err, err
    # the backbone: which weights, where they were looked for, and the command that fetches them
    assert "ViT-B-16 'openai' (CLIP backbone, model.pretrained)" in err
    assert "open_clip.create_model('ViT-B-16', pretrained='openai')" in err and "~/.cache/clip" in err
    # AlexNet: the exact path it is read from (the torch hub cache) and its download address
    assert str(tmp_path / "home/torch/hub/checkpoints" / ALEXNET) in err
    assert f"https://download.pytorch.org/models/{ALEXNET}" in err
    assert "README, section Backbone weights" in err
    # the data check still runs, in the same message (weights first)
    assert "12 of 12 datasets cannot be prepared" in err
    assert err.index("pretrained weights") < err.index("datasets cannot be prepared")
    assert took < 60, (
        f"the check took {took:.0f} s"
    )  # stat only: the time is the imports of torch and open_clip


def test_present_weights_are_listed_and_only_the_data_is_missing(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants
    from open_clip.pretrained import get_pretrained_cfg

    from moe_adapters.cli import main

    # ViT-B/16 'openai' in a pre-filled Hugging Face cache (the layout huggingface_hub writes), AlexNet in the
    # torch hub cache; both only looked up, never loaded
    repo = "/".join(get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"].split("/")[:2])
    cache = tmp_path / "hf"
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    (cache / f"models--{repo.replace('/', '--')}" / "refs").mkdir()
    (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    alexnet = tmp_path / "torch/hub/checkpoints" / ALEXNET
    alexnet.parent.mkdir(parents=True)
    alexnet.write_bytes(b"x")
    data = ["--set", f"data_root={tmp_path / 'data'}"]

    assert main(["prepare", "--check-all", *data]) == 2
    err = capsys.readouterr().err
    assert "12 of 12 datasets cannot be prepared" in err and "weights" not in err.split("datasets cannot")[0], err
    (tmp_path / "data/MNIST").mkdir(parents=True)
    (tmp_path / "data/MNIST/meta.json").write_text("{}")
    assert main(["prepare", "--check-all", *data, "--dataset", "MNIST"]) == 0
    out = capsys.readouterr().out
    assert f"ViT-B-16 'openai' (CLIP backbone, model.pretrained): {snapshot / 'open_clip_model.safetensors'}" in out
    assert f"AlexNet ImageNet (DDAS features, ddas.feature_weights): {alexnet}" in out
    assert "MNIST" in out and "prepared" in out
    # weights files named in the config: present is listed, absent is named with its path
    vit = tmp_path / "vit-b-16.safetensors"
    vit.write_bytes(b"x")
    nope = tmp_path / "nope.pth"
    args = ["--set", f"model.pretrained={vit}", "--set", f"ddas.feature_weights={nope}", "--dataset", "MNIST"]
    assert main(["prepare", "--check-all", *data, *args]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 pretrained weights files are missing" in err and f"AlexNet ImageNet weights not found at {nope}" in err
    assert "datasets cannot be prepared" not in err  # MNIST is prepared: only the weights are missing
