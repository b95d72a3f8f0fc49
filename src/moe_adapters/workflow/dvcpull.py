"""`moe-adapters pull STAGE`: fetch a setting's versioned outputs with DVC, then mark them up to date for Snakemake.

Pulled files get the time of the pull, in no particular order; Snakemake, which decides by file times, would
retrain. After the pull, the stage's own Snakemake command is run with `--touch`, which marks every output up to
date in DAG order (and fails if one is missing). Before DVC is asked anything: no remote configured (the project's
placeholder, see .dvc/config), a remote that is a folder which does not exist, a dvc.lock that records no outputs
of the stage (nothing was ever pushed for it from this history), and outputs in the workspace that DVC has no
record of (a run made outside `dvc repro`, which a checkout would replace) are each reported, with what to do.
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


NO_REMOTE = (
    "no DVC remote is configured (the project ships none: there is no store every clone can reach). Add the one "
    "where the results were pushed, for this clone only: `dvc remote add -d --local storage URL`, URL a folder "
    "(e.g. /mnt/shared/moe-adapters-dvc), s3://bucket/path (pip install dvc-s3) or ssh://host/path (pip install "
    "dvc-ssh); then run this again. README, 'Versioned data and checkpoints'"
)


def default_remote(repo: Path) -> tuple[str, str]:
    """(name, url) of the default DVC remote, with a relative folder resolved as DVC does (from .dvc/)."""
    name = _dvc("remote", "default", cwd=repo).stdout.strip()
    # lines: NAME URL [(default)]
    remotes = {f[0]: f[1] for f in (ln.split() for ln in _dvc("remote", "list", cwd=repo).stdout.splitlines()) if len(f) > 1}
    if not name or name not in remotes:
        raise PullError(NO_REMOTE)
    return name, remotes[name]


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
    cmds = stages[stage]["cmd"]
    runs = [shlex.split(c, comments=True) for c in ([cmds] if isinstance(cmds, str) else cmds)]
    cmd = next((c for c in runs if c and c[0] == "snakemake"), None)
    if cmd is None:
        raise PullError(f"stage {stage!r} does not run snakemake: {cmds}")
    return [_tool("snakemake"), *cmd[1:]]


def locked_outputs(repo: Path, stage: str) -> list[str]:
    """The outputs of `stage` that dvc.lock records (with their hashes): what a pull can fetch."""
    lock = repo / "dvc.lock"
    entry = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).get(stage) if lock.is_file() else None
    outs = [o["path"] for o in (entry or {}).get("outs", []) if o.get("md5")]
    if not outs:
        raise PullError(
            f"dvc.lock records no outputs of stage {stage!r}: nobody ran `dvc repro {stage}` and committed dvc.lock "
            f"in this clone's history, so there is nothing to pull. Get the commit that has it (git pull), or make "
            f"the outputs here: `dvc repro {stage}`"
            + (" after `moe-adapters import-reference ...` (README, 'Released checkpoints')" if "-" in stage else "")
        )
    return outs


def unrecorded_outputs(repo: Path, stage: str) -> list[str]:
    """Outputs of `stage` in the workspace that differ from what dvc.lock records and that DVC's cache does not
    hold: a checkout would have to delete them (DVC then asks for --force). Nothing is deleted here."""
    r = _dvc("status", stage, "--json", cwd=repo)
    try:
        status = yaml.safe_load(r.stdout or "{}") or {}
    except yaml.YAMLError:
        return []
    changed = []
    for item in status.get(stage, []) or []:
        if isinstance(item, dict):
            for path, how in (item.get("changed outs") or {}).items():
                if how in ("modified", "not in cache") and (repo / path).exists():
                    changed.append(path)
    return changed


def pull(stage: str, repo: str | Path = ".", allow_missing: bool = False) -> None:
    repo = Path(repo).resolve()
    snakemake = stage_command(repo, stage)
    remote = check_remote(repo)
    locked_outputs(repo, stage)
    unsaved = unrecorded_outputs(repo, stage)
    if unsaved:
        raise PullError(
            f"the workspace holds outputs of {stage!r} that dvc.lock does not record: {', '.join(unsaved)}. A pull "
            f"would replace them. Keep them: `dvc commit {stage}` (then they are what dvc.lock records), or move them "
            "away first; nothing was changed"
        )
    r = _dvc("pull", stage, *(["--allow-missing"] if allow_missing else []), cwd=repo)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-6:])
        raise PullError(f"`dvc pull {stage}` from remote {remote} failed; its last words:\n{tail}")
    t = subprocess.run([*snakemake, "--touch"], cwd=repo, capture_output=True, text=True, env=os.environ.copy())
    if t.returncode != 0:
        tail = "\n".join((t.stdout + t.stderr).strip().splitlines()[-8:])
        raise PullError(f"pulled, but marking the outputs up to date failed (something is missing?):\n{tail}")
    print(f"pulled stage {stage} from {remote}; outputs marked up to date for Snakemake")
