"""The tests' forked Snakemake (tests/snakemake_fork.py) behaves as a fresh `python -m snakemake` does."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .snakemake_fork import run_snakemake
from .workflow_helpers import REPO, planned_jobs, tool_env

pytestmark = pytest.mark.skipif(os.environ.get("MOE_ADAPTERS_TEST_FORK") == "0", reason="the fork server is off")

PROBE = """
import os, sys
rule probe:
    output: "probe.txt"
    run:
        pass
print("cwd=" + os.getcwd(), file=sys.stderr)
print("path=" + repr(sys.path), file=sys.stderr)
print("env=" + os.environ.get("PROBE_VALUE", "-"), file=sys.stderr)
"""


def _fresh(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def test_a_dry_run_plans_the_same_jobs_and_a_bad_flag_exits_the_same():
    env = tool_env(None)
    args = ["--workflow-profile", "profiles/mini", "-n", "-F"]
    forked, fresh = run_snakemake(args, cwd=REPO, env=env, timeout=300), _fresh(args, REPO, env)
    assert forked.returncode == fresh.returncode == 0
    assert planned_jobs(forked.stdout + forked.stderr) == planned_jobs(fresh.stdout + fresh.stderr) != set()
    bad = ["--no-such-flag"]
    forked, fresh = run_snakemake(bad, cwd=REPO, env=env, timeout=300), _fresh(bad, REPO, env)
    assert forked.returncode == fresh.returncode != 0 and "--no-such-flag" in forked.stderr


def test_the_command_sees_its_own_directory_environment_and_pythonpath(tmp_path):
    (tmp_path / "Snakefile").write_text(PROBE)
    (tmp_path / "src").mkdir()
    env = {**tool_env(None), "PROBE_VALUE": "42", "PYTHONPATH": str(tmp_path / "src")}
    forked, fresh = run_snakemake(["-n"], cwd=tmp_path, env=env, timeout=300), _fresh(["-n"], tmp_path, env)
    for r in (forked, fresh):
        assert r.returncode == 0, r.stderr
    lines = lambda r: [x for x in r.stderr.splitlines() if x.split("=", 1)[0] in ("cwd", "path", "env")]  # noqa: E731
    assert lines(forked) == lines(fresh)  # the whole sys.path included
    cwd, path, value = lines(forked)
    assert cwd == f"cwd={tmp_path}" and value == "env=42" and str(tmp_path / "src") in path


def test_a_timeout_kills_the_command_and_its_jobs(tmp_path):
    marker = tmp_path / "still-running"
    (tmp_path / "Snakefile").write_text(f'rule slow:\n    output: "x"\n    shell: "sleep 4; touch {marker}"\n')
    t = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_snakemake(["--cores", "1"], cwd=tmp_path, env=tool_env(None), timeout=2)
    assert time.monotonic() - t < 4
    time.sleep(3)
    assert not marker.exists()  # the job's shell went with the group
