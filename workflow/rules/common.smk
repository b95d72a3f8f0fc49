# Config validation (before any job), run names, and the paths, specs and helpers every rule takes from the plan.
# Nothing here writes a file, and the plan is computed from the config alone; the one look at the results folder is
# whether an imported run's files are there (imported_file), to say how to get them when they are not.

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

import moe_adapters.reporting
from moe_adapters.config import (
    IMPORTED_VARIANT,
    VARIANT_NAME,
    ConfigError,
    deep_merge,
    format_deviations,
    read_yaml,
    run_config_yaml,
)
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
MTIL_RUN = r"[a-z]+_order[0-9]+(_[0-9]+shot)?(-[A-Za-z0-9][A-Za-z0-9_.]*)?"
CIL_RUN = r"cil_[a-z0-9]+_[0-9]+steps(-[A-Za-z0-9][A-Za-z0-9_.]*)?"
R = CFG.results_dir.rstrip("/")
DATA = CFG.data_root.rstrip("/")
BENCH = CFG.benchmark
DEFAULT_RUN = PLAN.default_run
# The GPU rules hold one `gpu` (a local limit: --resources gpu=1, profiles/default; on SLURM, profiles/slurm asks for
# the GPU itself); a CPU run holds none, so its jobs' resources name no gpu at all.
GPU = {} if CFG.device == "cpu" else {"gpu": 1}
ENV = f"{workflow.basedir}/environment.yml"
SRC = Path(moe_adapters.reporting.__file__).resolve().parents[1]
# What changes no number (loader workers, resume cadence, the exact speed-ups) travels as resources, which are
# no rerun trigger: switching it reruns nothing. The specs, which are, travel as params.
_rt, _rt_eval = (PLAN.run(DEFAULT_RUN).train, PLAN.run(DEFAULT_RUN).eval)
RUNTIME = dict(
    workers=_rt.num_workers,
    checkpoint_every=_rt.checkpoint_every,
    batched_experts=int(CFG.speed.batched_experts),
    truncate_text=int(CFG.speed.truncate_text),
    reuse_features=int(CFG.speed.reuse_features),
)
RUNTIME_EVAL = {**RUNTIME, "workers": _rt_eval.num_workers}
# Runs whose checkpoints and autoencoders rules make: every run but an imported one (<setting>-reference), whose
# files `moe-adapters import-reference` wrote. For those runs the files are sources, not outputs: no rule can retrain
# them, whatever their times or the config say.
TRAINED_RUN = (
    r"[a-z]+_order[0-9]+(_[0-9]+shot)?" rf"(-(?!{IMPORTED_VARIANT}(?![A-Za-z0-9_.])){VARIANT_NAME})?"
)
# Jobs run the CLI of the Python running Snakemake, whatever PATH says; OpenMP threads wait passively, since
# jobs share the cores (spinning waits made small ops hundreds of times slower there; results are the same).
# A job's output goes to its log, which may be the very file that cannot be written (a full disk): descriptor 3
# stays Snakemake's stderr, and the CLI writes its one-line error there too (MOE_ADAPTERS_ERROR_FD).
shell.prefix(
    f'export PATH="{Path(sys.executable).parent}:$PATH" OMP_WAIT_POLICY="${{{{OMP_WAIT_POLICY:-PASSIVE}}}}"; '
    "exec 3>&2; export MOE_ADAPTERS_ERROR_FD=3; "
)


# ------------------------------------------------------------------ plan access


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


def folder(path):
    return str(Path(path).parent)


def owned(rule_output, kind, run, index=None, **wildcards):
    """The path of a step of `run` in the folder of the run that owns it (the baseline's when shared)."""
    return expand(rule_output, run=PLAN.owner(kind, run, index), **wildcards)[0]


def only_own(kind, index_of):
    """Refuse to plan a variant's copy of a step it shares with the baseline: the baseline's file is the one."""

    def check(w):
        owner = PLAN.owner(kind, w.run, index_of(w))
        if owner != w.run:
            raise WorkflowError(
                f"{kind} {index_of(w)} of {w.run} is shared with {owner}: use {owner}'s output"
            )
        PLAN.check_shared_paths(w.run)
        return []

    return planned(check)


# ------------------------------------------------------------------ inputs of the compute rules


def autoencoder_dataset(w):
    return PLAN.spec("autoencoder", w.run, int(w.k)).dataset


def task_dataset(w):
    return PLAN.spec("task", w.run, int(w.k)).dataset


def backbone_identity(w):
    return owned(rules.backbone.output.identity, "backbone", w.run)


def imported_file(run, path, what):
    """An imported run's checkpoint or autoencoder (made by no job); when absent, say how to get it."""
    if PLAN.imported(run) and not Path(path).exists():
        setting = PLAN.baseline(run)
        raise WorkflowError(
            f"{path} is missing: {run} evaluates the authors' released {what}, which no rule makes. Import them "
            f"with `moe-adapters import-reference --setting {setting} PATH...` or fetch an import with "
            f"`moe-adapters pull {run}` (README, 'Released checkpoints')"
        )
    return path


def previous_checkpoint(w):
    k = int(w.k)
    return [] if k == 0 else [owned(rules.train_task.output.checkpoint, "task", w.run, k - 1, k=k - 1)]


def task_checkpoint(w):
    path = owned(rules.train_task.output.checkpoint, "task", w.run, int(w.k), k=w.k)
    return imported_file(w.run, path, "checkpoints")


def previous_evaluation(w):
    """The previous checkpoint's evaluation: its routed-feature cache is the one evaluation k reads (reuse.py).

    A plain edge, not ancient(): Snakemake masks the jobs downstream of a job it reruns and then skips them when
    every file between them is ancient, so evaluation k would not rerun on its own changed params. Every config
    change that reruns evaluation k-1 reruns evaluation k anyway (its checkpoint follows k-1's, its spec shares
    k-1's keys), so the plans stay the same.
    """
    k = int(w.k)
    if k == 0:
        return []
    return [owned(rules.evaluate.output.evaluation, "evaluate", w.run, k - 1, k=k - 1)]


def autoencoders(w):
    n = len(datasets(w.run)) + 1
    paths = [owned(rules.autoencoder.output.ae, "autoencoder", w.run, k, k=k) for k in range(n)]
    return [imported_file(w.run, p, "DDAS autoencoders") for p in paths]


def features(w):
    return [owned(rules.features.output.features, "features", w.run, d, dataset=d) for d in datasets(w.run)]


def evaluations(w):
    n = len(datasets(w.run))
    return [owned(rules.evaluate.output.evaluation, "evaluate", w.run, k, k=k) for k in range(n)]


def checkpoints(w):
    n = len(datasets(w.run))
    paths = [owned(rules.train_task.output.checkpoint, "task", w.run, k, k=k) for k in range(n)]
    return [imported_file(w.run, p, "checkpoints") for p in paths]


def zero_shot(w):
    return owned(rules.evaluate_zero_shot.output.evaluation, "evaluate", w.run, None)


def cil_sources(w):
    """The prepared datasets a class-incremental view is built from (the mini: its five; else CIFAR100 ...)."""
    return [data_meta(d) for d in PLAN.spec("cil_prepare", PLAN.cil_view_run(w.cil_dataset)).pool]


def cil_view(w):
    return expand(rules.prepare_cil.output.meta, cil_dataset=PLAN.run(w.run).cil.dataset)[0]


def previous_step(w):
    k = int(w.k)
    return [] if k == 0 else [owned(rules.cil_train.output.checkpoint, "cil_step", w.run, k - 1, k=k - 1)]


def step_checkpoint(w):
    return owned(rules.cil_train.output.checkpoint, "cil_step", w.run, int(w.k), k=w.k)


def step_checkpoints(w):
    n = PLAN.run(w.run).cil.num_steps
    return [owned(rules.cil_train.output.checkpoint, "cil_step", w.run, k, k=k) for k in range(n)]


def step_evaluations(w):
    n = PLAN.run(w.run).cil.num_steps
    return [owned(rules.cil_evaluate.output.evaluation, "cil_evaluate", w.run, k, k=k) for k in range(n)]


def cil_zero_shot_eval(w):
    return owned(rules.cil_zero_shot.output.evaluation, "cil_evaluate", w.run, None)


def prev_arg(w, input):
    return f"--prev {input.prev[0]}" if input.prev else ""


# ------------------------------------------------------------------ reporting


def code(*modules):
    """The package's own files a reporting step runs, as inputs; editing one reruns just the jobs that use it."""
    return [str(SRC / f"{m}.py") for m in modules]


def report_params(w):
    return PLAN.params("report", w.run)


def config_hash(w):
    return PLAN.spec("report", w.run).config_hash


def deviations_text(w):
    return format_deviations(PLAN.spec("report", w.run).deviations)


def write_run_config(out, log, run):
    """`<run>/config.yaml`, written by Snakemake itself: a run's config is the plan's (variants, --config)."""
    write_text(out, run_config_yaml(PLAN.run(run)))
    write_text(log, f"wrote {out}\n")


def pretrained_arg(w, input):
    return f"--pretrained {input.pretrained}" if input.pretrained else ""


def ledger_runs():
    """report.ledger_runs, else the config's own run (for a variant, its baseline first) and its extra runs."""
    if CFG.report.ledger_runs:
        return list(CFG.report.ledger_runs)
    if PLAN.imported(DEFAULT_RUN):  # its baseline would have to be trained: list the imported run alone
        return [DEFAULT_RUN]
    return list(dict.fromkeys([PLAN.baseline(DEFAULT_RUN), DEFAULT_RUN, *PLAN.extra_runs()]))


def ledger_configs():
    return [f"{run}: {PLAN.spec('report', run).config_hash}" for run in ledger_runs()]


def setting_of(w):
    """`mini` stands for the config's own setting (results/mini/mini_ablation.md)."""
    return PLAN.baseline(DEFAULT_RUN) if w.setting == BENCH else w.setting


def ablation_inputs(axis):
    def inputs(w):
        setting = setting_of(w)
        runs = PLAN.ablation_variants(setting, axis(w) if axis else None)
        return {
            "baseline": expand(rules.table.output.metrics, run=setting)[0],
            "variants": expand(rules.table.output.metrics, run=runs),
        }

    return planned(inputs)


def run_results(run):
    """What a finished run offers a reader: tables (CSV, Markdown, metrics.json), cost, its config, and figures
    (an imported run has no expert figures: the release holds no selection counts)."""
    if PLAN.run(run).cil is not None:
        return [
            *expand(rules.cil_table.output, run=run),
            *expand(rules.cil_costs.output.costs, run=run),
            *expand(rules.run_config.output.config, run=run),
            *expand(rules.cil_figure.output.figure, run=run),
        ]
    n = 0 if PLAN.imported(run) else len(datasets(run))
    return [
        *expand(rules.table.output, run=run),
        *expand(rules.costs.output.costs, run=run),
        *expand(rules.run_config.output.config, run=run),
        *expand(rules.figures.output, run=run),
        *expand(rules.expert_figure.output.figure, run=run, k=range(n)),
    ]
