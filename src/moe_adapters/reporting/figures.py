"""Figures a reader looks at: the accuracy matrix, each dataset's accuracy across tasks, DDAS routing, and
how often each expert was selected. Pure functions from data to a matplotlib Figure (Agg canvas, no pyplot
state); save_figure writes one atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..fsutil import atomic_path

ZERO_SHOT_ROUTE = "zero-shot"


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return -(-n // cols), cols


def accuracy_matrix_figure(names: Sequence[str], acc: np.ndarray, *, title: str) -> Figure:
    """The accuracy matrix as a heatmap: row i after task i; the diagonal (the task just trained) is outlined."""
    acc = np.asarray(acc, dtype=float)
    n_rows, n_cols = acc.shape
    labels = [f"{i}: {names[i]}" for i in range(n_rows)]
    fig = _figure(max(6.5, 2.6 + 0.08 * max(map(len, labels)) + 0.8 * n_cols), 1.8 + 0.5 * n_rows)
    ax = fig.add_subplot()
    frame = pd.DataFrame(acc, index=labels, columns=list(names))
    sns.heatmap(
        frame, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=True, fmt=".1f", annot_kws={"size": 8},
        linewidths=0.5, linecolor="white", cbar_kws={"label": "top-1 accuracy (%)"},
    )
    for i in range(min(n_rows, n_cols)):
        ax.add_patch(Rectangle((i, i), 1, 1, fill=False, edgecolor="crimson", linewidth=2))
    ax.tick_params(axis="y", labelrotation=0)
    ax.tick_params(axis="x", labelrotation=45 if n_cols > 6 else 0)
    ax.set_xlabel("evaluated on (training order)")
    ax.set_ylabel("after training task")
    fig.suptitle(
        title + "\noutlined: the task just trained; right of it: not yet trained (transfer); left: forgetting",
        fontsize="medium",
    )
    return fig


def accuracy_curves_figure(
    names: Sequence[str], acc: np.ndarray, zero_shot: Sequence[float] | None = None, *, title: str
) -> Figure:
    """One panel per dataset: its accuracy after every task, the task that trains it marked, zero-shot CLIP dashed."""
    acc = np.asarray(acc, dtype=float)
    n_tasks, n = acc.shape
    rows, cols = _grid(n)
    fig = _figure(3.0 * cols, 2.5 * rows + 0.6)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    palette = sns.color_palette("colorblind", n)
    steps = np.arange(n_tasks)
    for j, ax in enumerate(axes):
        if j >= n:
            ax.set_axis_off()
            continue
        if j > 0:
            ax.axvspan(-0.5, min(j, n_tasks) - 0.5, color="0.92", zorder=0)
        if zero_shot is not None:
            ax.axhline(zero_shot[j], color="0.4", linestyle="--", linewidth=1, label="zero-shot CLIP")
        sns.lineplot(x=steps, y=acc[:, j], ax=ax, color=palette[j], marker="o", label="MoE-Adapters")
        if j < n_tasks:
            ax.plot([j], [acc[j, j]], marker="*", markersize=14, color=palette[j], markeredgecolor="black",
                    linestyle="none", label="trained on it")
        ax.set_title(names[j])
        ax.set_ylim(0, 105)
        ax.set_xticks(steps, [f"{i}" for i in steps])
        ax.tick_params(labelbottom=True)
        ax.grid(axis="y", alpha=0.3)
        ax.legend().remove()
    for ax in axes[(rows - 1) * cols:]:
        ax.set_xlabel("after task")
    for ax in axes[::cols]:
        ax.set_ylabel("accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
    fig.suptitle(
        title + "\nshaded: before the dataset is trained (transfer); after the star: forgetting",
        fontsize="medium",
    )
    return fig


def routing_shares(routing: pd.DataFrame) -> dict[int, pd.DataFrame]:
    """Per task: the share of each dataset's evaluation batches sent to each route (rows datasets, columns routes)."""
    need = {"after_task", "trained_on", "dataset", "route", "batches"}
    if not need <= set(routing.columns):
        raise ValueError(f"routing table needs columns {sorted(need)}, has {list(routing.columns)}")
    datasets = list(dict.fromkeys(routing["dataset"]))
    tasks = sorted(routing["after_task"].unique())
    trained = list(dict.fromkeys(routing.sort_values("after_task", kind="stable")["trained_on"]))
    routes = [ZERO_SHOT_ROUTE, *trained, *sorted(set(routing["route"]) - {ZERO_SHOT_ROUTE, *trained})]
    out = {}
    for t in tasks:
        part = routing[routing["after_task"] == t]
        counts = part.pivot_table(index="dataset", columns="route", values="batches", aggfunc="sum", fill_value=0)
        counts = counts.reindex(index=datasets, columns=routes, fill_value=0)
        out[int(t)] = counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    return out


def routing_figure(routing: pd.DataFrame, *, title: str) -> Figure:
    """DDAS routing: one heatmap per task, share of each dataset's batches sent to each route after that task."""
    shares = routing_shares(routing)
    tasks = sorted(shares)
    first = shares[tasks[0]]
    n_ds, n_routes = first.shape
    rows, cols = _grid(len(tasks), 3)
    fig = _figure(1.8 + cols * (1.2 + 0.5 * n_routes), 1.0 + rows * (1.2 + 0.4 * n_ds))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    trained_on = routing.drop_duplicates("after_task").set_index("after_task")["trained_on"]
    annotate = n_ds * n_routes <= 60
    for k, ax in enumerate(axes):
        if k >= len(tasks):
            ax.set_axis_off()
            continue
        t = tasks[k]
        sns.heatmap(
            100 * shares[t], ax=ax, vmin=0, vmax=100, cmap="rocket_r", annot=annotate, fmt=".0f",
            annot_kws={"size": 7}, cbar=False, linewidths=0.5, linecolor="0.85", square=True,
        )
        ax.set_title(f"after task {t}: {trained_on[t]}", fontsize="small")
        ax.set_xlabel("route" if k >= len(tasks) - cols else "")
        ax.set_ylabel("evaluated dataset" if k % cols == 0 else "")
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="x", labelrotation=90 if n_routes > 6 else 0)
        ax.tick_params(axis="y", labelrotation=0)
    mappable = axes[0].collections[0]
    fig.colorbar(mappable, ax=axes.tolist(), shrink=0.6, label="share of the dataset's batches (%)")
    fig.suptitle(title + "\nDDAS: which router (or zero-shot CLIP) each dataset's test batches went to",
                 fontsize="medium")
    return fig


def expert_counts_figure(
    counts: dict[str, np.ndarray], frozen: dict[str, np.ndarray] | None = None, *, title: str, scale: str = "log"
) -> Figure:
    """Per tower: how many training samples each expert of each layer was selected for during a task (log or linear
    colour scale; on the log scale a count of 0 shows as 1), with the experts frozen after the task marked."""
    towers = [t for t in ("visual", "text") if t in counts]
    if not towers:
        raise ValueError("no selection counts (expected 'visual' and/or 'text')")
    n_layers, n_experts = np.asarray(counts[towers[0]]).shape
    fig = _figure(2.0 + 0.42 * n_experts, 0.8 + len(towers) * (1.0 + 0.42 * n_layers))
    axes = fig.subplots(len(towers), 1, squeeze=False).ravel()
    vmax = max(float(np.asarray(counts[t]).max()) for t in towers)
    norm = LogNorm(vmin=1, vmax=max(vmax, 10.0)) if scale == "log" else Normalize(vmin=0, vmax=max(vmax, 1.0))
    for ax, tower in zip(axes, towers, strict=True):
        c = np.asarray(counts[tower], dtype=float)
        frame = pd.DataFrame(c, index=[f"layer {i}" for i in range(c.shape[0])], columns=range(c.shape[1]))
        sns.heatmap(
            frame.clip(lower=1) if scale == "log" else frame, ax=ax, norm=norm, cmap="mako_r", linewidths=0.3,
            linecolor="white", cbar_kws={"label": f"samples routed ({scale})"},
        )
        if frozen is not None and tower in frozen:
            ys, xs = np.nonzero(np.asarray(frozen[tower]))
            ax.scatter(xs + 0.5, ys + 0.5, marker="s", s=36, facecolors="none", edgecolors="crimson",
                       linewidths=1.2, label="frozen after this task")
            ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.25), fontsize="x-small", frameon=False)
        ax.tick_params(axis="y", labelrotation=0)
        ax.set_title(f"{tower} tower", loc="left", fontsize="small")
        ax.set_xlabel("expert")
        ax.set_ylabel("")
    fig.suptitle(title, fontsize="medium")
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Write a figure as PNG, atomically (a half-written image never carries the final name)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return Path(path)


def cil_curves_figure(accuracy: Sequence[float], zero_shot: Sequence[float], *, title: str) -> Figure:
    """Class-incremental: accuracy on all classes seen so far after every step, ours and zero-shot CLIP, with Avg."""
    steps = np.arange(len(accuracy))
    fig = _figure(max(6.0, 2.0 + 0.25 * len(steps)), 4.2)
    ax = fig.add_subplot()
    palette = sns.color_palette("colorblind", 3)
    running = np.cumsum(accuracy) / (steps + 1)
    sns.lineplot(x=steps, y=np.asarray(accuracy), ax=ax, marker="o", color=palette[0], label="MoE-Adapters")
    ax.plot(steps, running, linestyle=":", color=palette[0], label="MoE-Adapters, Avg so far")
    sns.lineplot(x=steps, y=np.asarray(zero_shot), ax=ax, marker="s", color=palette[1], label="zero-shot CLIP")
    ax.set_ylim(0, 105)
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("after step")
    ax.set_ylabel("top-1 accuracy on all seen classes (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", frameon=False)
    fig.suptitle(title + "\nclass-incremental: every step adds classes; the accuracy covers all classes seen so far",
                 fontsize="medium")
    return fig
