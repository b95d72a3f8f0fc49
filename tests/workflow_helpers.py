"""Running the Snakemake workflow from tests: the command line, and the reduced mini run's config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir, *args, timeout=900) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` with this Python (so jobs import the code under test)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # OpenMP threads that spin while waiting turn every small torch op into a wait of milliseconds when other
    # processes share the cores (measured on a 2-core machine beside another busy process: a fused AdamW step
    # over 720 small tensors took 5.6 s with 2 threads, 0.07 s with 2 threads and PASSIVE, 0.011 s with 1
    # thread); the results are the same either way.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--workflow-profile", "none", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def write_reduced_mini(tmp: Path) -> Path:
    """The mini benchmark cut to two tasks (Textures, Faces) and a few iterations: the real DAG in about a minute."""
    proto = yaml.safe_load((REPO / "src/moe_adapters/protocol/mini.yaml").read_text())
    proto["orders"] = {"order1": ["Textures", "Faces"]}
    proto["datasets"] = {k: proto["datasets"][k] for k in ("Textures", "Faces")}
    (tmp / "proto.yaml").write_text(yaml.safe_dump(proto))
    cfg = yaml.safe_load((REPO / "config/mini.yaml").read_text())
    cfg["protocol"] = str(tmp / "proto.yaml")
    cfg["train"].update(iterations=6, checkpoint_every=0)
    cfg["ddas"].update(iterations_generic=10, iterations=10)
    cfg["mini"].update(pretrain_iterations=8)
    path = tmp / "mini.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
