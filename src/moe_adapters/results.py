"""Result tables: Transfer / Avg / Last per dataset and mean, ours beside zero-shot CLIP and the paper."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from .metrics import mtil_metrics, round1
from .protocol import paper_numbers

METRICS = ("transfer", "avg", "last")
LABEL = {"transfer": "Transfer", "avg": "Avg", "last": "Last"}


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
    zs = mtil_metrics(np.tile(np.asarray(zero_shot, dtype=float), (len(names), 1)), names)
    rows = _rows("MoE-Adapters (ours)", ours, names) + _rows("Zero-shot CLIP (ours)", zs, names)
    key = paper_key(benchmark, order, shots)
    section = paper_numbers().get(key, {}) if key else {}
    paper = paper_rows(section, "MoE-Adapters", names) if section else None
    if paper:
        rows += paper
        for mine, theirs in zip(rows[:3], paper, strict=True):
            diff = [round1(a - b) if a is not None and b is not None else None for a, b in zip(mine[2:], theirs[2:], strict=True)]
            rows.append(["difference (ours - paper)", mine[1], *diff])
    zs_paper = paper_rows(section, "Zero-shot CLIP", names) if section else None
    if zs_paper:
        rows += zs_paper
    return rows


def table_csv(names: Sequence[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", *names, "mean"])
    for r in rows:
        w.writerow(["" if v is None else (f"{v:.1f}" if isinstance(v, float) else v) for v in r])
    return buf.getvalue()


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

