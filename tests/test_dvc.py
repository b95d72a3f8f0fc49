"""DVC on top of Snakemake, in a temporary git repository holding a copy of the project.

A reduced mini benchmark is reproduced with `dvc repro mini` (what `make mini` runs), pushed to a local folder
remote, cloned and pulled; after the documented touch command the table target runs no job and the table is
identical. Changing only table code and running `dvc repro` again retrains and re-evaluates nothing. The authors'
release (tiny synthetic files in their key layout) goes the same way: import, `dvc repro`, push, fresh clone, pull,
and the table target runs no job. Every DVC message a user meets without a remote, after a mini run, or without
data, deletes nothing, offers no `--force` and says what to do. No network anywhere.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .release_helpers import toy_mtil_config, write_release
from .workflow_helpers import REPO, project_copy, run

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


# ---------------------------------------------------------------- what plain DVC commands say, and never do


def shipped_repo(root: Path) -> Path:
    """A fresh clone as the project ships: its own .dvc/config (no remote), nothing built."""
    repo = root / "clone"
    repo.mkdir()
    project_copy(repo)
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "the project as shipped")
    return repo


def test_a_project_copy_leaves_out_a_developers_untracked_dvc_lock(tmp_path):
    """The tests' project copies are the project as a clone has it: a `dvc.lock` from the developer's own
    `make mini` (untracked) would make their DVC runs start from that run's record; a tracked one is kept."""
    src = tmp_path / "src"
    (src / "workflow").mkdir(parents=True)
    (src / ".gitignore").write_text("/results/*\n")
    (src / "Snakefile").write_text("tracked\n")
    (src / "workflow/new_rule.smk").write_text("new, not yet added\n")
    (src / "dvc.lock").write_text("schema: '2.0'\n")
    (src / "results").mkdir()
    (src / "results/table.csv").write_text("generated\n")
    run(src, "git", "init", "-q", "-b", "main")
    run(src, "git", "add", "Snakefile", ".gitignore")

    def copied(name: str) -> list[str]:
        (dest := tmp_path / name).mkdir()
        project_copy(dest, root=src)
        return sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())

    assert copied("a") == [".gitignore", "Snakefile", "workflow/new_rule.smk"]
    run(src, "git", "add", "dvc.lock")  # a project that tracks its dvc.lock: the copy has it
    assert copied("b") == [".gitignore", "Snakefile", "dvc.lock", "workflow/new_rule.smk"]


def digest(paths) -> dict[str, str]:
    out = {}
    for base in paths:
        for p in sorted([base] if base.is_file() else base.rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def placeholder() -> str:
    """The project's placeholder default remote: the sentence every remote-needing DVC command stops with."""
    import configparser

    cp = configparser.ConfigParser()
    cp.read_string("\n".join(ln for ln in (REPO / ".dvc/config").read_text().splitlines() if not ln.startswith("#")))
    return cp["core"]["remote"].strip('"')


def says_what_to_configure(msg: str) -> None:
    assert "this clone has no dvc remote yet" in msg, msg
    assert "dvc remote add -d --local storage" in msg and "versioned data and checkpoints" in msg, msg
    assert "--force" not in msg, msg


def test_make_mini_is_dvc_repro_mini(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("needs make")
    project_copy(tmp_path)
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv/.installed").touch()  # installed: `make -n` shows only the mini's own commands
    r = subprocess.run(["make", "-n", "mini"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "dvc repro mini" in r.stdout and "snakemake" not in r.stdout, r.stdout


def test_plain_dvc_pull_without_a_remote_deletes_nothing_and_says_what_to_configure(tmp_path):
    repo = shipped_repo(tmp_path)
    mine = [repo / "results/mtil_order1/checkpoints/task_0.safetensors", repo / "results/mini/mini_order1_table.csv",
            repo / "data/DTD/meta.json"]
    for p in mine:  # a user's own results and data, which DVC has no record of
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("mine")
    before = digest(mine)
    for args in ([], ["mtil_order1"], ["mini"]):
        r = run(repo, "dvc", "pull", *args, ok=False, timeout=120)
        assert r.returncode != 0
        says_what_to_configure(r.stdout + r.stderr)
        assert digest(mine) == before
    r = run(repo, "dvc", "push", ok=False, timeout=120)
    says_what_to_configure(r.stdout + r.stderr)
    r = run(repo, sys.executable, "-m", "moe_adapters.cli", "pull", "mtil_order1", ok=False, timeout=120)
    assert r.returncode == 2 and "no DVC remote is configured" in r.stderr, r.stderr
    assert "dvc remote add -d --local storage URL" in r.stderr and "--force" not in r.stderr
    assert digest(mine) == before


def test_dvc_repro_dry_without_data_names_the_data_section_and_the_check(tmp_path):
    repo = shipped_repo(tmp_path)
    r = run(repo, "dvc", "repro", "--dry", timeout=300)
    out = r.stdout + r.stderr
    for stage in ("mtil_order1", "mtil_order2", "mtil_order1_5shot", "mtil_order1-reference"):
        assert f"Running stage '{stage}'" in out, out
    assert "moe-adapters prepare --check-all" in out and "README, section Data" in out, out
    assert "No such file or directory" not in out
    # and for real: the check stops the stage within seconds, naming what is missing and the README's section
    r = run(repo, "dvc", "repro", "mtil_order1", ok=False, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "12 of 12 datasets cannot be prepared" in out and "README, section Data" in out, out[-3000:]
    assert not (repo / "results/mtil_order1").exists()


def test_after_dvc_repro_mini_status_is_clean_and_plain_pull_deletes_nothing(reduced_mini_run):
    reduced_mini_run.check()
    repo = reduced_mini_run.workdir
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status", "mini").stdout
    assert not re.search(r"^mini:", run(repo, "dvc", "status").stdout, re.M)  # only stages never run are listed
    outputs = [repo / "results/mini"]
    before = digest(outputs)
    local = repo / ".dvc/config.local"
    local.write_text(f'[core]\n    remote = "{placeholder()}"\n')  # as the project ships: no remote
    try:
        for args in ([], ["mini"]):
            r = run(repo, "dvc", "pull", *args, ok=False, timeout=120)
            assert r.returncode != 0
            says_what_to_configure(r.stdout + r.stderr)
            assert digest(outputs) == before
    finally:
        local.unlink()
    r = run(repo, "dvc", "pull", "mini", ok=False, timeout=120)  # with a remote: what dvc.lock records is there
    assert r.returncode == 0 and "--force" not in r.stdout + r.stderr, r.stdout + r.stderr
    assert digest(outputs) == before


def test_moe_adapters_pull_refuses_to_replace_outputs_dvc_has_no_record_of(reduced_mini_run):
    reduced_mini_run.check()
    repo = reduced_mini_run.workdir
    table = repo / "results/mini/mini_order1_table.csv"
    text = table.read_text()
    table.write_text(text + "a line of the user's own\n")
    try:
        r = run(repo, sys.executable, "-m", "moe_adapters.cli", "pull", "mini", ok=False, timeout=120)
        assert r.returncode == 2 and "dvc commit mini" in r.stderr and "nothing was changed" in r.stderr, r.stderr
        assert table.read_text().endswith("a line of the user's own\n")
    finally:
        table.write_text(text)
    r = run(repo, sys.executable, "-m", "moe_adapters.cli", "pull", "mtil_order1", ok=False, timeout=120)
    assert r.returncode == 2 and "dvc.lock records no outputs of stage 'mtil_order1'" in r.stderr, r.stderr


# ---------------------------------------------------------------- the authors' release, as a user takes it

IMPORTED = "mtil_order1-reference"
IMPORTED_CMD = ["--workflow-profile", "profiles/default", "--config", "order=order1", "shots=0", "variant=reference"]
IMPORTED_TABLE = f"results/{IMPORTED}_table.csv"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A project copy whose config is a toy MTIL setting (two tasks, tiny CLIP), a synthetic release in the
    reference's layout imported into it, `dvc repro` of the imported stage, dvc.lock committed, pushed."""
    root = tmp_path_factory.mktemp("imported")
    repo = root / "origin"
    repo.mkdir()
    project_copy(repo)
    cfg = toy_mtil_config(repo, data_root="data", results_dir="results", protocol="config/toy-protocol.yaml")
    (repo / "config/config.yaml").write_text(yaml.safe_dump(cfg))
    write_release(root / "release")
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "dvc", "remote", "add", "-d", "storage", str(root / "remote"))
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "project with a toy MTIL setting")
    r = run(repo, sys.executable, "-m", "moe_adapters.cli", "import-reference", "--setting", "mtil_order1",
            "-c", "config/config.yaml", str(root / "release"))
    assert "imported 2 task checkpoints and 3 autoencoders" in r.stdout, r.stdout
    r = run(repo, "dvc", "repro", IMPORTED, timeout=1200)
    ran = jobs_run(r.stdout + r.stderr)
    assert {"features", "evaluate", "table"} <= ran, r.stdout[-3000:]
    assert not ran & {"train_task", "autoencoder", "prepare", "expert_figure"}, ran
    run(repo, "git", "add", "dvc.lock")
    run(repo, "git", "commit", "-q", "-m", "the authors' checkpoints, evaluated")
    run(repo, "dvc", "push", IMPORTED)
    return root, repo


def test_the_imported_release_is_evaluated_and_says_so(imported):
    _, repo = imported
    table = (repo / IMPORTED_TABLE).read_text()
    assert "MoE-Adapters (authors' checkpoints)" in table and "IMPORTED: the authors' released checkpoints" in table
    assert "MoE-Adapters (paper)" in table  # beside the paper's numbers
    md = (repo / f"results/{IMPORTED}_table.md").read_text()
    assert "Checkpoints: the authors' released files" in md and "Red.pth (sha256 " in md
    ledger = (repo / "results/REPRODUCIBILITY.md").read_text()
    assert IMPORTED in ledger and "IMPORTED" in ledger
    assert "Data and pipelines are up to date" in run(repo, "dvc", "status", IMPORTED).stdout
    # the training rules never see the imported files as theirs: the table target plans nothing
    r = run(repo, "snakemake", "-n", IMPORTED_TABLE, *IMPORTED_CMD)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-3000:]


def test_imported_release_round_trip_push_clone_pull_runs_no_job(imported):
    root, repo = imported
    clone = root / "clone"
    run(root, "git", "clone", "-q", str(repo), str(clone))
    shutil.copytree(repo / "data", clone / "data")  # the user's own prepared datasets (evaluation reads them)
    assert not (clone / "results").exists()
    run(clone, "dvc", "pull", IMPORTED)
    assert (clone / f"results/{IMPORTED}/checkpoints/task_1.safetensors").exists()
    run(clone, "snakemake", IMPORTED_TABLE, "--touch", *IMPORTED_CMD)
    r = run(clone, "snakemake", IMPORTED_TABLE, *IMPORTED_CMD)
    assert jobs_run(r.stdout + r.stderr) == set(), r.stdout + r.stderr
    assert "Nothing to be done" in r.stdout + r.stderr
    assert (clone / IMPORTED_TABLE).read_bytes() == (repo / IMPORTED_TABLE).read_bytes()
    assert "up to date" in run(clone, "dvc", "status", IMPORTED).stdout
    # and the single command does the same in another clone
    other = root / "other"
    run(root, "git", "clone", "-q", str(repo), str(other))
    shutil.copytree(repo / "data", other / "data")
    r = run(other, sys.executable, "-m", "moe_adapters.cli", "pull", IMPORTED)
    assert f"pulled stage {IMPORTED}" in r.stdout
    r = run(other, "snakemake", IMPORTED_TABLE, *IMPORTED_CMD)
    assert jobs_run(r.stdout + r.stderr) == set(), r.stdout + r.stderr
