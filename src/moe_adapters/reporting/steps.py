"""The steps that turn a finished run into what a reader looks at: the accuracy matrix and routing table, tables
(CSV, Markdown, metrics.json), the cost table, figures, the ablation table and the reproduction ledger. Each takes
the run's ReportSpec (who the run is, its config hash and deviations, the layout) and imports torch only where a
checkpoint is read, so these short jobs start in a fraction of a second."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import IMPORTED_VARIANT, format_deviations
from ..fsutil import read_json, write_json, write_text
from ..integrity import read_evaluation
from ..steps.specs import ReportSpec

ZERO_SHOT_ROUTE = -1  # model.moe.ZERO_SHOT, without importing torch


IMPORTED_NOTE = (
    "IMPORTED: the authors' released checkpoints and autoencoders, evaluated here, not trained by this workflow "
    "(moe-adapters import-reference; files and SHA-256 in {run}/imported.json)"
)


def provenance_of(spec: ReportSpec, costs: Sequence[dict] | None = None) -> dict:
    """The run's provenance as every table states it: config hash, commits and devices of its steps, deviations,
    and where its checkpoints come from (trained here, or the authors' files, imported, named in `checkpoints`)."""
    from .tables import commits, devices

    imported = spec.variant == IMPORTED_VARIANT
    text = format_deviations(spec.deviations)
    sources = sorted({r["source"] for r in costs or () if r.get("source")})
    return {
        "run": spec.run,
        "setting": spec.setting,
        "variant": spec.variant,
        "config_hash": spec.config_hash,
        "commit": commits(costs) if costs is not None else "unknown",
        "device": devices(costs) if costs is not None else "unknown",
        "deviations": spec.deviations,
        "deviations_text": f"{IMPORTED_NOTE.format(run=spec.run)}; {text}" if imported else text,
        "checkpoints": {"imported": True, "sources": sources} if imported else {"imported": False},
    }


def matrix_step(spec: ReportSpec, evals: Sequence[str | Path], out_matrix: str | Path, out_routing: str | Path) -> None:
    """The accuracy matrix (row i = after task i) and the routing table, from the per-task evaluations."""
    import numpy as np

    from ..metrics import matrix_csv_text

    names = list(spec.datasets)
    if len(evals) != len(names):
        raise ValueError(f"{len(evals)} evaluations for the {len(names)} tasks of {spec.run}")
    rows, routing = [], ["after_task,trained_on,dataset,route,batches,share"]
    for i, path in enumerate(evals):
        ev = read_evaluation(path)
        if ev["task"] != i:
            raise ValueError(f"{path} is the evaluation of task {ev['task']}, expected task {i}")
        rows.append([ev["results"][n]["accuracy"] for n in names])
        for n in names:
            br = ev["results"][n]["batch_routes"]
            total = sum(br.values())
            for route, count in sorted(br.items(), key=lambda kv: int(kv[0])):
                label = "zero-shot" if int(route) == ZERO_SHOT_ROUTE else names[int(route)]
                routing.append(f"{i},{names[i]},{n},{label},{count},{count / total:.4f}")
    write_text(out_matrix, matrix_csv_text(names, np.asarray(rows)))
    write_text(out_routing, "\n".join(routing) + "\n")


def table_step(
    spec: ReportSpec,
    matrix: str | Path,
    zero_shot: str | Path,
    out: str | Path,
    markdown: str | Path | None = None,
    costs: str | Path | None = None,
    metrics_json: str | Path | None = None,
) -> Path:
    """The run's table: CSV for machines, Markdown for people (with the matrix and, given its costs, the cost),
    and metrics.json (means and per-dataset values, as `moe-adapters metrics --json`, zero-shot CLIP's means, the
    paper's, and the provenance)."""
    from ..metrics import read_matrix_csv
    from .costs import read_costs
    from .tables import build_table, paper_means, run_metrics, table_csv, table_markdown

    names, acc = read_matrix_csv(matrix)
    if names != list(spec.datasets):
        raise ValueError(f"{matrix}: columns {names} are not the datasets of {spec.run} ({list(spec.datasets)})")
    if acc.shape[0] != len(names):
        raise ValueError(f"{matrix}: {acc.shape[0]} rows for {len(names)} tasks; the run is not complete")
    zs = read_evaluation(zero_shot)["results"]
    zs_acc = [zs[n]["accuracy"] for n in names]
    cost_rows = read_costs(costs) if costs is not None else None
    prov = provenance_of(spec, cost_rows)
    label = "MoE-Adapters (authors' checkpoints)" if prov["checkpoints"]["imported"] else "MoE-Adapters (ours)"
    rows = build_table(names, acc, zs_acc, benchmark=spec.benchmark, order=spec.order, shots=spec.shots, label=label)
    write_text(out, table_csv(names, rows, prov))
    if metrics_json is not None:
        m = run_metrics(names, acc, zs_acc)
        m["paper"] = paper_means(spec.benchmark, spec.order, spec.shots)
        write_json(metrics_json, {**m, "provenance": prov})
    if markdown is not None:
        write_text(markdown, table_markdown(names, rows, run=spec.run, provenance=prov, acc=acc, costs=cost_rows))
    return Path(out)


def costs_step(
    out: str | Path,
    *,
    backbone: str | Path | None = None,
    pretrained: str | Path | None = None,
    checkpoints: Sequence[str | Path] = (),
    autoencoders: Sequence[str | Path] = (),
    features: Sequence[str | Path] = (),
    evaluations: Sequence[str | Path] = (),
) -> Path:
    """Collect the cost every step recorded (wall time, peak memory, device, trainable parameters) into one CSV."""
    from .costs import collect_costs, costs_csv

    rows = collect_costs(
        backbone=backbone,
        pretrained=pretrained,
        checkpoints=checkpoints,
        autoencoders=autoencoders,
        features=features,
        evaluations=evaluations,
    )
    write_text(out, costs_csv(rows))
    return Path(out)


def title(spec: ReportSpec) -> str:
    """The first line of every figure: the run, its config hash, its deviations."""
    return f"{spec.run} · config {spec.config_hash} · {format_deviations(spec.deviations)}"


def figures_step(
    spec: ReportSpec,
    matrix: str | Path,
    zero_shot: str | Path,
    routing: str | Path,
    *,
    matrix_figure: str | Path,
    curves_figure: str | Path,
    routing_figure: str | Path,
) -> None:
    """The run's figures: accuracy matrix heatmap, accuracy of each dataset across tasks, DDAS routing."""
    import pandas as pd

    from ..metrics import read_matrix_csv
    from . import figures

    names, acc = read_matrix_csv(matrix)
    zs_eval = read_evaluation(zero_shot)
    zs = [zs_eval["results"][n]["accuracy"] for n in names]
    dpi = spec.report.figure_dpi
    figures.save_figure(figures.accuracy_matrix_figure(names, acc, title=title(spec)), matrix_figure, dpi)
    figures.save_figure(figures.accuracy_curves_figure(names, acc, zs, title=title(spec)), curves_figure, dpi)
    figures.save_figure(figures.routing_figure(pd.read_csv(routing), title=title(spec)), routing_figure, dpi)


def expert_figure_step(spec: ReportSpec, checkpoint: str | Path, out: str | Path) -> Path:
    """How often each expert of each layer was selected while training one task, from the task's checkpoint."""
    from ..artifacts import CheckpointError, load_arrays
    from . import figures

    tensors, meta = load_arrays(checkpoint)  # NumPy, no torch: this job starts in a fraction of a second
    if meta.get("kind") != "task":
        raise CheckpointError(f"{checkpoint} is not a task checkpoint (kind={meta.get('kind')!r})")
    counts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("counts.")}
    if not counts:
        raise CheckpointError(f"{checkpoint} holds no selection counts (counts.visual, counts.text)")
    frozen = {k.split("_", 1)[1]: v for k, v in tensors.items() if k in ("frozen_visual", "frozen_text")}
    head = f"{title(spec)}\ntask {meta['task']} ({meta['dataset']}): training samples routed to each expert, per layer"
    fig = figures.expert_counts_figure(counts, frozen or None, title=head, scale=spec.report.expert_color_scale)
    return figures.save_figure(fig, out, spec.report.figure_dpi)


def ledger_step(
    metrics: Sequence[str | Path],
    out: str | Path,
    csv_out: str | Path | None = None,
    rst_out: str | Path | None = None,
) -> Path:
    """REPRODUCIBILITY.md (and CSV, and the report's headline): per run listed, the paper's value beside ours."""
    from .tables import ledger_csv, ledger_markdown, ledger_rows, ledger_rst

    rows, runs = [], []
    for path in metrics:
        m = read_json(path)
        if "provenance" not in m:
            raise ValueError(f"{path}: not a run's metrics.json (no provenance)")
        rows += ledger_rows(m)
        runs.append(m["provenance"]["run"])
    write_text(out, ledger_markdown(rows, runs))
    if csv_out is not None:
        write_text(csv_out, ledger_csv(rows))
    if rst_out is not None:
        write_text(rst_out, ledger_rst(rows, runs))
    return Path(out)


def ablation_step(
    baseline: str | Path,
    variants: Sequence[str | Path],
    out_csv: str | Path,
    out_md: str | Path,
    *,
    title_: str,
    summary: bool = False,
) -> Path:
    """The ablation table: every variant's means (Transfer / Avg / Last) beside the baseline's, from metrics.json;
    with `summary` (a seed sweep), mean ± std over all of them."""
    from .tables import ablation_csv, ablation_markdown, ablation_rows

    base = read_json(baseline)
    rows = ablation_rows(base, [read_json(p) for p in variants], summary)
    write_text(out_csv, ablation_csv(rows))
    write_text(out_md, ablation_markdown(rows, title=title_, baseline=base))
    return Path(out_csv)


# ---------------------------------------------------------------- class-incremental runs


def cil_matrix_step(spec: ReportSpec, evals: Sequence[str | Path], out: str | Path) -> Path:
    """ACC.csv of a class-incremental run (step, accuracy on all seen classes, accuracy per step's classes)."""
    from ..metrics import cil_accuracy_matrix as accuracy_matrix
    from ..metrics import cil_csv_text

    acc, R = accuracy_matrix([read_evaluation(p) for p in evals], len(evals))
    write_text(out, cil_csv_text(acc, R))
    return Path(out)


def cil_table_step(
    spec: ReportSpec,
    accuracy: str | Path,
    zero_shot: str | Path,
    out: str | Path,
    markdown: str | Path | None = None,
    costs: str | Path | None = None,
    metrics_json: str | Path | None = None,
) -> Path:
    """A class-incremental run's table (Avg and Last beside zero-shot CLIP and the paper), metrics.json (with
    forgetting, BWT and every step) and, for people, the Markdown with the per-step accuracies and the cost."""
    from ..metrics import cil_accuracy_matrix as accuracy_matrix
    from ..metrics import cil_run_metrics, read_cil_csv
    from .costs import read_costs
    from .tables import cil_paper_means, cil_rows, cil_table_markdown, table_csv_rows

    acc, R = read_cil_csv(accuracy)
    zs_acc, zs_R = accuracy_matrix([read_evaluation(zero_shot)] * len(acc), len(acc))  # one file: every step's
    ours, zs = cil_run_metrics(acc, R), cil_run_metrics(zs_acc, zs_R)
    paper = cil_paper_means(spec.setting)
    rows = cil_rows(ours, zs, paper)
    cost_rows = read_costs(costs) if costs is not None else None
    prov = provenance_of(spec, cost_rows)
    write_text(out, table_csv_rows(["method", "metric", "value"], rows, prov))
    if metrics_json is not None:
        write_json(metrics_json, {**ours, "zero_shot": {k: zs[k] for k in ("avg", "last")}, "paper": paper,
                                  "provenance": prov})
    if markdown is not None:
        write_text(markdown, cil_table_markdown(spec.run, rows, ours, zs, R, prov, cost_rows))
    return Path(out)


def cil_figure_step(spec: ReportSpec, accuracy: str | Path, zero_shot: str | Path, out: str | Path) -> Path:
    """Accuracy on all seen classes after every step, ours beside zero-shot CLIP, with the running Avg."""
    from ..metrics import cil_accuracy_matrix as accuracy_matrix
    from ..metrics import read_cil_csv
    from . import figures

    acc, _ = read_cil_csv(accuracy)
    zs_acc, _ = accuracy_matrix([read_evaluation(zero_shot)] * len(acc), len(acc))
    fig = figures.cil_curves_figure(acc, zs_acc, title=title(spec))
    return figures.save_figure(fig, out, spec.report.figure_dpi)
