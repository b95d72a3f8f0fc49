"""`moe-adapters pull STAGE`: fetch a setting's versioned outputs with DVC, then mark them up to date for Snakemake.

Pulled files get the time of the pull, in no particular order; Snakemake, which decides by file times, would
retrain. After the pull, the stage's own Snakemake command is run with `--touch`, which marks every output up to
date in DAG order (and fails if one is missing). A remote that is a folder which does not exist is reported as
such before DVC is asked anything.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import yaml


class PullError(RuntimeError):
    pass


def _tool(name: str) -> str:
    """The command installed beside this Python (the project's environment), else the one on PATH."""
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("dvc"), *args], cwd=cwd, capture_output=True, text=True)


def default_remote(repo: Path) -> tuple[str, str]:
    """(name, url) of the default DVC remote, with a relative folder resolved as DVC does (from .dvc/)."""
    name = _dvc("remote", "default", cwd=repo).stdout.strip()
    if not name:
        raise PullError("no default DVC remote: add one with `dvc remote add -d NAME URL` (see README, DVC)")
    # lines: NAME URL [(default)]
    remotes = {f[0]: f[1] for f in (ln.split() for ln in _dvc("remote", "list", cwd=repo).stdout.splitlines()) if len(f) > 1}
    return name, remotes.get(name, "")


def check_remote(repo: Path) -> str:
    name, url = default_remote(repo)
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme else url)
        if not folder.is_absolute():
            folder = (repo / folder).resolve()  # `dvc remote list` shows it relative to the repository root
        if not folder.is_dir():
            raise PullError(
                f"DVC remote {name!r} is the folder {folder}, which does not exist (or is not mounted). Point it "
                f"at your copy: `dvc remote modify --local {name} url /path/to/store`, or add your own remote "
                f"(see README, DVC)"
            )
    return f"{name} ({url})"


def stage_command(repo: Path, stage: str) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    if stage not in stages:
        raise PullError(f"no stage {stage!r} in dvc.yaml (stages: {', '.join(stages)})")
    cmd = shlex.split(stages[stage]["cmd"])
    if cmd[0] != "snakemake":
        raise PullError(f"stage {stage!r} does not run snakemake: {stages[stage]['cmd']}")
    return [_tool("snakemake"), *cmd[1:]]


def pull(stage: str, repo: str | Path = ".", allow_missing: bool = False) -> None:
    repo = Path(repo).resolve()
    snakemake = stage_command(repo, stage)
    remote = check_remote(repo)
    r = _dvc("pull", stage, *(["--allow-missing"] if allow_missing else []), cwd=repo)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-6:])
        raise PullError(f"`dvc pull {stage}` from remote {remote} failed; its last words:\n{tail}")
    t = subprocess.run([*snakemake, "--touch"], cwd=repo, capture_output=True, text=True, env=os.environ.copy())
    if t.returncode != 0:
        tail = "\n".join((t.stdout + t.stderr).strip().splitlines()[-8:])
        raise PullError(f"pulled, but marking the outputs up to date failed (something is missing?):\n{tail}")
    print(f"pulled stage {stage} from {remote}; outputs marked up to date for Snakemake")
