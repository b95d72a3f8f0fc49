"""The steps that turn a finished run into what a reader looks at: tables (CSV, Markdown, metrics.json), the cost
table, figures and the reproduction ledger. Kept apart from pipeline.py, and importing torch only where a
checkpoint is read, so these short jobs start in a fraction of a second instead of loading the model code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .fsutil import read_json, write_json, write_text


def table_step(
    cfg: dict,
    matrix: str | Path,
    zero_shot: str | Path,
    out: str | Path,
    markdown: str | Path | None = None,
    costs: str | Path | None = None,
    metrics_json: str | Path | None = None,
) -> Path:
    """The run's table: CSV for machines, Markdown for people (with the matrix and, given its costs, the cost),
    and metrics.json (means and per-dataset values, as `moe-adapters metrics --json`, plus zero-shot CLIP)."""
    from .costs import read_costs
    from .metrics import read_matrix_csv
    from .results import build_table, run_metrics, run_name, table_csv, table_markdown

    names, acc = read_matrix_csv(matrix)
    if acc.shape[0] != len(names):
        raise ValueError(f"{matrix}: {acc.shape[0]} rows for {len(names)} tasks; the run is not complete")
    zs_eval = read_json(zero_shot)
    zs = zs_eval["results"]
    rows = build_table(
        names, acc, [zs[n]["accuracy"] for n in names], benchmark=cfg["benchmark"], order=cfg["order"], shots=cfg["shots"]
    )
    write_text(out, table_csv(names, rows))
    if metrics_json is not None:
        write_json(metrics_json, run_metrics(names, acc, [zs[n]["accuracy"] for n in names]))
    if markdown is not None:
        cost_rows = read_costs(costs) if costs is not None else None
        text = table_markdown(
            names,
            rows,
            run=run_name(cfg["benchmark"], cfg["order"], cfg["shots"]),
            config_hash=zs_eval.get("config_hash", "unknown"),
            commit=zs_eval.get("commit", "unknown"),
            acc=acc,
            costs=cost_rows,
        )
        write_text(markdown, text)
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


def _title(cfg: dict, config_hash: str | None) -> str:
    from .results import run_name

    return f"{run_name(cfg['benchmark'], cfg['order'], cfg['shots'])} · config {config_hash or 'unknown'}"


def figures_step(
    cfg: dict,
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

    from . import figures
    from .metrics import read_matrix_csv

    names, acc = read_matrix_csv(matrix)
    zs_eval = read_json(zero_shot)
    title = _title(cfg, zs_eval.get("config_hash"))
    zs = [zs_eval["results"][n]["accuracy"] for n in names]
    figures.save_figure(figures.accuracy_matrix_figure(names, acc, title=title), matrix_figure)
    figures.save_figure(figures.accuracy_curves_figure(names, acc, zs, title=title), curves_figure)
    figures.save_figure(figures.routing_figure(pd.read_csv(routing), title=title), routing_figure)


def expert_figure_step(cfg: dict, checkpoint: str | Path, out: str | Path) -> Path:
    """How often each expert of each layer was selected while training one task, from the task's checkpoint."""
    from . import figures
    from .checkpoint import CheckpointError, load_tensors

    tensors, meta = load_tensors(checkpoint)
    if meta.get("kind") != "task":
        raise CheckpointError(f"{checkpoint} is not a task checkpoint (kind={meta.get('kind')!r})")
    counts = {k.split(".", 1)[1]: v.numpy() for k, v in tensors.items() if k.startswith("counts.")}
    if not counts:
        raise CheckpointError(f"{checkpoint} holds no selection counts (counts.visual, counts.text)")
    frozen = {k.split("_", 1)[1]: v.numpy() for k, v in tensors.items() if k in ("frozen_visual", "frozen_text")}
    title = (
        f"{_title(cfg, meta.get('config_hash'))}\n"
        f"task {meta['task']} ({meta['dataset']}): training samples routed to each expert, per layer"
    )
    return figures.save_figure(figures.expert_counts_figure(counts, frozen or None, title=title), out)


def ledger_step(
    tables: Sequence[str | Path],
    costs: Sequence[str | Path],
    out: str | Path,
    csv_out: str | Path | None = None,
    rst_out: str | Path | None = None,
) -> Path:
    """REPRODUCIBILITY.md (and CSV, and the report's headline): per setting present, the paper's value beside ours."""
    from .costs import read_costs
    from .results import ledger_csv, ledger_markdown, ledger_rows, ledger_rst, read_table, table_run

    if len(tables) != len(costs):
        raise ValueError(f"{len(tables)} tables but {len(costs)} cost files: give one cost file per table")
    rows, runs = [], []
    for table, cost_file in zip(tables, costs, strict=True):
        run = table_run(table)
        if Path(cost_file).parent.name != run:
            raise ValueError(f"{cost_file} is not the cost file of run {run} (expected .../{run}/costs.csv)")
        header, body = read_table(table)
        rows += ledger_rows(run, header, body, read_costs(cost_file))
        runs.append(run)
    write_text(out, ledger_markdown(rows, runs))
    if csv_out is not None:
        write_text(csv_out, ledger_csv(rows))
    if rst_out is not None:
        write_text(rst_out, ledger_rst(rows, runs))
    return Path(out)
