"""Result tables: Transfer / Avg / Last per dataset and mean, ours beside zero-shot CLIP and the paper."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .costs import format_bytes, format_seconds, stage_summary
from .metrics import mtil_metrics, round1
from .protocol import paper_numbers

METRICS = ("transfer", "avg", "last")
LABEL = {"transfer": "Transfer", "avg": "Avg", "last": "Last"}
DIFF = "difference (ours - paper)"
DEFINITIONS = (
    "Transfer = mean over datasets j >= 2 of the mean of A[i][j] over tasks i < j (accuracy before training on j); "
    "Avg = mean of every dataset's mean over all rows; Last = mean of the final row. "
    "Top-1 accuracy in %, one decimal, rounded half up."
)
_RUN = re.compile(r"(?P<benchmark>[a-z]+)_(?P<order>order[0-9]+)(?:_(?P<shots>[0-9]+)shot)?")


def run_name(benchmark: str, order: str, shots: int) -> str:
    """The name of a run, as the workflow names its outputs: mtil_order1, mtil_order1_5shot, mini_order2."""
    return f"{benchmark}_{order}" + (f"_{shots}shot" if shots else "")


def parse_run(name: str) -> tuple[str, str, int]:
    """(benchmark, order, shots) of a run name; the inverse of run_name."""
    m = _RUN.fullmatch(name)
    if not m:
        raise ValueError(f"{name!r} is not a run name <benchmark>_<order>[_<k>shot]")
    return m["benchmark"], m["order"], int(m["shots"] or 0)


def setting_label(benchmark: str, order: str, shots: int) -> str:
    """A setting as people say it: 'mtil order1, full-shot'."""
    return f"{benchmark} {order}, " + ("full-shot" if shots == 0 else f"{shots}-shot")


def paper_note(benchmark: str, order: str, shots: int) -> str:
    """What the paper offers for a setting (or why there is nothing to compare with)."""
    key = paper_key(benchmark, order, shots)
    if key is None:
        return f"no published numbers: the {benchmark} benchmark is this project's own"
    section = paper_numbers().get(key)
    if not section or "MoE-Adapters" not in section:
        return f"paper_numbers.yaml has no numbers for {key}"
    per_dataset = "transfer" in section["MoE-Adapters"]
    note = f"paper numbers from paper_numbers.yaml:{key} ({'per dataset and mean' if per_dataset else 'means only'})"
    return note + (f"; note: {section['note']}" if section.get("note") else "")


def paper_key(benchmark: str, order: str, shots: int) -> str | None:
    """The section of paper_numbers.yaml that a run reproduces, if any."""
    if benchmark != "mtil":
        return None
    return f"mtil_{order}_full_shot" if shots == 0 else f"mtil_{order}_few_shot_{shots}"


def _rows(method: str, m: dict, names: Sequence[str]) -> list[list]:
    return [
        [method, LABEL[k], *[m["per_dataset"][n][k] for n in names], m[k]] for k in METRICS
    ]


def paper_rows(section: dict, method: str, names: Sequence[str]) -> list[list] | None:
    """Rows of one method from paper_numbers.yaml in the run's column order (None where not published)."""
    entry = section.get(method)
    if not entry:
        return None
    cols = paper_numbers()["columns"]
    rows = []
    for k in METRICS:
        per = entry.get(k)
        vals = [per[cols.index(n)] if per and n in cols else None for n in names]
        rows.append([f"{method} (paper)", LABEL[k], *vals, entry["mean"][k]])
    return rows


def zero_shot_matrix(zero_shot: Sequence[float], n_tasks: int) -> np.ndarray:
    """Zero-shot CLIP as an accuracy matrix: it never trains, so every row is its zero-shot accuracy."""
    return np.tile(np.asarray(zero_shot, dtype=float), (n_tasks, 1))


def run_metrics(names: Sequence[str], acc: np.ndarray, zero_shot: Sequence[float] | None = None) -> dict:
    """metrics.json of a run: `moe-adapters metrics --json` of its matrix, plus zero-shot CLIP's means."""
    out = mtil_metrics(acc, names)
    if zero_shot is not None:
        zs = mtil_metrics(zero_shot_matrix(zero_shot, len(names)), names)
        out["zero_shot"] = {k: zs[k] for k in METRICS}
    return out


def build_table(
    names: Sequence[str],
    acc: np.ndarray,
    zero_shot: Sequence[float],
    *,
    benchmark: str,
    order: str,
    shots: int,
) -> list[list]:
    """The rows of a run's table: ours, zero-shot CLIP (ours), and, where published, the paper and the difference."""
    ours = mtil_metrics(acc, names)
    zs = mtil_metrics(zero_shot_matrix(zero_shot, len(names)), names)
    rows = _rows("MoE-Adapters (ours)", ours, names) + _rows("Zero-shot CLIP (ours)", zs, names)
    key = paper_key(benchmark, order, shots)
    section = paper_numbers().get(key, {}) if key else {}
    paper = paper_rows(section, "MoE-Adapters", names) if section else None
    if paper:
        rows += paper
        for mine, theirs in zip(rows[:3], paper, strict=True):
            diff = [round1(a - b) if a is not None and b is not None else None for a, b in zip(mine[2:], theirs[2:], strict=True)]
            rows.append([DIFF, mine[1], *diff])
    zs_paper = paper_rows(section, "Zero-shot CLIP", names) if section else None
    if zs_paper:
        rows += zs_paper
    return rows


def _cell(v, empty: str = "") -> str:
    return empty if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def table_csv(names: Sequence[str], rows: list[list]) -> str:
    """The CSV text of a run's table (for machines): method, metric, one column per dataset, mean."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", *names, "mean"])
    for r in rows:
        w.writerow([_cell(v) for v in r])
    return buf.getvalue()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; `align` has one letter per column, l or r (default: text, then numbers)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r} must give l or r for each of the {len(header)} columns")

    def esc(v) -> str:
        return _cell(v, "—").replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |",
    ]
    lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


# The stages that belong to one run; pretraining and the backbone check are shared by every run of a benchmark.
RUN_STAGES = ("training", "autoencoders", "evaluation")


def _provenance(costs: Sequence[dict], key: str) -> str:
    """The distinct values of `key` over the run's own steps (shared setup steps excluded)."""
    vals = sorted({str(r[key]) for r in costs if r.get(key) and r["stage"] in RUN_STAGES})
    return ", ".join(vals) if vals else "unknown"


def devices(costs: Sequence[dict]) -> str:
    """The devices that trained and evaluated a run."""
    return _provenance(costs, "device")


def costs_markdown(costs: Sequence[dict]) -> str:
    """Cost per stage, then per step, as Markdown tables."""
    summary = []
    for s in stage_summary(costs):
        lo_hi = s["trainable_parameters"]
        params = None if lo_hi is None else f"{lo_hi[0]:,}" if lo_hi[0] == lo_hi[1] else f"{lo_hi[0]:,}–{lo_hi[1]:,}"
        summary.append(
            [s["stage"], s["steps"], params, format_seconds(s["wall_seconds"]),
             format_bytes(s["peak_memory_bytes"]), ", ".join(s["devices"]) or None]
        )
    items = [
        [r["stage"], r["item"], None if r["trainable_parameters"] is None else f"{r['trainable_parameters']:,}",
         format_seconds(r["wall_seconds"]), format_bytes(r["peak_memory_bytes"]), r["device"]]
        for r in costs
    ]
    total = sum(r["wall_seconds"] or 0.0 for r in costs)
    return (
        f"Total wall time of all steps: {format_seconds(total)} (summed; parallel jobs overlap in time). "
        "Peak memory is the CUDA allocator's peak on a GPU and the process's maximum resident set on a CPU; "
        "trainable parameters are those the step's optimiser updated.\n\n"
        + markdown_table(["stage", "steps", "trainable parameters", "wall time", "peak memory", "device"], summary, "lrrrrl")
        + "\n"
        + markdown_table(["stage", "step", "trainable parameters", "wall time", "peak memory", "device"], items, "llrrrl")
    )


def table_markdown(
    names: Sequence[str],
    rows: list[list],
    *,
    run: str,
    config_hash: str,
    commit: str,
    acc: np.ndarray | None = None,
    costs: Sequence[dict] | None = None,
) -> str:
    """A run's table for people: the paper's layout, its provenance, the accuracy matrix and the cost."""
    benchmark, order, shots = parse_run(run)
    parts = [
        f"# {run}: MoE-Adapters, {setting_label(benchmark, order, shots)}\n",
        f"Config `{config_hash}`, commit `{commit}`" + (f", device {devices(costs)}" if costs else "") + ". "
        + DEFINITIONS + f" Comparison: {paper_note(benchmark, order, shots)}.\n",
        markdown_table(["method", "metric", *names, "mean"], rows, "ll" + "r" * (len(names) + 1)),
    ]
    if acc is not None:
        acc = np.asarray(acc, dtype=float)
        parts += [
            "## Accuracy matrix\n",
            "Row i: accuracy (%) on every dataset after training task i (columns in training order).\n",
            markdown_table(
                ["after task", *names],
                [[f"{i}: {names[i]}", *[round1(float(v)) for v in row]] for i, row in enumerate(acc)],
            ),
        ]
    if costs:
        parts += ["## Cost\n", costs_markdown(costs)]
    return "\n".join(parts)


LEDGER_COLUMNS = ("setting", "method", "metric", "paper", "ours", "difference", "config", "commit", "device")


def ledger_rows(run: str, header: Sequence[str], rows: Sequence[Sequence[str]], costs: Sequence[dict]) -> list[dict]:
    """The ledger lines of one run: mean Transfer / Avg / Last of each method, ours beside the paper's."""
    if list(header[:2]) != ["method", "metric"] or header[-1] != "mean":
        raise ValueError(f"{run}: not a result table (header {list(header)})")
    cells = {(r[0], r[1]): r[-1] for r in rows}
    out = []
    for method in ("MoE-Adapters", "Zero-shot CLIP"):
        for metric in (LABEL[k] for k in METRICS):
            ours = cells.get((f"{method} (ours)", metric))
            if ours is None:
                continue
            paper = cells.get((f"{method} (paper)", metric)) or None
            diff = round1(float(ours) - float(paper)) if ours and paper else None
            out.append(
                {
                    "setting": run,
                    "method": method,
                    "metric": metric,
                    "paper": float(paper) if paper else None,
                    "ours": float(ours) if ours else None,
                    "difference": diff,
                    "config": _provenance(costs, "config_hash"),
                    "commit": _provenance(costs, "commit"),
                    "device": devices(costs),
                }
            )
    return out


def ledger_csv(rows: Sequence[dict]) -> str:
    """The ledger for machines."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LEDGER_COLUMNS)
    for r in rows:
        w.writerow([_cell(r[k]) for k in LEDGER_COLUMNS])
    return buf.getvalue()


def ledger_markdown(rows: Sequence[dict], runs: Sequence[str]) -> str:
    """REPRODUCIBILITY.md: every setting present, paper value beside ours; generated, never edited by hand."""
    notes = [f"- `{run}`: {paper_note(*parse_run(run))}." for run in runs]
    return "\n".join(
        [
            "# Reproduction ledger\n",
            "Generated by `moe-adapters ledger` (the workflow's `ledger` rule) from the result tables and cost "
            "records of the runs present; never edit it by hand: `snakemake` regenerates it (the default target includes it). "
            "Numbers are means over the datasets of a setting. " + DEFINITIONS
            + " Difference = ours − paper; — where the paper has no number. Config is the hash of the validated "
            "run config recorded in every output; commit is the code's git commit when the results were made.\n",
            markdown_table(LEDGER_COLUMNS, [[r[k] for k in LEDGER_COLUMNS] for r in rows], "lllrrrlll"),
            "Settings:\n",
            *notes,
            "",
        ]
    )


def ledger_rst(rows: Sequence[dict], runs: Sequence[str]) -> str:
    """The ledger's headline as reStructuredText, for the report's first page (narrow: provenance below the table)."""
    cols = ("setting", "method", "metric", "paper", "ours", "difference")
    lines = [
        '.. list-table:: Headline: means over datasets, top-1 % ("—" where the paper has no number)',
        "   :header-rows: 1",
        "",
    ]
    for r in [dict(zip(cols, ("setting", "method", "metric", "paper", "ours", "ours − paper"), strict=True)), *rows]:
        lines += [f"   * - {_cell(r[cols[0]], '—')}", *[f"     - {_cell(r[c], '—')}" for c in cols[1:]]]
    lines.append("")
    for run in runs:
        first = next((r for r in rows if r["setting"] == run), None)
        prov = f"config ``{first['config']}``, commit ``{first['commit']}``, device {first['device']}" if first else ""
        lines.append(f"- ``{run}``: {prov}; {paper_note(*parse_run(run))}.")
    return "\n".join(lines) + "\n"


def table_run(path: str | Path) -> str:
    """The run a table belongs to, from its name <run>_table.csv."""
    name = Path(path).name
    if not name.endswith("_table.csv"):
        raise ValueError(f"{path}: a run's table is named <run>_table.csv")
    run = name.removesuffix("_table.csv")
    parse_run(run)
    return run


def read_table(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def format_table(path) -> str:
    """A fixed-width text rendering of a table CSV (what the mini benchmark prints at the end)."""
    header, rows = read_table(path)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))) for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)

