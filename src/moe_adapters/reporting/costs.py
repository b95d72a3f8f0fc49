"""Cost accounting of a run: trainable parameters, wall time, peak memory and device of every step, from the
cost each step already recorded in its output (checkpoints, autoencoders, features, evaluations)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..fsutil import read_json
from ..integrity import read_evaluation

COLUMNS = (
    "stage",
    "item",
    "trainable_parameters",
    "wall_seconds",
    "peak_memory_bytes",
    "device",
    "config_hash",
    "commit",
    "source",  # an imported step: the authors' file it came from, with its SHA-256 (else empty)
)
STAGES = ("pretraining", "backbone", "training", "autoencoders", "evaluation")


def cost_row(stage: str, item: str, meta: dict) -> dict:
    """One row of the cost table from a step's metadata (its `cost` record and provenance); absent values stay None."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    c = meta.get("cost") or {}
    return {
        "stage": stage,
        "item": item,
        "trainable_parameters": c.get("trainable_parameters"),
        "wall_seconds": c.get("wall_seconds", meta.get("wall_seconds")),
        "peak_memory_bytes": c.get("peak_memory_bytes"),
        "device": c.get("device"),
        "config_hash": meta.get("config_hash"),
        "commit": meta.get("commit"),
        "source": imported_source(meta),
    }


def imported_source(meta: dict) -> str | None:
    """Which of the authors' files an imported checkpoint or autoencoder came from (None: made here)."""
    imp = meta.get("imported")
    if not isinstance(imp, dict):
        return None
    if "file" in imp:
        return f"{imp['file']} (sha256 {imp.get('sha256')})"
    return imp.get("trained_from")


def _item(label: str, meta: dict) -> str:
    return f"{label} (imported)" if meta.get("imported") else label


def collect_costs(
    *,
    backbone: str | Path | None = None,
    pretrained: str | Path | None = None,
    checkpoints: Sequence[str | Path] = (),
    autoencoders: Sequence[str | Path] = (),
    features: Sequence[str | Path] = (),
    evaluations: Sequence[str | Path] = (),
) -> list[dict]:
    """Every step's cost, in the order the workflow runs them."""
    from ..artifacts import read_metadata

    rows = []
    if pretrained is not None:
        meta = read_metadata(pretrained)
        item = f"pretrain {meta.get('model', 'backbone')} ({meta.get('iterations', '?')} iterations)"
        rows.append(cost_row("pretraining", item, meta))
    if backbone is not None:
        meta = read_json(backbone)
        rows.append(cost_row("backbone", f"check {meta.get('name', 'backbone')} weights", meta))
    for path in checkpoints:
        meta = read_metadata(path)
        what = meta["dataset"] if "classes" not in meta else f"{len(meta['classes'])} classes"
        unit = "step" if "classes" in meta else "task"  # a class-incremental step records its classes
        rows.append(cost_row("training", _item(f"{unit} {meta['task']}: {what}", meta), meta))
    for path in autoencoders:
        meta = read_metadata(path)
        rows.append(cost_row("autoencoders", _item(f"autoencoder {meta['index']}: {meta.get('dataset', '?')}", meta), meta))
    for path in features:
        meta = read_metadata(path)
        rows.append(cost_row("evaluation", f"features: {meta['dataset']}", meta))
    for path in evaluations:
        ev = read_evaluation(path)
        if "task" in ev:
            what = "zero-shot CLIP" if ev["task"] is None else f"task {ev['task']}: {ev['trained_on']}"
        else:  # a class-incremental evaluation
            what = "zero-shot CLIP, every step" if ev["step"] is None else f"after step {ev['step']}"
        rows.append(cost_row("evaluation", f"evaluate {what}", ev))
    return rows


def costs_csv(rows: Iterable[dict]) -> str:
    """The CSV text of a cost table (empty cells where a step did not record a value)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
    return buf.getvalue()


def read_costs(path: str | Path) -> list[dict]:
    """Rows of a cost CSV with numbers parsed back (None for empty cells)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS[:6]) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a cost table (missing columns {sorted(missing)})")
        rows = list(reader)
    out = []
    for r in rows:
        row = {k: (r.get(k) or None) for k in COLUMNS}
        for k, kind in (("trainable_parameters", int), ("wall_seconds", float), ("peak_memory_bytes", int)):
            if row[k] is not None:
                row[k] = kind(row[k])
        if row["source"] is None:  # optional: only imported steps have one
            del row["source"]
        out.append(row)
    return out


def stage_summary(rows: Sequence[dict]) -> list[dict]:
    """Per stage: number of steps, summed wall time, the largest peak memory, trainable parameters, devices."""
    out = []
    for stage in STAGES:
        part = [r for r in rows if r["stage"] == stage]
        if not part:
            continue
        walls = [r["wall_seconds"] for r in part if r["wall_seconds"] is not None]
        mems = [r["peak_memory_bytes"] for r in part if r["peak_memory_bytes"] is not None]
        params = sorted({r["trainable_parameters"] for r in part if r["trainable_parameters"] is not None})
        out.append(
            {
                "stage": stage,
                "steps": len(part),
                "wall_seconds": sum(walls) if walls else None,
                "peak_memory_bytes": max(mems) if mems else None,
                "trainable_parameters": (params[0], params[-1]) if params else None,
                "devices": sorted({r["device"] for r in part if r["device"]}),
            }
        )
    return out


def format_seconds(s: float | None) -> str:
    """Wall time the way people read it: 42.3 s, 5 min 24 s, 2 h 03 min."""
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def format_bytes(b: int | None) -> str:
    """Peak memory in binary units (MiB, GiB)."""
    if b is None:
        return "—"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= size:
            return f"{b / size:.2f} {unit}"
    return f"{b} B"
