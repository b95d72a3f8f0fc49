"""The reduced mini benchmark through a real single-node SLURM with profiles/slurm: every job goes through sbatch
(one SLURM job id each, in Snakemake's log and in SLURM's), and every number is the local run's.

The local run is the session's `reduced_mini_run` (`dvc repro mini` of the 2-task reduced mini, shared with the
workflow, DVC and report tests). A clone of the same commit builds the MTIL table of the same config from nothing
through `--executor slurm`, started by that fixture beside the local run (tests/slurm_workflow.py: the SLURM jobs
mostly wait for status polls, so the two overlap), with the real profile (executor, squeue status, latency wait,
one `gpu` per GPU rule, runtimes) and three changes, each for a reason:
  - each rule's threads and cpus_per_task are the local run's (profiles/mini's `cores` and `set-threads`: one
    thread a job today), so the results can be compared number for number (a thread count can change how float
    sums are split); mem_mb is capped at 2000 (every mini step peaks below 1.3 GB);
  - the node has 4 pretend GPUs and 8 CPUs on this 2-core machine: the jobs mostly wait for the plugin's status
    polls (about 12 s a job), so they are allowed to overlap;
  - job status is polled every second: the plugin's fastest settings (FAST_SLURM in tests/slurm_workflow.py)
    still add 10 s to the wait after every poll that sees no job end (1, 11, 21, ... s: a 25 s job is seen done
    after 33 s), which made the run take 5.4 min; Snakemake runs with that interval held at its initial 1 s
    (FIXED_POLL). What is submitted, and how, is the plugin's own.
Skipped with the reason where SLURM cannot be installed or started (not root, no apt-get, no packages).
"""

from __future__ import annotations

import re

import pytest

from .slurm_workflow import numbers

pytest.importorskip("snakemake_executor_plugin_slurm", reason="needs the [cluster] extra")

pytestmark = pytest.mark.slurm


def test_reduced_mini_through_slurm_matches_the_local_run(reduced_mini_run):
    slurm = reduced_mini_run.slurm
    assert slurm is not None  # the fixture starts it whenever this test (slurm_workflow.SLURM_TEST) is selected
    if slurm.skip:
        pytest.skip(slurm.skip)
    reduced_mini_run.check()
    local = numbers(reduced_mini_run.workdir)
    assert len([k for k in local if k.startswith("eval/")]) == 3 and "checkpoints/task_1.safetensors" in local

    code, log, took = slurm.finish()
    repo, node = slurm.repo, slurm.cluster
    assert code == 0, f"snakemake failed after {took:.0f} s:\n{log[-8000:]}\n{node.logs()}"

    # every job went through sbatch: one SLURM job each, known to SLURM, with its SLURM log; none ran locally
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    planned = int(re.search(r"^total\s+(\d+)$", log, re.M).group(1))
    assert planned >= 15 and len(submitted) == planned, log[-6000:]
    ids = [jobid for _, jobid, _ in submitted]
    assert len(set(ids)) == planned and set(ids) <= set(node.job_ids())
    assert all((repo / path).is_file() for _, _, path in submitted)
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
