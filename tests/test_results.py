"""Tables, metrics.json, cost accounting, the ledger and the figures, on small inputs built by hand."""

import csv
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from moe_adapters.fsutil import write_json
from moe_adapters.metrics import mtil_metrics, round1
from moe_adapters.protocol import load_protocol, paper_numbers
from moe_adapters.reporting import figures
from moe_adapters.reporting.costs import costs_csv, format_bytes, format_seconds, read_costs, stage_summary
from moe_adapters.reporting.steps import ablation_step, ledger_step
from moe_adapters.reporting.tables import (
    DIFF,
    build_table,
    commits,
    devices,
    ledger_markdown,
    ledger_rows,
    markdown_table,
    paper_means,
    parse_run,
    run_metrics,
    run_name,
    table_csv,
    table_markdown,
)

ACC = np.array([[80.0, 10.0, 20.0], [70.0, 90.0, 30.0], [60.0, 85.0, 95.0]])
NAMES = ["a", "b", "c"]


def cost(stage, item, wall, mem, params=None, device="cpu"):
    return {
        "stage": stage, "item": item, "trainable_parameters": params, "wall_seconds": wall,
        "peak_memory_bytes": mem, "device": device, "config_hash": "abc123", "commit": "deadbee",
    }


COSTS = [
    cost("training", "task 0: a", 10.0, 3 << 20, 1000),
    cost("training", "task 1: b", 20.5, 5 << 20, 900),
    cost("autoencoders", "autoencoder 0: Pretrain", 1.5, 2 << 20, 50),
    cost("evaluation", "evaluate task 0: a", 0.25, None),
]
# shared by every run of the benchmark, made under another config: not the run's provenance
PRETRAIN = {**cost("pretraining", "pretrain", 60.0, 9 << 20, 5000, "cuda"), "config_hash": "other", "commit": "0ld"}


def test_metrics_json_is_the_metrics_command_plus_zero_shot_means():
    m = run_metrics(NAMES, ACC, [40.0, 50.0, 70.0])
    assert {k: m[k] for k in ("transfer", "avg", "last", "per_dataset")} == mtil_metrics(ACC, NAMES)
    # zero-shot CLIP never trains: transfer is the mean over datasets 2.. of its accuracy, avg and last the mean
    assert m["zero_shot"] == {"transfer": 60.0, "avg": round1(160 / 3), "last": round1(160 / 3)}
    assert "zero_shot" not in run_metrics(NAMES, ACC)


def test_run_names_round_trip():
    for args in [("mtil", "order1", 0), ("mtil", "order2", 5), ("mini", "order1", 0)]:
        assert parse_run(run_name(*args)) == args
        assert parse_run(run_name(*args) + "-experts8") == args  # a variant of the setting
    with pytest.raises(ValueError):
        parse_run("mtil-order1")


def provenance(run, config="abc123", deviations=None, costs=COSTS):
    from moe_adapters.config import format_deviations

    return {"run": run, "setting": run.split("-")[0], "variant": None, "config_hash": config,
            "commit": commits(costs), "device": devices(costs), "deviations": deviations or {},
            "deviations_text": format_deviations(deviations or {})}


def metrics_json(path, run, names, acc, zs, paper=None, **prov):
    m = {**run_metrics(names, acc, zs), "paper": paper, "provenance": provenance(run, **prov)}
    write_json(path, m)
    return m


def test_mtil_table_and_ledger_put_the_paper_beside_ours(tmp_path):
    names = load_protocol("mtil")["orders"]["order1"]
    rng = np.random.default_rng(0)
    acc = np.round(rng.uniform(20, 95, (11, 11)), 4)
    zs = list(np.round(rng.uniform(20, 90, 11), 2))
    rows = build_table(names, acc, zs, benchmark="mtil", order="order1", shots=0)
    paper = paper_numbers()["mtil_order1_full_shot"]["MoE-Adapters"]
    by = {(r[0], r[1]): r[2:] for r in rows}
    cols = paper_numbers()["columns"]
    assert by[("MoE-Adapters (paper)", "Avg")] == [*[paper["avg"][cols.index(n)] for n in names], paper["mean"]["avg"]]
    ours, theirs, diff = by[("MoE-Adapters (ours)", "Last")], by[("MoE-Adapters (paper)", "Last")], by[(DIFF, "Last")]
    assert diff == [round1(a - b) for a, b in zip(ours, theirs, strict=True)]
    assert by[(DIFF, "Transfer")][0] is None  # the first dataset has no transfer, in either

    table = tmp_path / "mtil_order1_table.csv"
    prov = provenance("mtil_order1", costs=[PRETRAIN, *COSTS])
    table.write_text(table_csv(names, rows, prov))
    header, *body = list(csv.reader(table.open()))
    assert header[-3:] == ["config", "commit", "deviations"]
    assert {tuple(r[-3:]) for r in body} == {("abc123", "deadbee", "faithful to the reference")}
    m = metrics_json(tmp_path / "m.json", "mtil_order1", names, acc, zs, paper_means("mtil", "order1", 0),
                     costs=[PRETRAIN, *COSTS])
    ledger = ledger_rows(m)
    last = next(r for r in ledger if r["method"] == "MoE-Adapters" and r["metric"] == "Last")
    assert last["paper"] == paper["mean"]["last"] and last["ours"] == ours[-1]
    assert last["difference"] == round1(ours[-1] - paper["mean"]["last"])
    # provenance of the run's own steps: pretraining, shared by every run, is not it
    assert (last["config"], last["commit"], last["device"]) == ("abc123", "deadbee", "cpu")
    md = table_markdown(names, rows, run="mtil_order1", provenance=prov, acc=acc, costs=COSTS)
    assert "| MoE-Adapters (paper) | Avg | " + " | ".join(f"{v:.1f}" for v in by[("MoE-Adapters (paper)", "Avg")]) in md
    assert "Deviations: faithful to the reference." in md


def test_mini_has_no_paper_numbers_and_says_so(tmp_path):
    rows = build_table(NAMES, ACC, [40.0, 50.0, 70.0], benchmark="mini", order="order1", shots=0)
    assert [r[0] for r in rows] == ["MoE-Adapters (ours)"] * 3 + ["Zero-shot CLIP (ours)"] * 3
    devs = {"ddas.threshold": {"value": 0.5, "reference": 0.0655}}
    md = table_markdown(NAMES, rows, run="mini_order1", provenance=provenance("mini_order1", deviations=devs), acc=ACC)
    assert "no published numbers" in md and "(paper)" not in md
    assert "Deviations: ddas.threshold=0.5 (reference: 0.0655)." in md
    m = metrics_json(tmp_path / "m.json", "mini_order1", NAMES, ACC, [40.0, 50.0, 70.0], None, deviations=devs)
    ledger = ledger_rows(m)
    assert all(r["paper"] is None and r["difference"] is None for r in ledger)
    text = ledger_markdown(ledger, ["mini_order1"])
    assert "| mini_order1 | MoE-Adapters | Last | — | 80.0 | — |" in text
    assert "ddas.threshold=0.5 (reference: 0.0655)" in text
    assert "no published numbers: the mini benchmark is this project's own" in text


def test_ledger_refuses_a_file_that_is_not_a_runs_metrics(tmp_path):
    bad = tmp_path / "m.json"
    write_json(bad, mtil_metrics(ACC, NAMES))  # `moe-adapters metrics --json`, without the run's provenance
    with pytest.raises(ValueError, match="not a run's metrics.json"):
        ledger_step([bad], tmp_path / "REPRODUCIBILITY.md")
    assert not (tmp_path / "REPRODUCIBILITY.md").exists()


def test_ablation_table_puts_every_variant_beside_the_baseline(tmp_path):
    base = metrics_json(tmp_path / "b.json", "mini_order1", NAMES, ACC, [40.0, 50.0, 70.0])
    worse = np.clip(ACC - 10, 0, 100)
    metrics_json(tmp_path / "v.json", "mini_order1-thr0.5", NAMES, worse, [40.0, 50.0, 70.0], config="def456",
                 deviations={"ddas.threshold": {"value": 0.5, "reference": 0.0655}})
    metrics_json(tmp_path / "s.json", "mini_order1-seed43", NAMES, ACC + 1, [40.0, 50.0, 70.0], config="789abc",
                 deviations={"train.seed": {"value": 43, "reference": 42}})
    ablation_step(tmp_path / "b.json", [tmp_path / "v.json", tmp_path / "s.json"], tmp_path / "a.csv", tmp_path / "a.md",
                  title_="t", summary=True)
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert [r["run"] for r in rows] == ["mini_order1", "mini_order1-thr0.5", "mini_order1-seed43", "mean ± std over 3 runs"]
    assert rows[0]["changed"] == "baseline" and rows[1]["changed"] == "ddas.threshold=0.5"
    assert float(rows[1]["last"]) == round1(float(np.mean(worse[-1]))) and float(rows[1]["d_last"]) == round1(
        round1(float(np.mean(worse[-1]))) - base["last"]
    )
    lasts = [base["last"], float(rows[1]["last"]), float(rows[2]["last"])]
    assert rows[3]["last"] == f"{np.mean(lasts):.1f} ± {np.std(lasts, ddof=1):.1f}"
    assert "| mini_order1-thr0.5 | ddas.threshold=0.5 |" in (tmp_path / "a.md").read_text()


def test_markdown_table_escapes_pipes_and_aligns_numbers_right():
    text = markdown_table(["name", "value"], [["a|b", 1.25], ["c", None]])
    assert text.splitlines() == ["| name | value |", "| --- | ---: |", "| a\\|b | 1.2 |", "| c | — |"]
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [], "l")


def test_cost_table_round_trips_and_sums_per_stage(tmp_path):
    path = tmp_path / "costs.csv"
    path.write_text(costs_csv(COSTS))
    assert read_costs(path) == COSTS
    summary = {s["stage"]: s for s in stage_summary(COSTS)}
    assert list(summary) == ["training", "autoencoders", "evaluation"]  # workflow order, absent stages left out
    assert summary["training"]["wall_seconds"] == 30.5
    assert summary["training"]["peak_memory_bytes"] == 5 << 20
    assert summary["training"]["trainable_parameters"] == (900, 1000)
    assert summary["evaluation"]["peak_memory_bytes"] is None
    (tmp_path / "bad.csv").write_text("stage,item\ntraining,x\n")
    with pytest.raises(ValueError, match="not a cost table"):
        read_costs(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    "seconds,text", [(None, "—"), (42.34, "42.3 s"), (324, "5 min 24 s"), (7380, "2 h 03 min")]
)
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_format_bytes():
    assert (format_bytes(512), format_bytes(3 << 20), format_bytes(int(1.5 * (1 << 30)))) == ("512 B", "3.00 MiB", "1.50 GiB")


ROUTING = pd.read_csv(
    io.StringIO(
        "after_task,trained_on,dataset,route,batches\n"
        "0,a,a,zero-shot,3\n0,a,a,a,1\n0,a,b,zero-shot,2\n"
        "1,b,a,a,4\n1,b,b,b,1\n1,b,b,zero-shot,1\n"
    )
)


def test_routing_shares_per_task():
    shares = figures.routing_shares(ROUTING)
    assert sorted(shares) == [0, 1]
    assert list(shares[0].columns) == ["zero-shot", "a", "b"]  # zero-shot first, then routes in training order
    assert shares[0].loc["a"].tolist() == [0.75, 0.25, 0.0]
    assert shares[0].loc["b"].tolist() == [1.0, 0.0, 0.0]
    assert shares[1].loc["b"].tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(ValueError, match="routing table needs columns"):
        figures.routing_shares(ROUTING.drop(columns="batches"))


def test_figures_are_written_as_png(tmp_path):
    out = [
        figures.save_figure(figures.accuracy_matrix_figure(NAMES, ACC, title="t"), tmp_path / "m.png", 110),
        figures.save_figure(figures.accuracy_curves_figure(NAMES, ACC, [40, 50, 70], title="t"), tmp_path / "c.png", 110),
        figures.save_figure(figures.routing_figure(ROUTING, title="t"), tmp_path / "r.png", 110),
        figures.save_figure(
            figures.expert_counts_figure({"visual": np.array([[5, 0, 9], [1, 2, 3]])}, {"visual": np.eye(2, 3)}, title="t"),
            tmp_path / "e.png",
            110,
        ),
    ]
    for path in out:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            assert len(im.convert("L").getcolors(1 << 16)) > 10  # drawn, not blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "e.png", "m.png", "r.png"]  # no temporaries left
    with pytest.raises(ValueError, match="no selection counts"):
        figures.expert_counts_figure({}, title="t")


def test_a_5shot_run_with_1000_iterations_says_so_in_table_and_ledger(tmp_path):
    from moe_adapters.config import load_config
    from moe_adapters.reporting.steps import provenance_of
    from moe_adapters.steps.specs import report_spec

    spec = report_spec(load_config(overrides={"shots": 5, "train": {"iterations": 1000}}))
    prov = provenance_of(spec, COSTS)
    assert spec.run == "mtil_order1_5shot" and spec.deviations == {"train.iterations": {"value": 1000, "reference": 500}}
    names = load_protocol("mtil")["orders"]["order1"]
    acc = np.full((11, 11), 50.0)
    rows = build_table(names, acc, [40.0] * 11, benchmark="mtil", order="order1", shots=5)
    table = table_csv(names, rows, prov)
    assert all(line.endswith(",train.iterations=1000 (reference: 500)") for line in table.splitlines()[1:])
    m = {**run_metrics(names, acc, [40.0] * 11), "paper": paper_means("mtil", "order1", 5), "provenance": prov}
    write_json(tmp_path / "m.json", m)
    ledger_step([tmp_path / "m.json"], tmp_path / "REPRODUCIBILITY.md", tmp_path / "ledger.csv")
    assert "train.iterations=1000 (reference: 500)" in (tmp_path / "REPRODUCIBILITY.md").read_text()
    assert {r["deviations"] for r in csv.DictReader((tmp_path / "ledger.csv").open())} == {
        "train.iterations=1000 (reference: 500)"
    }
