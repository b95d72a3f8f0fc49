"""Transfer / Avg / Last on known matrices, and the `metrics` command."""

import csv
import json

import numpy as np
import pytest

from moe_adapters.cli import main
from moe_adapters.metrics import cil_metrics, mtil_metrics, read_matrix_csv, round1
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
