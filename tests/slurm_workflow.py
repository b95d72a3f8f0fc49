"""The reduced mini benchmark through a real single-node SLURM with profiles/slurm, started in the background.

Used by the session fixture `reduced_mini_run` (tests/conftest.py): where the SLURM test of the reduced mini is
selected, the fixture starts this run beside the local `dvc repro mini`, from a clone of the same commit, so that
the SLURM jobs (which mostly wait for the executor plugin's status polls) overlap the local run instead of
following it; tests/test_slurm_mini.py waits for it and compares every number. See that module's docstring for
the three ways the profile is changed for the test, and why.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .slurm_cluster import SlurmCluster, running_cluster, slurm_skip_reason
from .workflow_helpers import tool_env

RUN = "results/mini/mini_order1"
TARGET = "results/mini/mini_order1_table.csv"
NODE_CPUS, NODE_GPUS = 8, 4
SLURM_TEST = "test_reduced_mini_through_slurm_matches_the_local_run"  # tests/test_slurm_mini.py
TIMEOUT = 600  # seconds from its start, as when the test ran it itself

# The plugin's polling: every 1 s while no job is out and after each check that saw a job end; 10 s more
# after each check that saw none end (fixed in the plugin). A job here takes ~3 s, so it is seen running
# once, then done 11 s later: ~12 s a job, the least these settings give (a longer first wait only adds).
# MinJobAge=600 >= 3 x 1 s, so the plugin keeps squeue rather than falling back to sacct.
FAST_SLURM = [
    "--executor", "slurm",
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1",
    "--seconds-between-status-checks", "1",
    "--slurm-keep-successful-logs",
]  # fmt: skip

# `python -m snakemake`, with the SLURM executor's status polls kept at their initial interval (see
# tests/test_slurm_mini.py's docstring)
FIXED_POLL = (
    "import snakemake_executor_plugin_slurm as plugin\n"
    "plugin.Executor.next_seconds_between_status_checks = property(\n"
    "    lambda self: self.workflow.executor_settings.init_seconds_before_status_checks, lambda self, value: None)\n"
    "from snakemake.cli import main\n"
    "main()\n"
)


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


def slurm_test_profile(repo: Path) -> str:
    """profiles/slurm of the clone with the local run's threads and a memory cap (see tests/test_slurm_mini.py)."""
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


@dataclass
class SlurmMiniRun:
    """The reduced mini's MTIL table built from nothing through `--executor slurm`, running in the background.

    `skip` holds the reason where no SLURM can run here; `error` what went wrong starting it (raised by
    finish(), in the SLURM test, never in the fixture that the other tests share)."""

    repo: Path | None = None
    cluster: SlurmCluster | None = None
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    started: float = 0.0
    skip: str | None = None
    error: BaseException | None = None
    result: tuple[int, str, float] | None = field(default=None, repr=False)

    def finish(self) -> tuple[int, str, float]:
        """Wait for the run: (return code, Snakemake's output, seconds from its start)."""
        if self.error is not None:
            raise self.error
        if self.result is None:
            try:
                code = self.proc.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - self.started)))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait()
            self.result = (code, self.log_path.read_text(), time.monotonic() - self.started)
        return self.result


@contextlib.contextmanager
def slurm_mini_in_background(origin: Path, base: Path):
    """Start a SLURM node and, on it, the reduced mini's MTIL table from a clone of `origin` (a git repository of
    the project with the reduced mini config); yield a SlurmMiniRun at once; stop everything on exit."""
    run = SlurmMiniRun(skip=slurm_skip_reason())
    if run.skip:
        yield run
        return
    with contextlib.ExitStack() as stack:
        try:
            base.mkdir(parents=True, exist_ok=True)
            cluster = stack.enter_context(running_cluster(gpus=NODE_GPUS, cpus=NODE_CPUS))
            repo = base / "clone"
            subprocess.run(["git", "clone", "-q", str(origin), str(repo)], check=True, timeout=120)
            profile = slurm_test_profile(repo)
            env = tool_env(repo)
            env["PATH"] = f"{Path(sys.executable).parent}:{cluster.env['PATH']}"  # this Python, then SLURM's clients
            env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
            for var in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
                del env[var]
            cmd = [
                sys.executable, "-c", FIXED_POLL, TARGET, "--workflow-profile", profile, "--configfile",
                "config/mini.yaml",
                "--default-resources", "slurm_partition=test",  # partition (and account) as the README says
                *FAST_SLURM, "--verbose",  # the plugin logs each sbatch call
            ]  # fmt: skip
            log_path = base / "snakemake.log"
            log = stack.enter_context(log_path.open("w"))
            run = SlurmMiniRun(repo=repo, cluster=cluster, log_path=log_path, started=time.monotonic())
            run.proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        except Exception as e:  # noqa: BLE001 (reported by the SLURM test)
            run = SlurmMiniRun(error=e)
        try:
            yield run
        finally:
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
