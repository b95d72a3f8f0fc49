"""Running the workflow from tests: Snakemake and DVC command lines, project copies, the reduced mini run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .snakemake_fork import run_snakemake

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def tool_env(workdir: Path | None = None) -> dict[str, str]:
    """Offline, this Python's tools first on PATH; a project copy's own code when `workdir` holds one."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if workdir is not None and (Path(workdir) / "src/moe_adapters").is_dir():
        env["PYTHONPATH"] = str(Path(workdir) / "src")  # so that editing the copy is what its jobs run
    # OpenMP threads that spin while waiting turn every small torch op into a wait of milliseconds when other
    # processes share the cores (measured on a 2-core machine beside another busy process: a fused AdamW step
    # over 720 small tensors took 5.6 s with 2 threads, 0.07 s with 2 threads and PASSIVE, 0.011 s with 1
    # thread); the results are the same either way.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return env


def snakemake(workdir, *args, timeout=900) -> subprocess.CompletedProcess:
    """Run the workflow in `workdir` with this Python (so jobs import the code under test).

    The workflow is the copy's own when `workdir` is a project copy (see project_copy), else the repository's.
    """
    workdir = Path(workdir)
    snakefile = workdir / "Snakefile" if (workdir / "Snakefile").is_file() else REPO / "Snakefile"
    args = ["-s", str(snakefile), "-d", str(workdir), "--workflow-profile", "none", *args]
    return run_snakemake(args, cwd=Path.cwd(), env=tool_env(workdir), timeout=timeout)


def run(cwd: Path, *cmd: str, ok: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """A command (git, dvc, snakemake) in `cwd`, offline, with the copy's code; fails loudly unless ok=False."""
    cmd = list(cmd)
    if cmd[:3] == SNAKEMAKE or cmd[:1] == ["snakemake"]:  # forked from a process that has imported Snakemake
        r = run_snakemake(cmd[3 if cmd[:3] == SNAKEMAKE else 1 :], cwd=cwd, env=tool_env(cwd), timeout=timeout)
    else:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=tool_env(cwd), timeout=timeout)
    if ok and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


# Files a run writes into the checkout that git does not ignore: DVC's record of what `make mini` or `dvc repro`
# produced there. An untracked one belongs to the developer's own runs, not to the project, so copies leave it out
# (a tracked one is project state and is copied).
RUN_RECORDS = ("dvc.lock",)


def _git_files(root: Path, *flags: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", *flags, "-z"], cwd=root, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f]


def project_copy(dest: Path, root: Path = REPO) -> None:
    """The project's files as the working tree has them (tracked, and new files not ignored), nothing generated:
    no results, data or untracked run records (RUN_RECORDS)."""
    files = _git_files(root, "-c") + [
        f for f in _git_files(root, "-o", "--exclude-standard") if f not in RUN_RECORDS
    ]
    for f in files:
        src = root / f
        if src.is_file() and not f.startswith(("results/", "data/")):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def write_reduced_mini(repo: Path) -> Path:
    """Cut the copy's mini benchmark to two tasks (Textures, Faces) and a few iterations: its real DAG in about a
    minute. The copy's config/mini.yaml is rewritten in place, so `dvc repro mini` runs the reduced benchmark."""
    proto = yaml.safe_load((repo / "src/moe_adapters/protocol/mini.yaml").read_text())
    proto["orders"] = {"order1": ["Textures", "Faces"]}
    proto["datasets"] = {k: proto["datasets"][k] for k in ("Textures", "Faces")}
    # the class-incremental mini on the same two datasets: 8 classes in 4 steps of 2, one pass each
    proto["cil"].update(pool=["Textures", "Faces"], class_orders={"mini": [6, 0, 3, 7, 1, 4, 2, 5]})
    proto["cil"]["settings"] = {"mini_2-2": {**next(iter(proto["cil"]["settings"].values())), "initial_increment": 2,
                                             "increment": 2}}
    (repo / "config/mini-reduced-protocol.yaml").write_text(yaml.safe_dump(proto))
    path = repo / "config/mini.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["protocol"] = "config/mini-reduced-protocol.yaml"
    cfg.setdefault("train", {}).update(iterations=6, checkpoint_every=0)
    cfg.setdefault("ddas", {}).update(iterations_generic=10, iterations=10)
    cfg.setdefault("mini", {}).update(pretrain_iterations=8)
    cfg["extra_runs"] = ["cil_mini_4steps"]
    cfg.setdefault("cil", {}).update(epochs=1)
    path.write_text(yaml.safe_dump(cfg))
    return path


def reduced_mini_origin(root: Path, remote: Path) -> Path:
    """A git repository holding a copy of the project with the reduced mini config, its DVC remote a local
    folder; nothing run yet."""
    repo = root / "origin"
    repo.mkdir()
    project_copy(repo)
    write_reduced_mini(repo)
    run(repo, "git", "init", "-q", "-b", "main")
    run(repo, "dvc", "remote", "add", "-d", "storage", str(remote))  # a user's own remote, as in the README
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "project with the reduced mini benchmark")
    return repo


def reproduce_mini(repo: Path) -> subprocess.CompletedProcess:
    """The reduced mini benchmark reproduced by `dvc repro mini` in `repo` (dvc.lock committed where it ran)."""
    r = run(repo, "dvc", "repro", "mini", ok=False)
    if r.returncode == 0:
        run(repo, "git", "add", "dvc.lock")
        run(repo, "git", "commit", "-q", "-m", "reduced mini run")
    return r


def planned_jobs(out: str) -> set[tuple[str, tuple]]:
    """The jobs a Snakemake dry run plans: (rule, sorted wildcards), the target rule `all` left out."""
    jobs = set()
    for block in re.split(r"\n(?=\[|(?:local)?rule \w+:)", out):
        m = re.match(r"(?:\[[^\n]*\]\n)?(?:local)?rule (\w+):", block)
        if not m or m.group(1) == "all":
            continue
        w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = tuple(sorted(tuple(kv.split("=", 1)) for kv in w.group(1).split(", "))) if w else ()
        jobs.add((m.group(1), wildcards))
    return jobs
