"""A changed setting reruns exactly what it affects, and nothing else: dry-run plans on a finished reduced mini run.

The reduced run has two tasks (Textures, Faces), so autoencoders 0..2 and features of both test sets. Every case
asserts the exact set of jobs planned (rule and wildcards). Then variants: a threshold variant plans only its
own evaluations and reporting, and running it leaves every baseline file byte-identical.
"""

from __future__ import annotations

import hashlib

import pytest

from .workflow_helpers import planned_jobs, run

MINI = ["--workflow-profile", "profiles/mini"]
RUN = "mini_order1"
TASKS = (0, 1)
DATASETS = ("Textures", "Faces")


def job(rule, **wildcards):
    return (rule, tuple(sorted((k, str(v)) for k, v in wildcards.items())))


def reporting(run=RUN, everything=True):
    """The reporting jobs of a run: those its table needs, and with `everything` those of the default target."""
    jobs = {job(r, run=run) for r in ("matrix", "costs", "table")}
    if everything:
        jobs |= {job("run_config", run=run), job("figures", run=run)} | {job("expert_figure", run=run, k=k) for k in TASKS}
    return jobs


LEDGER = {job("ledger")}
# the mini's class-incremental run (part of its default target; 4 steps in the reduced mini) reads the model's
# shared settings, the seed, the speed switches and the report layout too
CIL = "cil_mini_4steps"
CIL_REPORTING = {job(r, run=CIL) for r in ("run_config", "cil_matrix", "cil_costs", "cil_table", "cil_figure")}
CIL_TRAINING = {job("cil_train", run=CIL, k=k) for k in range(4)}
CIL_EVALUATION = {job("cil_evaluate", run=CIL, k=k) for k in range(4)}
CIL_ZERO_SHOT = {job("cil_zero_shot", run=CIL)}
TRAINING = {job("train_task", run=RUN, k=k) for k in TASKS}
EVALUATION = {job("evaluate", run=RUN, k=k) for k in TASKS}
ZERO_SHOT = {job("evaluate_zero_shot", run=RUN)}
FEATURES = {job("features", run=RUN, dataset=d) for d in DATASETS}


@pytest.fixture(scope="module")
def finished(reduced_mini_run):
    reduced_mini_run.check()
    repo = reduced_mini_run.workdir
    r = run(repo, "snakemake", "-n", *MINI)
    assert "Nothing to be done" in r.stdout + r.stderr, r.stdout[-2000:]
    return repo


def plan(repo, *args):
    r = run(repo, "snakemake", "-n", *MINI, *args)
    return planned_jobs(r.stdout)


@pytest.mark.parametrize(
    "override,want",
    [
        # a training key: training from task 0, then evaluation and reporting
        ('train={"label_smoothing": 0.1}', TRAINING | EVALUATION | reporting() | LEDGER),
        ('model={"expert_dropout": 0.0}',
         TRAINING | EVALUATION | reporting() | LEDGER | CIL_TRAINING | CIL_EVALUATION | CIL_REPORTING),
        # a per-dataset learning rate: training from that dataset's task on
        ('train={"lr": {"Faces": 0.002}}', {job("train_task", run=RUN, k=1), job("evaluate", run=RUN, k=1)} | reporting() | LEDGER),
        # the decision of DDAS and the evaluation batch: evaluation and reporting only
        ('ddas={"threshold": 0.5}', EVALUATION | reporting() | LEDGER),
        ('ddas={"per_sample": true}', EVALUATION | reporting() | LEDGER),
        ('ddas={"only_trained": true}', EVALUATION | reporting() | LEDGER),
        ('eval={"batch_size": 32}', FEATURES | EVALUATION | ZERO_SHOT | reporting() | LEDGER),
        # a DDAS training key: the autoencoders it trains, then evaluation; no task training
        ('ddas={"iterations": 12}', {job("autoencoder", run=RUN, k=k) for k in (1, 2)} | FEATURES | EVALUATION | ZERO_SHOT | reporting() | LEDGER),
        ('ddas={"lr": 0.02}', {job("autoencoder", run=RUN, k=k) for k in (0, 1, 2)} | FEATURES | EVALUATION | ZERO_SHOT | reporting() | LEDGER),
        # a reporting key: reporting only
        ('report={"figure_dpi": 80}', reporting() | LEDGER | CIL_REPORTING),
        # a key of the class-incremental setting only: that run, nothing of the MTIL one
        ('cil={"eval_noise": false}', CIL_EVALUATION | CIL_REPORTING | LEDGER),
        # speed-ups that are exact by test: nothing
        ('speed={"batched_experts": false, "truncate_text": false, "reuse_features": false}', set()),
        ('train={"num_workers": 1, "checkpoint_every": 7}', set()),
    ],
)
def test_a_change_plans_exactly_what_it_affects(finished, override, want):
    assert plan(finished, "--config", override) == want


def test_a_numeric_speed_switch_reruns_what_it_affects(finished):
    got = plan(finished, "--config", 'speed={"tf32": true}')
    assert got == TRAINING | EVALUATION | ZERO_SHOT | FEATURES | {
        job("autoencoder", run=RUN, k=k) for k in (0, 1, 2)
    } | reporting() | LEDGER | CIL_TRAINING | CIL_EVALUATION | CIL_ZERO_SHOT | CIL_REPORTING


def tree_digest(root, paths):
    h = {}
    for base in paths:
        for p in sorted([base] if base.is_file() else base.rglob("*")):
            if p.is_file() and ".resume" not in p.parts:
                h[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def test_a_threshold_variant_plans_its_evaluations_only_and_leaves_the_baseline_alone(finished):
    variant = f"{RUN}-thr0.01"
    target = f"results/mini/{variant}_table.csv"
    want = {job("evaluate", run=variant, k=k) for k in TASKS} | reporting(variant, everything=False)
    assert plan(finished, target) == want
    r = finished / "results/mini"
    baseline = [r / RUN, *r.glob(f"{RUN}_*"), r / "REPRODUCIBILITY.md", r / "ledger.csv"]
    before = tree_digest(finished, baseline)
    run(finished, "snakemake", *MINI, target)
    assert tree_digest(finished, baseline) == before
    assert not (r / variant / "checkpoints").exists()  # the variant trained nothing: it reads the baseline's
    table = (r / f"{variant}_table.csv").read_text()
    assert "ddas.threshold=0.01 (reference: 0.0655)" in table


def test_an_ad_hoc_variant_is_a_run_of_its_own(finished):
    got = plan(finished, "--config", "variant=strict", 'ddas={"threshold": 0.01}')
    variant = f"{RUN}-strict"
    assert {j for j in got if j[0] == "evaluate"} == {job("evaluate", run=variant, k=k) for k in TASKS}
    assert not any(j[0] in ("train_task", "autoencoder", "features", "evaluate_zero_shot") for j in got)
    assert all(dict(j[1]).get("run") in (variant, None) for j in got)  # nothing of the baseline reruns
