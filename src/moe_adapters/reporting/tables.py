"""Result tables: Transfer / Avg / Last per dataset and mean, ours beside zero-shot CLIP and the paper."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

import numpy as np

from ..config import parse_run_name
from ..metrics import mtil_metrics, round1
from ..protocol import paper_numbers
from .costs import format_bytes, format_seconds, stage_summary

METRICS = ("transfer", "avg", "last")
LABEL = {"transfer": "Transfer", "avg": "Avg", "last": "Last"}
DIFF = "difference (ours - paper)"
DEFINITIONS = (
    "Transfer = mean over datasets j >= 2 of the mean of A[i][j] over tasks i < j (accuracy before training on j); "
    "Avg = mean of every dataset's mean over all rows; Last = mean of the final row. "
    "Top-1 accuracy in %, one decimal, rounded half up."
)
PROVENANCE_COLUMNS = ("config", "commit", "deviations")


def run_name(benchmark: str, order: str, shots: int) -> str:
    """The name of a run, as the workflow names its outputs: mtil_order1, mtil_order1_5shot, mini_order2."""
    return f"{benchmark}_{order}" + (f"_{shots}shot" if shots else "")


def parse_run(name: str) -> tuple[str, str, int]:
    """(benchmark, order, shots) of a run name (a variant's too); the inverse of run_name."""
    benchmark, order, shots, _ = parse_run_name(name)
    return benchmark, order, shots


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


def run_note(run: str) -> str:
    """What the paper offers for a run of either half of the paper (MTIL or class-incremental)."""
    from ..config import parse_cil_run_name

    if parse_cil_run_name(run) is not None:
        key = cil_paper_key(run)
        if key is None:
            return "no published numbers: the mini benchmark is this project's own"
        return f"paper numbers from paper_numbers.yaml:cil.{key} (the reference's committed logs; Avg and Last)"
    return paper_note(*parse_run(run))


def paper_key(benchmark: str, order: str, shots: int) -> str | None:
    """The section of paper_numbers.yaml that a run reproduces, if any."""
    if benchmark != "mtil":
        return None
    return f"mtil_{order}_full_shot" if shots == 0 else f"mtil_{order}_few_shot_{shots}"


def paper_means(benchmark: str, order: str, shots: int) -> dict | None:
    """The paper's mean Transfer / Avg / Last per method for a setting, None where it has none."""
    key = paper_key(benchmark, order, shots)
    section = paper_numbers().get(key) if key else None
    if not section:
        return None
    return {m: dict(v["mean"]) for m, v in section.items() if isinstance(v, dict) and "mean" in v}


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
    label: str = "MoE-Adapters (ours)",
) -> list[list]:
    """The rows of a run's table: ours (`label`: the authors' checkpoints for an imported run), zero-shot CLIP
    (ours), and, where published, the paper and the difference."""
    ours = mtil_metrics(acc, names)
    zs = mtil_metrics(zero_shot_matrix(zero_shot, len(names)), names)
    rows = _rows(label, ours, names) + _rows("Zero-shot CLIP (ours)", zs, names)
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


def _ledger_cell(v, empty: str = "") -> str:
    """A ledger cell: MTIL's numbers have one decimal, class-incremental ones two (as the reference logs them)."""
    if isinstance(v, float) and round(v, 1) != v:
        return f"{v:.2f}"
    return _cell(v, empty)


def table_csv(names: Sequence[str], rows: list[list], provenance: dict | None = None) -> str:
    """The CSV text of a run's table (for machines): method, metric, one column per dataset, mean; then on every
    row what produced it (config hash, commit, deviations), so tables of several runs can be stacked."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "metric", *names, "mean", *(PROVENANCE_COLUMNS if provenance else ())])
    prov = [provenance["config_hash"], provenance["commit"], provenance["deviations_text"]] if provenance else []
    for r in rows:
        w.writerow([_cell(v) for v in r] + prov)
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


def commits(costs: Sequence[dict]) -> str:
    """The commits of the code that trained and evaluated a run."""
    return _provenance(costs, "commit")


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
    provenance: dict,
    acc: np.ndarray | None = None,
    costs: Sequence[dict] | None = None,
) -> str:
    """A run's table for people: the paper's layout, its provenance and deviations, the accuracy matrix, the cost."""
    benchmark, order, shots = parse_run(run)
    p = provenance
    parts = [
        f"# {run}: MoE-Adapters, {setting_label(benchmark, order, shots)}\n",
        f"Config `{p['config_hash']}`, commit `{p['commit']}`" + (f", device {p['device']}" if costs else "") + ". "
        + f"Deviations: {p['deviations_text']}. "
        + DEFINITIONS + f" Comparison: {paper_note(benchmark, order, shots)}.\n",
        *(
            ["Checkpoints: the authors' released files, imported and checked (key layout, backbone), then evaluated "
             "by this workflow: " + "; ".join((p.get("checkpoints") or {}).get("sources") or ["see imported.json"])
             + ".\n"]
            if (p.get("checkpoints") or {}).get("imported") else []
        ),
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


LEDGER_COLUMNS = ("setting", "method", "metric", "paper", "ours", "difference", "config", "commit", "device", "deviations")


def ledger_rows(metrics: dict) -> list[dict]:
    """The ledger lines of one run, from its metrics.json: mean Transfer / Avg / Last of each method, ours beside
    the paper's, with the run's config hash, commits, devices and deviations."""
    prov = metrics["provenance"]
    paper = metrics.get("paper") or {}
    ours = {"MoE-Adapters": metrics, "Zero-shot CLIP": metrics.get("zero_shot") or {}}
    out = []
    for method, values in ours.items():
        for k in METRICS:
            if k not in values:
                continue
            mine, theirs = values[k], (paper.get(method) or {}).get(k)
            out.append(
                {
                    "setting": prov["run"],
                    "method": method,
                    "metric": LABEL[k],
                    "paper": theirs,
                    "ours": mine,
                    "difference": round1(mine - theirs) if mine is not None and theirs is not None else None,
                    "config": prov["config_hash"],
                    "commit": prov["commit"],
                    "device": prov["device"],
                    "deviations": prov["deviations_text"],
                }
            )
    return out


def ledger_csv(rows: Sequence[dict]) -> str:
    """The ledger for machines."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LEDGER_COLUMNS)
    for r in rows:
        w.writerow([_ledger_cell(r[k]) for k in LEDGER_COLUMNS])
    return buf.getvalue()


def ledger_markdown(rows: Sequence[dict], runs: Sequence[str]) -> str:
    """REPRODUCIBILITY.md: every setting present, paper value beside ours; generated, never edited by hand."""
    notes = [f"- `{run}`: {run_note(run)}." for run in runs]
    return "\n".join(
        [
            "# Reproduction ledger\n",
            "Generated by `moe-adapters ledger` (the workflow's `ledger` rule) from the metrics.json of the runs it lists "
            "(`report.ledger_runs`, by default the config's own run); never edit it by hand: `snakemake` regenerates it "
            "(the default target includes it). "
            "Numbers are means over the datasets of a setting. " + DEFINITIONS
            + " Difference = ours − paper; — where the paper has no number. Config is the hash of the validated "
            "run config; commit is the code's git commit when the results were made; deviations lists every setting "
            "that differs from the reference's.\n",
            markdown_table(LEDGER_COLUMNS, [[_ledger_cell(r[k], "—") for k in LEDGER_COLUMNS] for r in rows], "lllrrrllll"),
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
        lines += [f"   * - {_ledger_cell(r[cols[0]], '—')}", *[f"     - {_ledger_cell(r[c], '—')}" for c in cols[1:]]]
    lines.append("")
    for run in runs:
        first = next((r for r in rows if r["setting"] == run), None)
        prov = (
            f"config ``{first['config']}``, commit ``{first['commit']}``, device {first['device']}, "
            f"deviations: {first['deviations']}" if first else ""
        )
        lines.append(f"- ``{run}``: {prov}; {run_note(run)}.")
    return "\n".join(lines) + "\n"


def read_table(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty table")
    return rows[0], rows[1:]


def format_table(path) -> str:
    """A fixed-width text rendering of a table CSV (what the mini benchmark prints at the end), its provenance
    columns shown once, below the numbers."""
    header, rows = read_table(path)
    prov_cols = [i for i, h in enumerate(header) if h in PROVENANCE_COLUMNS]
    keep = [i for i in range(len(header)) if i not in prov_cols]
    table = [[r[i] if i < len(r) else "" for i in keep] for r in [header, *rows]]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(keep))]
    lines = [
        "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in table
    ]
    lines.insert(1, "-" * len(lines[0]))
    if prov_cols and rows:
        lines.append("; ".join(f"{header[i]}: {rows[0][i]}" for i in prov_cols))
    return "\n".join(lines)


def _changed(base: dict, other: dict) -> dict:
    """What a variant sets differently from the baseline (both relative to the reference)."""
    b, o = base["provenance"]["deviations"], other["provenance"]["deviations"]
    out = {}
    for k in sorted(set(b) | set(o)):
        bv = b[k]["value"] if k in b else o[k]["reference"]
        ov = o[k]["value"] if k in o else b[k]["reference"]
        if bv != ov:
            out[k] = ov
    return out


ABLATION_COLUMNS = ("run", "changed", "transfer", "avg", "last", "d_transfer", "d_avg", "d_last", "config")


def ablation_rows(base: dict, variants: Sequence[dict], summary: bool = False) -> list[dict]:
    """One row per run (the baseline first): its means, what it changes, and its difference from the baseline.

    With `summary` (a seed sweep), a last row gives mean ± std (sample std, n-1) over all the runs.
    """
    rows = []
    for m in [base, *variants]:
        ch = _changed(base, m)
        row = {
            "run": m["provenance"]["run"],
            "changed": "baseline" if m is base else ("; ".join(f"{k}={_fmt(v)}" for k, v in ch.items()) or "nothing"),
            "config": m["provenance"]["config_hash"],
        }
        for k in METRICS:
            row[k] = m.get(k)
            row[f"d_{k}"] = None if m is base or m.get(k) is None or base.get(k) is None else round1(m[k] - base[k])
        rows.append(row)
    if summary:
        row = {"run": f"mean ± std over {len(rows)} runs", "changed": "", "config": ""}
        for k in METRICS:
            vals = [r[k] for r in rows if r[k] is not None]
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            row[k] = f"{np.mean(vals):.1f} ± {std:.1f}" if vals else None
            row[f"d_{k}"] = None
        rows.append(row)
    return rows


def _fmt(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def ablation_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(ABLATION_COLUMNS)
    for r in rows:
        w.writerow([_cell(r[k]) for k in ABLATION_COLUMNS])
    return buf.getvalue()


def ablation_markdown(rows: Sequence[dict], *, title: str, baseline: dict) -> str:
    """The ablation table for people: means of every variant beside the baseline's, and the differences."""
    p = baseline["provenance"]
    header = ["run", "changed", "Transfer", "Avg", "Last", "Δ Transfer", "Δ Avg", "Δ Last", "config"]
    body = [[r[k] for k in ABLATION_COLUMNS] for r in rows]
    return "\n".join(
        [
            f"# {title}\n",
            f"Baseline `{p['run']}` (config `{p['config_hash']}`; deviations: {p['deviations_text']}). Means over the "
            "datasets of the order, top-1 % (" + DEFINITIONS + ") Δ = variant − baseline. Steps whose config slice "
            "and inputs equal the baseline's are shared with it, not recomputed.\n",
            markdown_table(header, body, "llrrrrrrl"),
        ]
    )


# ---------------------------------------------------------------- class-incremental tables

CIL_LABEL = {"avg": "Avg", "last": "Last"}


def cil_paper_key(setting: str) -> str | None:
    """The section of paper_numbers.yaml's `cil` that a class-incremental setting reproduces."""
    from ..config import parse_cil_run_name

    parsed = parse_cil_run_name(setting)
    if parsed is None or parsed[0] not in ("cifar100", "tinyimagenet"):
        return None
    dataset, steps, _ = parsed
    return f"cifar100_{steps}_steps" if dataset == "cifar100" else f"tinyimagenet_100_plus_{steps}_steps"


def cil_paper_means(setting: str) -> dict | None:
    key = cil_paper_key(setting)
    entry = paper_numbers().get("cil", {}).get(key) if key else None
    return {"MoE-Adapters": {"avg": entry["avg"], "last": entry["last"]}} if entry else None


def cil_rows(ours: dict, zero_shot: dict, paper: dict | None) -> list[list]:
    """Rows method, metric, value: ours, zero-shot CLIP (ours), and where published the paper and the difference."""
    rows = [[m, CIL_LABEL[k], v[k]] for m, v in (("MoE-Adapters (ours)", ours), ("Zero-shot CLIP (ours)", zero_shot))
            for k in CIL_LABEL]
    if paper:
        theirs = paper["MoE-Adapters"]
        rows += [["MoE-Adapters (paper)", CIL_LABEL[k], theirs[k]] for k in CIL_LABEL]
        rows += [[DIFF, CIL_LABEL[k], round(ours[k] - theirs[k], 2)] for k in CIL_LABEL]
    return rows


def table_csv_rows(header: Sequence[str], rows: list[list], provenance: dict) -> str:
    """A table's CSV with the provenance columns on every row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*header, *PROVENANCE_COLUMNS])
    prov = [provenance["config_hash"], provenance["commit"], provenance["deviations_text"]]
    for r in rows:
        w.writerow([*(f"{v:.2f}" if isinstance(v, float) else _cell(v) for v in r), *prov])
    return buf.getvalue()


CIL_DEFINITIONS = (
    "Avg = mean over steps of the top-1 accuracy on all classes seen so far; Last = that accuracy after the final "
    "step; forgetting and backward transfer (BWT) as continuum's Logger computes them (the reference logs them with "
    "it). Percentages, two decimals, as the reference logs them."
)


def cil_table_markdown(run: str, rows, ours: dict, zero_shot: dict, R: np.ndarray, provenance: dict, costs=None) -> str:
    """A class-incremental run's table for people: Avg / Last, every step, the per-step accuracies, the cost."""
    p = provenance
    key = cil_paper_key(p["setting"])
    steps = [
        [s["step"], s["accuracy"], s["avg"], s["forgetting"], s["bwt"], z["accuracy"]]
        for s, z in zip(ours["per_step"], zero_shot["per_step"], strict=True)
    ]
    T = len(steps)
    parts = [
        f"# {run}: MoE-Adapters, class-incremental\n",
        f"Config `{p['config_hash']}`, commit `{p['commit']}`" + (f", device {p['device']}" if costs else "") + ". "
        f"Deviations: {p['deviations_text']}. {CIL_DEFINITIONS} Comparison: "
        + (f"paper numbers from paper_numbers.yaml:cil.{key} (the reference's committed logs)." if key else
           "no published numbers: the mini benchmark is this project's own.") + "\n",
        markdown_table(["method", "metric", "value"], [[r[0], r[1], f"{r[2]:.2f}"] for r in rows], "llr"),
        "## After every step\n",
        markdown_table(["step", "accuracy", "Avg", "forgetting", "BWT", "zero-shot CLIP"],
                       [[s[0], *[f"{v:.2f}" for v in s[1:]]] for s in steps], "rrrrrr"),
        "## Accuracy on each step's classes\n",
        "Row i: top-1 (%) on the classes of step j after training step i.\n",
        markdown_table(["after step", *[f"step {j}" for j in range(T)]],
                       [[i, *[f"{R[i, j]:.2f}" if j <= i else None for j in range(T)]] for i in range(T)]),
    ]
    if costs:
        parts += ["## Cost\n", costs_markdown(costs)]
    return "\n".join(parts)
