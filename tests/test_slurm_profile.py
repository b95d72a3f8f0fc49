"""profiles/slurm, on a machine without SLURM: every rule of the workflow has its runtime, memory and CPUs (the
GPU rules one GPU, the CPU rules none), no partition or account is hard-coded, and a dry run of the paper's
targets shows each job's resources as the profile sets them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .workflow_helpers import REPO, tool_env

PROFILE = REPO / "profiles/slurm/config.yaml"
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]


def workflow_rules() -> dict[str, str]:
    """{rule name: its text} for every rule of the workflow (`all` aside)."""
    rules = {}
    for f in RULE_FILES:
        lines = f.read_text().splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"( *)rule (\w+):$", line)
            if m:
                body = []
                for nxt in lines[i + 1 :]:  # the rule's body: the lines indented deeper than `rule`
                    if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= len(m.group(1)):
                        break
                    body.append(nxt)
                rules[m.group(2)] = "\n".join(body)
    rules.pop("all")
    return rules


def gpu_rules() -> set[str]:
    """The rules that hold the workflow's gpu resource on a GPU run (`**GPU` in their resources)."""
    return {name for name, body in workflow_rules().items() if "**GPU" in body}


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def test_every_rule_asks_for_runtime_memory_and_cpus_and_only_gpu_rules_for_a_gpu(profile):
    rules = workflow_rules()
    assert {"train_task", "prepare", "cil_train", "prepare_cil", "cil_table", "ablation_axis", "pretrain"} <= set(rules)
    gpu = gpu_rules()
    assert gpu == {"train_task", "pretrain", "autoencoder", "features", "evaluate", "evaluate_zero_shot",
                   "cil_train", "cil_evaluate", "cil_zero_shot"}  # fmt: skip
    res, threads = profile["set-resources"], profile["set-threads"]
    assert set(res) == set(rules), f"missing: {set(rules) - set(res)}, unknown: {set(res) - set(rules)}"
    assert set(threads) == set(rules), f"missing: {set(rules) - set(threads)}, unknown: {set(threads) - set(rules)}"
    for name, r in res.items():
        assert isinstance(r.get("runtime"), int) and r["runtime"] > 0, name
        assert isinstance(r.get("mem_mb"), int) and r["mem_mb"] >= 1000, name
        assert isinstance(r.get("cpus_per_task"), int) and r["cpus_per_task"] >= 1, name
        assert threads[name] == r["cpus_per_task"], f"{name}: threads {threads[name]} != cpus {r['cpus_per_task']}"
        if name in gpu:
            assert r.get("gpu") == 1 and "gres" not in r, name
        else:
            assert not {"gpu", "gres", "gpus", "gpu_model"} & set(r), f"CPU rule {name} asks for a GPU"
    assert max(threads.values()) <= profile["cores"]  # --cores caps each job's threads


def test_no_partition_account_or_gpu_flags_are_hard_coded(profile):
    text = PROFILE.read_text()
    settings = yaml.safe_dump({k: v for k, v in profile.items()})  # the settings, comments left out
    for key in ("slurm_partition", "slurm_account", "slurm_extra", "qos", "clusters"):
        assert key not in settings, key
    assert "default-resources" not in profile  # a user's --default-resources or own profile supplies them
    assert "--gres" not in settings and "--gpus" not in settings
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert "--default-resources slurm_partition=" in text  # the comment says where they go instead


def dry_run(target: str, tmp_path: Path) -> str:
    """`snakemake -n TARGET --workflow-profile profiles/slurm` with no SLURM program on PATH."""
    shims = tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    for prog in ("bash", "sh", "which", "git", "env", "uname"):
        if (found := shutil.which(prog)) and not (shims / prog).exists():
            (shims / prog).symlink_to(found)
    env = {**tool_env(REPO), "PATH": f"{Path(sys.executable).parent}:{shims}"}
    for k in [k for k in env if k.startswith("SLURM_")]:
        del env[k]
    cmd = [sys.executable, "-m", "snakemake", "-n", target, "--workflow-profile", "profiles/slurm",
           "--directory", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert shutil.which("sbatch", path=env["PATH"]) is None and "sbatch" not in os.listdir(shims)
    return r.stdout + r.stderr


@pytest.mark.parametrize("target", ["results/mtil_order1_table.csv", "results/cil_cifar100_10steps_table.csv"])
def test_dry_run_without_slurm_shows_every_jobs_resources(profile, tmp_path, target):
    out = dry_run(target, tmp_path)
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^\S|\Z)", out, re.M | re.S)
    assert len(jobs) >= (62 if "mtil" in target else 20), out[-3000:]
    gpu = gpu_rules()
    for name, block in jobs:
        line = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
        shown = dict(kv.split("=", 1) for kv in line.split(", "))
        want = profile["set-resources"][name]
        for key in ("runtime", "mem_mb", "cpus_per_task"):
            assert shown[key] == str(want[key]), (name, key, line)
        assert shown.get("gpu") == ("1" if name in gpu else None), (name, line)
    seen = {name for name, _ in jobs}
    assert {"prepare", "train_task", "evaluate", "table"} <= seen or {"cil_train", "cil_table"} <= seen
