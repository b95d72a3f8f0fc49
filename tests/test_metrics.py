"""Transfer / Avg / Last on known matrices, and the `metrics` command."""

import csv
import json

import numpy as np
import pytest

from moe_adapters.cli import main
from moe_adapters.metrics import (
    cil_csv_text,
    cil_metrics,
    cil_run_metrics,
    mtil_metrics,
    read_matrix_csv,
    round1,
)
from moe_adapters.protocol import load_protocol, paper_numbers


def test_small_matrix_by_hand():
    acc = np.array([[80.0, 10.0, 20.0], [70.0, 90.0, 30.0], [60.0, 85.0, 95.0]])
    m = mtil_metrics(acc, ["a", "b", "c"])
    assert m["per_dataset"]["a"] == {"transfer": None, "avg": 70.0, "last": 60.0}
    assert m["per_dataset"]["b"] == {"transfer": 10.0, "avg": round1(185 / 3), "last": 85.0}
    assert m["per_dataset"]["c"] == {"transfer": 25.0, "avg": round1(145 / 3), "last": 95.0}
    assert m["transfer"] == 17.5
    assert m["avg"] == round1((70 + 185 / 3 + 145 / 3) / 3)
    assert m["last"] == 80.0


def test_rounding_is_half_up_on_the_decimal_value():
    assert round1(65.35) == 65.4
    assert round1(65.25) == 65.3
    assert round1(69.44999) == 69.4


def write_zero_shot(path, order):
    p = paper_numbers()
    cols = p["columns"]
    row = p["mtil_order1_full_shot"]["Zero-shot CLIP"]["last"]
    names = load_protocol("mtil")["orders"][order]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for _ in range(11):
            w.writerow([row[cols.index(n)] for n in names])


@pytest.mark.parametrize("order,want", [("order1", (69.4, 65.3, 65.3)), ("order2", (65.4, 65.3, 65.3))])
def test_zero_shot_row_repeated_gives_paper_means(tmp_path, capsys, order, want):
    path = tmp_path / "m.csv"
    write_zero_shot(path, order)
    assert main(["metrics", str(path), "--order", order, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["transfer"], out["avg"], out["last"]) == want
    assert len(out["per_dataset"]) == 11
    if order == "order1":
        paper = paper_numbers()["mtil_order1_full_shot"]["Zero-shot CLIP"]
        assert [d["avg"] for d in out["per_dataset"].values()] == paper["avg"]
        assert [d["transfer"] for d in out["per_dataset"].values()] == paper["transfer"]


def test_header_must_match_the_order(tmp_path, capsys):
    path = tmp_path / "m.csv"
    write_zero_shot(path, "order2")
    assert main(["metrics", str(path), "--order", "order1"]) == 2
    assert "not the dataset order of order1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,msg",
    [
        ("a,b\n1,2,3\n", "line 2 has 3 values"),
        ("a,b\n1,x\n", "line 2"),
        ("a,b\n", "at least one row"),
        ("a,b\n1,200\n", "percentages"),
    ],
)
def test_bad_matrix_files_are_refused_with_the_reason(tmp_path, text, msg):
    p = tmp_path / "m.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=msg):
        read_matrix_csv(p)


def test_cil_avg_and_last():
    m = cil_metrics([90.0, 80.0, 70.0])
    assert m == {"avg": 80.0, "last": 70.0, "steps": 3}
    with pytest.raises(ValueError):
        cil_metrics([])


# The reference's own committed log of CIFAR100 in 10 steps (cil/experiments/class/cifar100_10-10-MoE-Adapters/
# metrics.json): accuracy on all seen classes, and accuracy per step's classes, after each step; then continuum's
# average incremental accuracy, forgetting and backward transfer, as it logged them.
REF_ACC = [98.4, 94.7, 89.27, 85.38, 83.56, 83.25, 81.39, 79.74, 78.86, 77.52]
REF_PER_TASK = [
    [98.4], [96.2, 93.2], [90.4, 90.8, 86.6], [85.2, 88.5, 78.6, 89.2], [82.4, 88.0, 72.2, 83.3, 91.9],
    [80.2, 84.6, 71.2, 82.9, 89.0, 91.6], [81.1, 83.0, 68.5, 79.5, 89.7, 89.2, 78.7],
    [79.0, 79.9, 66.5, 76.5, 84.6, 88.2, 77.2, 86.0], [80.8, 79.1, 61.9, 76.5, 82.7, 86.1, 71.3, 83.7, 87.6],
    [80.7, 77.3, 54.9, 79.1, 81.0, 87.3, 67.4, 81.8, 85.8, 79.9],
]
REF_AVG = [98.4, 96.55, 94.12, 91.94, 90.26, 89.09, 87.99, 86.96, 86.06, 85.21]
REF_FORGETTING = [0.0, 0.0, 4.0, 5.966667, 8.9, 9.7, 9.583333, 10.885714, 11.4, 11.788889]
REF_BWT = [0.0, 0.0, -2.67, -4.32, -6.15, -7.33, -7.98, -8.7, -9.3, -9.8]


def ref_matrix():
    R = np.full((10, 10), np.nan)
    for i, row in enumerate(REF_PER_TASK):
        R[i, : len(row)] = row
    return R


def test_cil_metrics_are_continuums_on_the_references_own_log():
    m = cil_run_metrics(REF_ACC, ref_matrix())
    assert [s["avg"] for s in m["per_step"]] == REF_AVG
    assert [s["forgetting"] for s in m["per_step"]] == [round(f, 2) for f in REF_FORGETTING]
    assert [s["bwt"] for s in m["per_step"]] == REF_BWT
    assert (m["avg"], m["last"]) == (85.21, 77.52)  # paper_numbers.yaml cil.cifar100_10_steps
    assert (m["avg"], m["last"]) == tuple(paper_numbers()["cil"]["cifar100_10_steps"][k] for k in ("avg", "last"))


def test_cil_metrics_on_a_small_matrix_by_hand():
    R = np.array([[90.0, np.nan, np.nan], [60.0, 80.0, np.nan], [50.0, 70.0, 100.0]])
    m = cil_run_metrics([90.0, 70.0, 80.0], R)
    # forgetting after 3 steps: (max(R[0..0][0]) - R[2][0]) / 2 = (90 - 50) / 2; BWT: (R[2][0] - R[0][0]) / 3
    assert m["per_step"][2] == {"step": 2, "accuracy": 80.0, "avg": 80.0, "forgetting": 20.0, "bwt": round(-40 / 3, 2)}
    assert m["per_step"][1]["forgetting"] == 0.0 and m["per_step"][1]["bwt"] == 0.0  # continuum skips step k-2


def test_cil_metrics_cli_reads_the_accuracy_csv(tmp_path, capsys):
    path = tmp_path / "ACC.csv"
    path.write_text(cil_csv_text(REF_ACC, ref_matrix()))
    assert main(["metrics", str(path), "--cil", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"avg", "last", "forgetting", "bwt", "per_step"}
    assert (out["avg"], out["last"], out["bwt"]) == (85.21, 77.52, -9.8)
    assert out["per_step"][3] == {"step": 3, "accuracy": 85.38, "avg": 91.94, "forgetting": 5.97, "bwt": -4.32}
    bad = tmp_path / "bad.csv"
    bad.write_text("step,accuracy,task_0,task_1\n0,90,90,50\n1,80,70,80\n")  # a value above the diagonal
    assert main(["metrics", str(bad), "--cil"]) == 2
    assert "must be empty" in capsys.readouterr().err
