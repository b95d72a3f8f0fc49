"""Every CLI step of a run, chained by hand on a tiny run (the workflow chains the same commands)."""

import csv
import json
import platform

import pytest

from moe_adapters.cli import main
from moe_adapters.fsutil import read_json
from moe_adapters.steps.record import cost, cpu_model, device_name


def run(*args):
    assert main(list(args)) == 0, args


@pytest.fixture
def trained_run(toy_run):
    root, cfg = toy_run
    r = root / "results"
    for k in range(3):
        run(
            "train-autoencoder",
            "-c",
            str(cfg),
            "--index",
            str(k),
            "--out",
            str(r / f"ae_{k}.safetensors"),
            "--no-progress",
        )
    run("train-task", "-c", str(cfg), "--task", "0", "--out", str(r / "task_0.safetensors"), "--no-progress")
    run(
        "train-task",
        "-c",
        str(cfg),
        "--task",
        "1",
        "--prev",
        str(r / "task_0.safetensors"),
        "--out",
        str(r / "task_1.safetensors"),
        "--no-progress",
    )
    aes = [str(r / f"ae_{k}.safetensors") for k in range(3)]
    for d in ("Red", "Green"):
        run(
            "features",
            "-c",
            str(cfg),
            "--dataset",
            d,
            "--autoencoders",
            *aes,
            "--out",
            str(r / "features" / f"{d}.safetensors"),
        )
    return root, cfg, r


def test_a_tiny_run_end_to_end(trained_run, capsys):
    root, cfg, r = trained_run
    run("evaluate", "-c", str(cfg), "--features-dir", str(r / "features"), "--out", str(r / "eval_zs.json"))
    for t in (0, 1):
        run(
            "evaluate",
            "-c",
            str(cfg),
            "--checkpoint",
            str(r / f"task_{t}.safetensors"),
            "--features-dir",
            str(r / "features"),
            "--out",
            str(r / f"eval_{t}.json"),
        )
    zs = read_json(r / "eval_zs.json")
    assert zs["task"] is None and set(zs["results"]) == {"Red", "Green"}
    assert all(v["batch_routes"] == {"-1": 5} for v in zs["results"].values())  # 40 images, batches of 8
    e1 = read_json(r / "eval_1.json")
    assert e1["task"] == 1 and e1["trained_on"] == "Green"
    assert e1["results"]["Red"]["batch_routes"] == {"0": 5}
    assert e1["results"]["Green"]["batch_routes"] == {"1": 5}
    assert e1["cost"]["device"] == device_name("cpu") and e1["cost"]["wall_seconds"] > 0
    run(
        "matrix",
        "-c",
        str(cfg),
        "--evals",
        str(r / "eval_0.json"),
        str(r / "eval_1.json"),
        "--out",
        str(r / "matrix.csv"),
        "--routing",
        str(r / "routing.csv"),
    )
    rows = list(csv.reader(open(r / "matrix.csv")))
    assert rows[0] == ["Red", "Green"] and len(rows) == 3
    assert float(rows[2][1]) == pytest.approx(e1["results"]["Green"]["accuracy"], abs=1e-3)
    routing = list(csv.DictReader(open(r / "routing.csv")))
    assert {(x["after_task"], x["dataset"], x["route"]) for x in routing if x["after_task"] == "1"} == {
        ("1", "Red", "Red"),
        ("1", "Green", "Green"),
    }
    capsys.readouterr()
    run("metrics", str(r / "matrix.csv"), "--json", "--protocol", str(root / "protocol.yaml"))
    m = json.loads(capsys.readouterr().out)
    assert m["per_dataset"]["Green"]["last"] == pytest.approx(
        round(e1["results"]["Green"]["accuracy"], 1), abs=0.051
    )


def test_task_checkpoint_records_frozen_set_cost_and_config(trained_run):
    from moe_adapters.checkpoint import load_tensors

    _, _, r = trained_run
    t1, meta = load_tensors(r / "task_1.safetensors")
    t0, _ = load_tensors(r / "task_0.safetensors")
    assert int(t0["frozen_visual"].sum()) == 2 * 2 and int(t1["frozen_visual"].sum()) >= int(
        t0["frozen_visual"].sum()
    )
    assert (t1["frozen_visual"] | t0["frozen_visual"]).equal(t1["frozen_visual"])
    assert meta["cost"]["trainable_parameters"] > 0
    # provenance: the step's own config slice and its hash (what a rerun compares), the commit
    from moe_adapters.config import digest
    from moe_adapters.steps.specs import from_json, to_json

    spec = from_json("task", to_json(meta["spec"]))
    assert meta["config_hash"] == digest(spec) and spec.task == 1 and spec.dataset == "Green" and meta["commit"]


def test_wrong_previous_checkpoint_is_refused(trained_run, capsys):
    _, cfg, r = trained_run
    assert (
        main(
            [
                "train-task",
                "-c",
                str(cfg),
                "--task",
                "1",
                "--prev",
                str(r / "task_1.safetensors"),
                "--out",
                str(r / "x.safetensors"),
                "--no-progress",
            ]
        )
        == 1
    )
    assert "needs task 0" in capsys.readouterr().err
    assert not (r / "x.safetensors").exists()


def test_missing_dataset_fails_fast_with_its_name(toy_run, capsys):
    root, cfg = toy_run
    import shutil

    shutil.rmtree(root / "data" / "Green")
    assert (
        main(["train-autoencoder", "-c", str(cfg), "--index", "2", "--out", str(root / "ae.safetensors")])
        == 2
    )
    assert "Green is not prepared" in capsys.readouterr().err


def test_a_cpu_step_records_the_cpu_model_as_its_device(tmp_path):
    """On a CPU the numbers follow the CPU's kernels, so its model is part of the device every cost names."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n")
    assert cpu_model.__wrapped__(info) == "AMD EPYC 9R14 96-Core Processor"
    assert cpu_model.__wrapped__(tmp_path / "missing") == platform.processor().strip()
    assert device_name("cpu") == (f"cpu ({cpu_model()})" if cpu_model() else "cpu")
    assert cost(0.0, "cpu")["device"] == device_name("cpu")
