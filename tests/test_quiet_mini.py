"""`make mini` says nothing it need not: no config-merging message the user did not ask for, no gpu resource on a
CPU run, no warning in any job's log, no packaging deprecation from setuptools."""

from __future__ import annotations

import re
import tomllib

from .workflow_helpers import REPO


def test_reduced_mini_log_and_job_logs_carry_no_noise(reduced_mini_run):
    reduced_mini_run.check()
    log = reduced_mini_run.log  # `dvc repro mini`, as `make mini` runs it
    assert "by additional config specified via the command line" not in log  # no --config was given
    resources = re.findall(r"^\s+resources: (.*)$", log, re.M)
    assert len(resources) > 20 and not [r for r in resources if "gpu" in r]  # device: cpu holds no gpu
    job_logs = list((reduced_mini_run.workdir / "results/mini").rglob("logs/**/*.log"))
    assert len(job_logs) > 20
    noisy = {
        str(f.relative_to(reduced_mini_run.workdir)): line
        for f in job_logs
        for line in f.read_text(errors="replace").splitlines()
        if re.search(r"warning|deprecat|not writable", line, re.I)
    }
    assert not noisy, noisy


def test_license_is_an_spdx_expression_setuptools_reads_without_deprecation():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    # a table ({text = "MIT"}) makes setuptools >= 77 print its deprecation box on every install
    assert meta["project"]["license"] == "MIT"
    req = next(r for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    assert int(re.search(r">=(\d+)", req).group(1)) >= 77  # the first setuptools reading SPDX license strings
