"""The Snakemake workflow: the paper DAG as planned, config rejection before any job, a reduced mini run."""

import csv
import re

import pytest

from .workflow_helpers import SNAKEMAKE, snakemake


def job_counts(out: str) -> dict[str, int]:
    block = out.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_paper_dry_run_plans_the_whole_dag(tmp_path):
    r = snakemake(tmp_path, "-n", "-p", "results/mtil_order1_table.csv")
    assert r.returncode == 0, r.stderr + r.stdout
    counts = job_counts(r.stdout)
    assert counts["train_task"] == 11
    assert counts["autoencoder"] == 12
    assert counts["evaluate"] == 11 and counts["evaluate_zero_shot"] == 1
    assert counts["features"] == 11
    assert counts["prepare"] == 12  # 11 datasets and TinyImageNet, none present
    # every task checkpoint is evaluated on all 11 test sets of the order
    evals = [c for c in r.stdout.splitlines() if "moe-adapters" in c and " evaluate " in c and "--checkpoint " in c]
    assert len(evals) == 11
    assert {re.search(r"task_(\d+)\.safetensors", c).group(1) for c in evals} == {str(k) for k in range(11)}
    blocks = [b for b in r.stdout.split("\n\n") if re.search(r"rule evaluate:", b)]
    for b in blocks:
        inputs = re.search(r"input: (.*)", b).group(1)
        assert inputs.count("/features/") == 11
    # Order II is a target of the same config
    r2 = snakemake(tmp_path, "-n", "results/mtil_order2_table.csv")
    assert r2.returncode == 0 and job_counts(r2.stdout)["train_task"] == 11


@pytest.mark.parametrize(
    "override,key",
    [(["order=order9"], "'order'"), (["model={top_k: 50}"], "'model.top_k'"), (["train={iterationz: 3}"], "'train.iterationz'")],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, override, key):
    r = snakemake(tmp_path, "-n", "--config", *override)
    assert r.returncode != 0
    assert f"config key {key}" in r.stderr + r.stdout
    assert not (tmp_path / "results").exists()


def test_reduced_mini_run_through_snakemake(reduced_mini_run):
    reduced_mini_run.check()
    tmp_path = reduced_mini_run.workdir
    table = tmp_path / "results/mini/mini_order1_table.csv"
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["method", "metric", "Textures", "Faces", "mean", "config", "commit", "deviations"]
    assert [r[:2] for r in rows[1:]] == [
        [m, k] for m in ("MoE-Adapters (ours)", "Zero-shot CLIP (ours)") for k in ("Transfer", "Avg", "Last")
    ]
    assert all(0 <= float(v) <= 100 for r in rows[1:] for v in r[2:-3] if v)
    routing = list(csv.DictReader((tmp_path / "results/mini/mini_order1_routing.csv").open()))
    assert {x["dataset"] for x in routing} == {"Textures", "Faces"}
    assert (tmp_path / "results/mini/mini_order1/logs/train_task_1.log").exists()
    # a second invocation has nothing to do
    again = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(reduced_mini_run.config))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_the_workflow_lints_clean_and_is_formatted():
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from .workflow_helpers import REPO, tool_env

    r = subprocess.run([*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(REPO), "--lint"], capture_output=True,
                       text=True, env=tool_env())
    assert r.returncode == 0 and "Congratulations, your workflow is in a good condition" in r.stdout + r.stderr, (
        r.stdout + r.stderr
    )[-3000:]
    snakefmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or "snakefmt"
    r = subprocess.run([snakefmt, "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize(
    "target,steps",
    [("cil_cifar100_10steps", 10), ("cil_cifar100_20steps", 20), ("cil_cifar100_50steps", 50),
     ("cil_tinyimagenet_5steps", 6), ("cil_tinyimagenet_10steps", 11), ("cil_tinyimagenet_20steps", 21)],
)
def test_class_incremental_targets_plan_every_step_with_no_data(tmp_path, target, steps):
    r = snakemake(tmp_path, "-n", f"results/{target}_table.csv")
    assert r.returncode == 0, (r.stderr + r.stdout)[-3000:]
    counts = job_counts(r.stdout)
    assert counts["cil_train"] == steps and counts["cil_evaluate"] == steps  # one per step, the base step included
    assert counts["cil_zero_shot"] == 1 and counts["prepare_cil"] == 1 and counts["cil_table"] == 1
    assert counts["prepare"] == 1  # CIFAR100 or TinyImageNet: the view is built from its verified raw data
