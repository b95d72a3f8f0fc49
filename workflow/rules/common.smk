# Config validation (before any job), run names, and the paths and specs every rule takes from the plan.
# Nothing here reads the results folder or writes a file: the plan is computed from the config alone.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

import moe_adapters.reporting
from moe_adapters.config import ConfigError, deep_merge, read_yaml, run_config_yaml
from moe_adapters.fsutil import write_text
from moe_adapters.workflow.plan import Plan


def make_plan():
    """The plan of this invocation; `--config variant=NAME ...` makes the other --config keys NAME's overrides."""
    cli = dict(workflow.config_settings.config or {})
    if not cli.get("variant"):
        return Plan(config)
    selectors = {k: v for k, v in cli.items() if k in ("benchmark", "order", "shots")}
    baseline = {}
    for path in workflow.configfiles:
        baseline = deep_merge(baseline, read_yaml(path))
    overrides = {k: v for k, v in cli.items() if k not in selectors and k != "variant"}
    return Plan(config, deep_merge(baseline, selectors), (str(cli["variant"]), overrides))


try:
    PLAN = make_plan()
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

CFG = PLAN.config  # the config's own run, typed
R = CFG.results_dir.rstrip("/")
DATA = CFG.data_root.rstrip("/")
BENCH = CFG.benchmark
DEFAULT_RUN = PLAN.default_run
GPU = 0 if CFG.device == "cpu" else 1  # a CPU run holds no gpu resource
# What changes no number (loader workers, resume cadence, the exact speed-ups) goes on the command line, not in
# params: switching it reruns nothing.
RUNTIME = PLAN.runtime(DEFAULT_RUN)
RUNTIME_EVAL = PLAN.runtime(DEFAULT_RUN, evaluation=True)
# The CLI of the Python running Snakemake, so jobs use the same environment whatever PATH says.
MOE = f"{sys.executable} -m moe_adapters.cli"


wildcard_constraints:
    run=r"[a-z]+_order[0-9]+(_[0-9]+shot)?(-[A-Za-z0-9][A-Za-z0-9_.]*)?",
    setting=r"[a-z]+(_order[0-9]+(_[0-9]+shot)?)?",
    axis=r"[a-z_]+",
    k=r"[0-9]+",
    dataset=r"[A-Za-z0-9_-]+",


def planned(f):
    """An input or params function whose config errors read as config errors, naming the key."""

    def wrapped(wildcards, *args):
        try:
            return f(wildcards, *args)
        except ConfigError as e:
            raise WorkflowError(f"invalid config: {e}") from None

    return wrapped


def spec(kind, index=None):
    """The params of a job: its spec (JSON), so a change of what the step reads reruns it, and only it."""
    return planned(lambda w: PLAN.params(kind, w.run, index(w) if callable(index) else index))


def datasets(run):
    return PLAN.run(run).datasets


def data_meta(name):
    return expand(rules.prepare.output.meta, dataset=name)[0]


def owned(rule_output, kind, run, index=None, **wildcards):
    """The path of a step of `run` in the folder of the run that owns it (the baseline's when shared)."""
    return expand(rule_output, run=PLAN.owner(kind, run, index), **wildcards)[0]


def only_own(kind, index_of):
    """Refuse to plan a variant's copy of a step it shares with the baseline: the baseline's file is the one."""

    def check(w):
        owner = PLAN.owner(kind, w.run, index_of(w))
        if owner != w.run:
            raise WorkflowError(f"{kind} {index_of(w)} of {w.run} is shared with {owner}: use {owner}'s output")
        PLAN.check_shared_paths(w.run)
        return []

    return planned(check)
