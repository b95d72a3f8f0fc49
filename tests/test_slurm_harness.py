"""A two-rule workflow through a real single-node SLURM with Snakemake's SLURM executor plugin.

Proves the harness (tests/slurm_cluster.py) and the executor settings the SLURM profile relies on: jobs
go through sbatch, their status is read with squeue (there is no accounting, so no sacct), and a job that
asks for a GPU with the plugin's `gpu` resource is submitted with --gpus=1 and scheduled on the node's
(pretend) GPU. Skipped, with the reason, where SLURM is missing and may not be installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .slurm_cluster import slurm  # noqa: F401  (the fixture)
from .slurm_workflow import FAST_SLURM

pytestmark = pytest.mark.slurm

pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs the [cluster] extra")

SNAKEFILE = r"""
rule all:
    input:
        "b.txt",

rule a:
    output:
        "a.txt",
    shell:
        "echo $SLURM_JOB_ID > {output}"

rule b:
    input:
        "a.txt",
    output:
        "b.txt",
    resources:
        gpu=1,
    shell:
        "(cat {input}; echo $SLURM_JOB_ID; echo ${{CUDA_VISIBLE_DEVICES:-none}}) > {output}"
"""

def test_two_rules_through_sbatch(slurm, tmp_path: Path):  # noqa: F811
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    cmd = [
        sys.executable, "-m", "snakemake", "--jobs", "2", *FAST_SLURM,
        "--default-resources", "slurm_partition=test", "mem_mb=500", "runtime=5",
        "--verbose",  # the plugin logs each sbatch call
    ]  # fmt: skip
    start = time.monotonic()
    r = subprocess.run(cmd, cwd=tmp_path, env=slurm.env, capture_output=True, text=True, timeout=300)
    took = time.monotonic() - start
    log = r.stdout + r.stderr
    assert r.returncode == 0, f"snakemake failed after {took:.0f} s:\n{log[-6000:]}\n{slurm.logs()}"

    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log))
    assert len(submitted) == 2, log
    a_id, b_id, gpus = (tmp_path / "b.txt").read_text().split()
    assert (tmp_path / "a.txt").read_text().split() == [a_id]
    # each rule ran inside its own SLURM job, the ones Snakemake submitted and SLURM still lists
    assert a_id != b_id and {a_id, b_id} == set(submitted.values())
    assert {a_id, b_id} <= set(slurm.job_ids())
    for rule, jobid in (("a", a_id), ("b", b_id)):
        assert (tmp_path / ".snakemake" / "slurm_logs" / f"rule_{rule}" / f"{jobid}.log").is_file()
    # rule b's gpu=1 reached SLURM as --gpus=1 (rule a asked for none), and the job holds the node's GPU
    calls = re.findall(r"sbatch call: (sbatch .*)", log)
    assert len(calls) == 2, log
    assert [("--gpus=1" in c) for c in calls] == [False, True], calls
    assert all("--cpus-per-task=1" in c and "--mem 500" in c and "-t 5" in c for c in calls), calls
    assert gpus == "0"
    assert "Falling back to 'sacct'" not in log  # status came from squeue
    print(f"snakemake through SLURM: {took:.1f} s, SLURM jobs a={a_id} b={b_id}")
