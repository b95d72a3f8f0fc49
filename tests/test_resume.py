"""A training run killed at any point and restarted ends with the same weights as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def kill_when_state_appears(cmd, state, min_step, attempts=3):
    """Start `cmd` in its own process group and kill -9 the whole group once a resume state of `min_step` exists.

    The run is niced: where other tests' jobs hold both cores, this poller must still get its turn before the run's
    last steps (about 0.35 s from step 8 to the end of the toy runs here). A run that still ends before it is killed
    is started again from nothing (its output removed), up to `attempts` times; the return code is the last run's."""
    out = Path(cmd[cmd.index("--out") + 1])
    for _ in range(attempts):
        proc = subprocess.Popen(
            ["nice", "-n", "15", *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    step = torch.load(state, weights_only=True)["step"]
                except Exception:  # caught mid-rename: look again
                    step = 0
                if step >= min_step:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.01)
        proc.wait()
        if proc.returncode != 0 or state.exists():
            return proc.returncode
        out.unlink(missing_ok=True)  # finished unkilled: once more, from nothing
    return proc.returncode


def state_of(out):
    return out.parent / ".resume" / f"{out.name}.state"


def same_tensors(a, b):
    ta, _ = load_tensors(a)
    tb, _ = load_tensors(b)
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


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
    state = state_of(out)
    rc = kill_when_state_appears(cmd(out), state, min_step=8)
    assert rc == -signal.SIGKILL, "the run finished before it could be killed"
    assert state.exists() and not out.exists()
    subprocess.run(cmd(out), check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert not state.exists()
    assert same_tensors(ref, out) == []
    # the resumed step counts the wall time of both attempts, and says where it resumed
    from moe_adapters.checkpoint import read_metadata

    assert read_metadata(out)["resumed_at"] >= 8


def test_a_stale_resume_state_is_discarded_after_a_config_change(toy_run):
    """Killed during training, then a model key changes: the rerun must not resume the old state, and ends bit for
    bit as a clean run of the new config."""
    root, cfg_path = toy_run
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["train"].update(iterations=30, checkpoint_every=4)
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = root / "task.safetensors"
    rc = kill_when_state_appears(train_cmd(cfg_path, out), state_of(out), min_step=8)
    assert rc == -signal.SIGKILL and state_of(out).exists()
    cfg["model"]["expert_dropout"] = 0.0
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(train_cmd(cfg_path, out), capture_output=True, text=True, env=env, check=True)
    assert "discarding resume state" in r.stderr and "spec" in r.stderr, r.stderr
    clean = root / "clean.safetensors"
    subprocess.run(train_cmd(cfg_path, clean), check=True, env=env)
    assert same_tensors(clean, out) == []
