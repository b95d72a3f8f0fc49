"""DVC on top of Snakemake, in a temporary git repository holding a copy of the project.

A reduced mini benchmark is reproduced with `dvc repro mini`, pushed to a local folder remote, cloned and
pulled; after the documented touch command the table target runs no job and the table is identical.
Changing only table code and running `dvc repro` again retrains and re-evaluates nothing. A pull from a
remote that is not there fails with a message that says so. No network anywhere.
"""

from __future__ import annotations

import re
import shutil
import sys

import pytest

from .workflow_helpers import run

MINI = ["--workflow-profile", "profiles/mini"]
TABLE = "results/mini/mini_order1_table.csv"
TRAINING_OR_EVALUATION = {
    "prepare", "pretrain", "backbone", "autoencoder", "train_task", "features", "evaluate", "evaluate_zero_shot",
}

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def jobs_run(out: str) -> set[str]:
    """Names of the rules Snakemake ran (its "rule NAME:" lines)."""
    return set(re.findall(r"^(?:local)?rule (\w+):$", out, re.M))


@pytest.fixture(scope="module")
def pushed(reduced_mini_run):
    """The reduced mini run (reproduced by `dvc repro mini`, dvc.lock committed), pushed to its folder remote."""
    reduced_mini_run.check()
    repo = reduced_mini_run.workdir
    assert "train_task" in jobs_run(reduced_mini_run.log)
    run(repo, "dvc", "push", "mini")
    return repo.parent, repo


def test_clone_pull_touch_then_the_table_target_runs_nothing(pushed):
    root, repo = pushed
    clone = root / "clone"
    run(root, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "results/mini").exists()
    run(clone, "dvc", "pull", "mini")
    table = TABLE
    assert (clone / table).read_bytes() == (repo / table).read_bytes()
    assert (clone / "results/mini/mini_order1/checkpoints/task_1.safetensors").exists()
    # Without the touch, pulled files carry checkout times in no particular order.
    run(clone, "snakemake", *MINI, "--touch")
    r = run(clone, "snakemake", *MINI)
    assert jobs_run(r.stdout + r.stderr) == set(), r.stdout + r.stderr
    assert "Nothing to be done" in r.stdout + r.stderr
    assert (clone / table).read_bytes() == (repo / table).read_bytes()
    assert "up to date" in run(clone, "dvc", "status", "mini").stdout


def test_changing_table_code_then_repro_retrains_nothing(pushed):
    root, repo = pushed
    work = root / "work"
    run(root, "git", "clone", "-q", str(repo), str(work))
    run(work, sys.executable, "-m", "moe_adapters.cli", "pull", "mini")  # the single command: pull, then touch
    ckpts = sorted((work / "results/mini/mini_order1/checkpoints").glob("*.safetensors"))
    evals = sorted((work / "results/mini/mini_order1/eval").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in ckpts + evals}
    assert ckpts and evals
    code = work / "src/moe_adapters/reporting/tables.py"
    code.write_text(code.read_text() + "\n# a change to the table code only\n")
    r = run(work, "dvc", "repro", "mini")
    ran = jobs_run(r.stdout + r.stderr)
    assert {"table", "ledger"} <= ran, r.stdout + r.stderr  # the rules that run tables.py, and only reporting ones
    assert not ran & TRAINING_OR_EVALUATION, ran
    assert "figures" not in ran and "expert_figure" not in ran, ran
    assert {p: p.stat().st_mtime_ns for p in ckpts + evals} == stamps
    table = TABLE
    assert (work / table).read_bytes() == (repo / table).read_bytes()


def test_pull_from_an_unreachable_remote_fails_clearly(pushed):
    root, repo = pushed
    lost = root / "lost"
    run(root, "git", "clone", "-q", str(repo), str(lost))
    run(lost, "dvc", "remote", "modify", "--local", "storage", "url", str(root / "no-such-remote"))
    r = run(lost, "dvc", "pull", "mini", ok=False, timeout=120)
    assert r.returncode != 0
    msg = r.stdout + r.stderr
    assert "no-such-remote" in msg or "missing" in msg.lower(), msg
    assert not (lost / "results/mini/mini_order1_table.csv").exists()
    # the project's command says which remote and what to do, before asking DVC anything
    r = run(lost, sys.executable, "-m", "moe_adapters.cli", "pull", "mini", ok=False, timeout=120)
    assert r.returncode == 2
    assert "DVC remote 'storage' is the folder" in r.stderr and "no-such-remote" in r.stderr, r.stderr
    # CI-style: what is there is checked out, what is missing is allowed, and the exit is clean
    r = run(lost, "dvc", "pull", "--allow-missing", "mini", ok=False, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
