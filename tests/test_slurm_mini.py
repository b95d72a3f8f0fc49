"""The reduced mini benchmark through a real single-node SLURM with profiles/slurm: every job goes through sbatch
(one SLURM job id each, in Snakemake's log and in SLURM's), and every number is the local run's.

The local run is the session's `reduced_mini_run` (`dvc repro mini` of the 2-task reduced mini, shared with the
workflow, DVC and report tests). Here a clone of that repository builds the MTIL table of the same config from
nothing through `--executor slurm`, with the real profile (executor, squeue status, latency wait, one `gpu` per GPU
rule, runtimes) and three changes, each for a reason:
  - each rule's threads and cpus_per_task are the local run's (2 for the training rules, as `cores: 2` of
    profiles/mini gives them, else 1), so the results can be compared number for number (a thread count can change
    how float sums are split); mem_mb is capped at 2000 (every mini step peaks below 1.3 GB);
  - the node has 4 pretend GPUs and 8 CPUs on this 2-core machine: the jobs mostly wait for the plugin's status
    polls (about 12 s a job), so they are allowed to overlap;
  - job status is polled every second: the plugin's fastest settings (FAST_SLURM, as in test_slurm_harness.py)
    still add 10 s to the wait after every poll that sees no job end (1, 11, 21, ... s: a 25 s job is seen done
    after 33 s), which made the run take 5.4 min; Snakemake runs with that interval held at its initial 1 s
    (FIXED_POLL). What is submitted, and how, is the plugin's own.
Skipped with the reason where SLURM cannot be installed or started (not root, no apt-get, no packages).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .slurm_cluster import cluster_or_skip
from .test_slurm_harness import FAST_SLURM
from .workflow_helpers import tool_env

pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs the [cluster] extra")

pytestmark = pytest.mark.slurm

RUN = "results/mini/mini_order1"
TARGET = "results/mini/mini_order1_table.csv"
NODE_CPUS, NODE_GPUS = 8, 4


# `python -m snakemake`, with the SLURM executor's status polls kept at their initial interval (see the docstring)
FIXED_POLL = (
    "import snakemake_executor_plugin_slurm as plugin\n"
    "plugin.Executor.next_seconds_between_status_checks = property(\n"
    "    lambda self: self.workflow.executor_settings.init_seconds_before_status_checks, lambda self, value: None)\n"
    "from snakemake.cli import main\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def slurm_node():
    yield from cluster_or_skip(gpus=NODE_GPUS, cpus=NODE_CPUS)


def rule_threads(repo: Path, cores: int) -> dict[str, int]:
    """{rule: the threads it had in the local run}: `threads: workflow.cores` is the mini profile's cores, and its
    set-threads override both."""
    threads = {}
    for f in [repo / "Snakefile", *sorted((repo / "workflow/rules").glob("*.smk"))]:
        for name, body in re.findall(r"^ *rule (\w+):\n((?:\s*\n| {4,}.*\n)*)", f.read_text(), re.M):
            m = re.search(r"^\s+threads: (\S+)$", body, re.M)
            threads[name] = cores if m and m.group(1) == "workflow.cores" else int(m.group(1)) if m else 1
    mini = yaml.safe_load((repo / "profiles/mini/config.yaml").read_text())
    threads.update(mini.get("set-threads") or {})  # the mini profile's own overrides win, as in the local run
    return threads


def test_profile(repo: Path) -> str:
    """profiles/slurm of the clone with the local run's threads and a memory cap (see the module's docstring)."""
    prof = yaml.safe_load((repo / "profiles/slurm/config.yaml").read_text())
    cores = yaml.safe_load((repo / "profiles/mini/config.yaml").read_text())["cores"]
    threads = rule_threads(repo, cores)
    prof["cores"] = cores
    prof["set-threads"] = {rule: threads[rule] for rule in prof["set-threads"]}
    for rule, res in prof["set-resources"].items():
        res.update(cpus_per_task=threads[rule], mem_mb=min(res["mem_mb"], 2000))
    folder = repo / "profiles/slurm-test"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(prof))
    return "profiles/slurm-test"


test_profile.__test__ = False  # a helper, not a test


def numbers(repo: Path) -> dict:
    """Everything numeric the MTIL run produced: matrix, table (its commit column aside), evaluations, tensors."""
    from safetensors.numpy import load_file

    run = repo / RUN
    table = list(csv.reader((repo / TARGET).open()))
    commit = table[0].index("commit")
    out = {
        "matrix.csv": (run / "matrix.csv").read_text(),
        "table": [row[:commit] + row[commit + 1 :] for row in table],
    }
    for f in sorted((run / "eval").glob("*.json")):
        out[f"eval/{f.name}"] = json.loads(f.read_text())["results"]
    for sub in ("checkpoints", "autoencoders", "features"):
        for f in sorted((run / sub).glob("*.safetensors")):
            out[f"{sub}/{f.name}"] = {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in load_file(f).items()}
    return out


def test_reduced_mini_through_slurm_matches_the_local_run(reduced_mini_run, slurm_node, tmp_path):
    reduced_mini_run.check()
    local = numbers(reduced_mini_run.workdir)
    assert len([k for k in local if k.startswith("eval/")]) == 3 and "checkpoints/task_1.safetensors" in local

    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(reduced_mini_run.workdir), str(repo)], check=True, timeout=120)
    assert not (repo / "results").exists()
    profile = test_profile(repo)
    env = tool_env(repo)
    env["PATH"] = f"{Path(sys.executable).parent}:{slurm_node.env['PATH']}"  # this Python, then SLURM's clients
    env["SLURM_CONF"] = slurm_node.env["SLURM_CONF"]
    for var in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
        del env[var]
    cmd = [
        sys.executable, "-c", FIXED_POLL, TARGET, "--workflow-profile", profile, "--configfile", "config/mini.yaml",
        "--default-resources", "slurm_partition=test",  # partition (and account) as the README says: not in the profile
        *FAST_SLURM, "--verbose",  # the plugin logs each sbatch call
    ]  # fmt: skip
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - start
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"snakemake failed after {took:.0f} s:\n{log[-8000:]}\n{slurm_node.logs()}"

    # every job went through sbatch: one SLURM job each, known to SLURM, with its SLURM log; none ran locally
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    planned = int(re.search(r"^total\s+(\d+)$", log, re.M).group(1))
    assert planned >= 15 and len(submitted) == planned, log[-6000:]
    ids = [jobid for _, jobid, _ in submitted]
    assert len(set(ids)) == planned and set(ids) <= set(slurm_node.job_ids())
    assert all(Path(path).is_file() for _, _, path in submitted)
    assert not re.search(r"^localrule ", log, re.M)
    # GPU rules asked SLURM for their GPU (the profile's gpu: 1 as --gpus=1), the others for none
    gpu_rules = {"pretrain", "train_task", "autoencoder", "features", "evaluate", "evaluate_zero_shot"}
    calls = re.findall(r"sbatch call: (sbatch .*)", log)
    assert len(calls) == planned
    for call in calls:
        rule = re.search(r"slurm_logs/rule_(\w+)/", call).group(1)  # --output .snakemake/slurm_logs/rule_NAME/...
        assert ("--gpus=1" in call) == (rule in gpu_rules), call
    assert "Falling back to 'sacct'" not in log  # status came from squeue

    assert numbers(repo) == local
    print(f"reduced mini ({planned} jobs) through SLURM: {took:.1f} s; SLURM job ids {', '.join(ids)}")
