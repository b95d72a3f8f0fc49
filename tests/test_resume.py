"""A training run killed at any point and restarted ends with the same weights as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from moe_adapters.checkpoint import load_tensors


def train_cmd(cfg, out, *extra):
    return [
        sys.executable,
        "-m",
        "moe_adapters.cli",
        "train-task",
        "-c",
        str(cfg),
        "--task",
        "0",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def kill_when_state_appears(cmd, state, min_step):
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists():
            step = torch.load(state, weights_only=True)["step"] if state.stat().st_size else 0
            if step >= min_step:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.01)
    proc.wait()
    return proc.returncode


@pytest.mark.parametrize("kind", ["task", "autoencoder"])
def test_kill_and_resume_is_bit_identical(toy_run, kind):
    root, cfg_path = toy_run
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update(iterations=30, checkpoint_every=4)
    cfg["ddas"].update(iterations=60)
    cfg_path.write_text(yaml.safe_dump(cfg))
    if kind == "task":
        cmd = lambda out: train_cmd(cfg_path, out)  # noqa: E731
    else:
        cmd = lambda out: [  # noqa: E731
            sys.executable,
            "-m",
            "moe_adapters.cli",
            "train-autoencoder",
            "-c",
            str(cfg_path),
            "--index",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    ref = root / "ref.safetensors"
    subprocess.run(cmd(ref), check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    out = root / "killed.safetensors"
    state = root / "killed.safetensors.state"
    rc = kill_when_state_appears(cmd(out), state, min_step=8)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    assert state.exists() and not out.exists()
    subprocess.run(cmd(out), check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert not state.exists()
    a, ma = load_tensors(ref)
    b, mb = load_tensors(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
