"""Transfer / Avg / Last from an accuracy matrix (MTIL) and Avg / Last for class-incremental runs."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np


def round1(x: float | None) -> float | None:
    """Round half up to one decimal on the decimal representation, as tables in papers do."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return float(Decimal(repr(float(x))).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))


def _check_matrix(acc: np.ndarray) -> np.ndarray:
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 2 or acc.shape[0] < 1 or acc.shape[1] < 1:
        raise ValueError(f"accuracy matrix must be 2-D and non-empty, got shape {acc.shape}")
    if not np.all(np.isfinite(acc)):
        raise ValueError("accuracy matrix holds a missing or non-finite value")
    return acc


def transfer_per_dataset(acc: np.ndarray) -> list[float | None]:
    """Transfer of dataset j: mean of A[i][j] over tasks i < j (None for the first dataset)."""
    acc = _check_matrix(acc)
    out: list[float | None] = [None]
    for j in range(1, acc.shape[1]):
        rows = acc[: min(j, acc.shape[0]), j]
        out.append(float(rows.mean()) if rows.size else None)
    return out


def avg_per_dataset(acc: np.ndarray) -> list[float]:
    """Avg of dataset j: mean of its column over all rows."""
    return [float(v) for v in _check_matrix(acc).mean(axis=0)]


def last_per_dataset(acc: np.ndarray) -> list[float]:
    """Last of dataset j: its accuracy after the final task."""
    return [float(v) for v in _check_matrix(acc)[-1]]


def mtil_metrics(acc: np.ndarray, names: Sequence[str]) -> dict:
    """Per-dataset and mean Transfer / Avg / Last; means are taken before rounding, then rounded to 0.1."""
    acc = _check_matrix(acc)
    if len(names) != acc.shape[1]:
        raise ValueError(f"{len(names)} dataset names for a matrix with {acc.shape[1]} columns")
    tr, av, la = transfer_per_dataset(acc), avg_per_dataset(acc), last_per_dataset(acc)
    tr_vals = [t for t in tr if t is not None]
    return {
        "transfer": round1(float(np.mean(tr_vals))) if tr_vals else None,
        "avg": round1(float(np.mean(av))),
        "last": round1(float(np.mean(la))),
        "per_dataset": {
            n: {"transfer": round1(t), "avg": round1(a), "last": round1(z)}
            for n, t, a, z in zip(names, tr, av, la, strict=True)
        },
    }


def cil_metrics(step_accuracies: Sequence[float]) -> dict:
    """Class-incremental Avg (mean over steps of accuracy on all seen classes) and Last."""
    a = np.asarray(step_accuracies, dtype=np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError("need a non-empty list of finite step accuracies")
    return {"avg": round(float(a.mean()), 2), "last": round(float(a[-1]), 2), "steps": int(a.size)}


def cil_forgetting(R: np.ndarray, k: int) -> float:
    """Forgetting after k steps, as continuum's Logger reports it (the reference logs it with it).

    (1/(k-1)) * sum over j = 0..k-3 of (max over l = j..k-3 of R[l][j]) - R[k-1][j]; 0 for k <= 1. As continuum's,
    the sum and the max leave out step k-2, yet the mean divides by k-1.
    """
    if k <= 1:
        return 0.0
    total = sum(float(np.max(R[j : k - 2, j])) - float(R[k - 1, j]) for j in range(k - 2))
    return total / (k - 1)


def cil_backward_transfer(R: np.ndarray, k: int) -> float:
    """Backward transfer after k steps, as continuum's Logger: sum over i = 1..k-1, j = 0..i-2 of R[i][j] - R[j][j],
    divided by k(k-1)/2 (continuum's inner range also leaves out j = i-1); 0 for k <= 1."""
    if k <= 1:
        return 0.0
    total = sum(float(R[i, j] - R[j, j]) for i in range(1, k) for j in range(i - 1))
    return total / (k * (k - 1) / 2)


def cil_run_metrics(accuracy: Sequence[float], R: np.ndarray) -> dict:
    """Avg, Last, forgetting and BWT of a class-incremental run, and their values after every step.

    accuracy[i]: top-1 (%) on all classes seen after step i; R[i][j]: top-1 (%) on step j's classes after step i.
    Rounded to 2 decimals, as the reference logs them.
    """
    a = np.asarray(accuracy, dtype=np.float64)
    R = np.asarray(R, dtype=np.float64)
    T = len(a)
    if T == 0 or R.shape[0] < T or R.shape[1] < T or not np.all(np.isfinite(a)):
        raise ValueError(f"need the accuracy after every step and a {T}x{T} matrix of per-step accuracies")
    for i in range(T):
        if not np.all(np.isfinite(R[i, : i + 1])):
            raise ValueError(f"step {i}: the accuracy on the classes of steps 0..{i} is missing")
    per_step = [
        {
            "step": k - 1,
            "accuracy": round(float(a[k - 1]), 2),
            "avg": round(float(a[:k].mean()), 2),
            "forgetting": round(cil_forgetting(R, k), 2),
            "bwt": round(cil_backward_transfer(R, k), 2),
        }
        for k in range(1, T + 1)
    ]
    last = per_step[-1]
    return {"avg": last["avg"], "last": last["accuracy"], "forgetting": last["forgetting"], "bwt": last["bwt"],
            "per_step": per_step}


def cil_csv_text(accuracy: Sequence[float], R: np.ndarray) -> str:
    """ACC.csv: step,accuracy,task_0..task_{T-1}, one row per step (task_j empty for j > i), percentages."""
    T = len(accuracy)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step", "accuracy", *[f"task_{j}" for j in range(T)]])
    for i in range(T):
        w.writerow([i, f"{accuracy[i]:.4f}", *[f"{R[i, j]:.4f}" if j <= i else "" for j in range(T)]])
    return buf.getvalue()


def read_cil_csv(path: str | Path) -> tuple[list[float], np.ndarray]:
    """Read ACC.csv (see cil_csv_text); refuses another header, a missing value at or below the diagonal, a value
    above it, and accuracies outside [0, 100]."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an accuracy CSV")
    rows = [r for r in csv.reader(io.StringIO(path.read_text())) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty file (expected the header step,accuracy,task_0,...)")
    header = [c.strip() for c in rows[0]]
    T = len(rows) - 1
    want = ["step", "accuracy", *[f"task_{j}" for j in range(T)]]
    if header != want:
        raise ValueError(f"{path}: header {header} is not {want} (one row per step)")
    acc, R = [], np.full((T, T), np.nan)
    for i, r in enumerate(rows[1:]):
        if len(r) != len(header) or r[0].strip() != str(i):
            raise ValueError(f"{path}: line {i + 2} is not step {i} with {len(header)} values")
        try:
            acc.append(float(r[1]))
            for j in range(T):
                cell = r[2 + j].strip()
                if j <= i:
                    R[i, j] = float(cell)
                elif cell:
                    raise ValueError(f"task_{j} after step {i} (a step not yet learnt) must be empty")
        except ValueError as e:
            raise ValueError(f"{path}: line {i + 2}: {e}") from None
    vals = np.concatenate([np.asarray(acc), R[np.isfinite(R)]])
    if np.any(vals < 0) or np.any(vals > 100):
        raise ValueError(f"{path}: accuracies must be percentages in [0, 100]")
    return acc, R


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_matrix_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read MATRIX.csv: a header of dataset names in training order, then one row per task (percent)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not an accuracy matrix (a CSV file)")
    text = path.read_text()
    if not text.strip():
        raise ValueError(f"{path} is empty: an accuracy matrix has a header row of dataset names, then a row per task")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ValueError(f"{path}: needs a header row of dataset names and at least one row of accuracies")
    header = [c.strip() for c in rows[0]]
    if all(_is_number(c) for c in header):
        raise ValueError(
            f"{path}: the first row holds numbers, not dataset names: the file has no header row (its first "
            "row must name the datasets in training order)"
        )
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: duplicate dataset names in the header")
    values = []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise ValueError(f"{path}: line {i} has {len(r)} values, the header has {len(header)} names")
        try:
            values.append([float(c) for c in r])
        except ValueError as e:
            raise ValueError(f"{path}: line {i}: {e}") from None
    acc = np.asarray(values)
    if np.any(acc < 0) or np.any(acc > 100):
        raise ValueError(f"{path}: accuracies must be percentages in [0, 100]")
    return header, acc


# ---------------------------------------------------------------- does the matrix fit its protocol?
# One check per setting: `check_mtil_matrix` for MTIL (a square matrix whose header is an order of a protocol).
# A class-incremental matrix (`metrics --cil`) gets its own check beside it; both end in `check_rows`.

PROTOCOLS = ("mtil", "mini")


def known_orders(benchmark: str | None = None, protocol: str | Path | None = None) -> dict[tuple[str, str], list[str]]:
    """(benchmark, order) -> dataset names in training order: of a user's protocol file, of one benchmark's
    packaged protocol, or of all of them."""
    from .protocol import load_protocol

    if protocol is not None:
        return {(str(protocol), o): list(names) for o, names in load_protocol("mtil", protocol)["orders"].items()}
    return {
        (b, o): list(names)
        for b in ([benchmark] if benchmark else PROTOCOLS)
        for o, names in load_protocol(b)["orders"].items()
    }


def _scope(benchmark: str | None, protocol: str | Path | None = None) -> str:
    if protocol is not None:
        return f"the protocol {protocol}"
    return f"the {benchmark} protocol" if benchmark else f"the {' or '.join(PROTOCOLS)} protocols"


def _listing(orders: dict[tuple[str, str], list[str]]) -> str:
    return "; ".join(f"{b} {o}: {','.join(names)}" for (b, o), names in orders.items())


def check_rows(path: str | Path, acc: np.ndarray, tasks: int, setting: str) -> None:
    """One row per task, after each task in training order: no more (another run's rows?), no fewer (unfinished)."""
    if acc.shape[0] != tasks:
        why = "an unfinished run" if acc.shape[0] < tasks else "rows beyond the last task"
        raise ValueError(
            f"{path}: {acc.shape[0]} rows for the {tasks} tasks of {setting} ({why}?); an accuracy matrix has "
            "one row per task, the accuracies after that task"
        )


def check_mtil_matrix(
    path: str | Path,
    names: list[str],
    acc: np.ndarray,
    *,
    order: str | None = None,
    benchmark: str | None = None,
    protocol: str | Path | None = None,
) -> tuple[str, str]:
    """The (benchmark, order) whose datasets the header names, in their order; the matrix must be square.

    Without `order` (and `benchmark`), every order of every packaged protocol is a candidate (with `protocol`,
    every order of that file); none matching is an error.
    """
    orders = known_orders(benchmark, protocol)
    scope = _scope(benchmark, protocol)
    candidates = {k: v for k, v in orders.items() if order is None or k[1] == order}
    if not candidates:
        raise ValueError(f"{path}: {scope} has no order {order!r} ({_listing(orders)})")
    known = {n for v in orders.values() for n in v}
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        raise ValueError(
            f"{path}: {listed} {'is no dataset' if len(unknown) == 1 else 'are no datasets'} of {scope} "
            f"(its orders: {_listing(candidates)})"
        )
    match = [k for k, v in candidates.items() if v == names]
    if not match:
        same = [f"{b} {o}" for (b, o), v in candidates.items() if sorted(v) == sorted(names)]
        hint = f": it holds the datasets of {' and '.join(same)} in another order" if same else ""
        wanted = f"the dataset order of {order}" if order else f"an order of {scope}"
        raise ValueError(
            f"{path}: the header {','.join(names)} is not {wanted}{hint} "
            f"(no order matches; known: {_listing(candidates)})"
        )
    b, o = match[0]
    check_rows(path, acc, len(names), f"{b} {o}")
    return b, o


def matrix_csv_text(names: Sequence[str], acc: np.ndarray) -> str:
    """The CSV text of a matrix in the format read_matrix_csv reads (the caller writes it atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(names))
    for row in np.asarray(acc):
        w.writerow([f"{v:.4f}" for v in row])
    return buf.getvalue()


def format_metrics(m: dict) -> str:
    """A plain-text table: one line per dataset, then the mean."""

    def f(v):
        return "   -" if v is None else f"{v:5.1f}"

    lines = [f"{'dataset':<16} {'Transfer':>8} {'Avg':>6} {'Last':>6}"]
    for n, d in m["per_dataset"].items():
        lines.append(f"{n:<16} {f(d['transfer']):>8} {f(d['avg']):>6} {f(d['last']):>6}")
    lines.append(f"{'mean':<16} {f(m['transfer']):>8} {f(m['avg']):>6} {f(m['last']):>6}")
    return "\n".join(lines)


def cil_accuracy_matrix(evals: Sequence[dict], num_steps: int) -> tuple[list[float], np.ndarray]:
    """From the evaluations after each step: the accuracy on all seen classes per step, and R[i][j] (%) = accuracy
    on step j's classes after step i (NaN for j > i)."""
    acc, R = [], np.full((num_steps, num_steps), np.nan)
    for i, ev in enumerate(evals):
        r = ev["results"][-1] if ev.get("step") is not None else ev["results"][i]
        if r["after_step"] != i:
            raise ValueError(f"evaluation {i} is of step {r['after_step']}")
        acc.append(r["accuracy"])
        R[i, : len(r["per_step"])] = [np.nan if v is None else v for v in r["per_step"]]
    return acc, R
