"""Class-incremental learning (SPEC 8): the dataset's view (label order, names), steps that train only their own
classes, evaluation on exactly the classes seen so far, and a tiny run end to end through the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from moe_adapters.cli import main
from moe_adapters.config import load_config
from moe_adapters.data.cil import CILView, remap_table, tinyimagenet_view
from moe_adapters.data.prepared import write_prepared
from moe_adapters.fsutil import read_json
from moe_adapters.protocol import paper_numbers
from moe_adapters.steps.cil import step_task
from moe_adapters.steps.specs import cil_evaluate_spec, cil_step_spec

from .conftest import toy_images

ORDER = [4, 5, 0, 1, 6, 7, 2, 3]  # a fixed class order over the 8 classes of two toy datasets


def test_class_order_remapping():
    remap = remap_table(ORDER, 8)
    assert remap.tolist() == [2, 3, 6, 7, 0, 1, 4, 5]  # label 4 comes first, so it becomes 0
    assert [ORDER[k] for k in remap] == list(range(8))
    with pytest.raises(ValueError, match="permutation"):
        remap_table([0, 0, 1], 3)


@pytest.fixture
def toy_cil(tmp_path):
    """Two prepared toy datasets (four classes each, distinct names), a mini protocol with a class-incremental
    section pooling them in four steps of two classes, and a tiny config."""
    data = tmp_path / "data"
    for i, (name, kind) in enumerate((("A", "red"), ("B", "green"))):
        x, y = toy_images(kind, 64, seed=i)
        t, ty = toy_images(kind, 32, seed=10 + i)
        write_prepared(data / name, name=name, classnames=[f"{name.lower()}{c}" for c in range(4)], templates=["{c}"],
                       test_images=np.ascontiguousarray(t.transpose(0, 3, 1, 2)), test_labels=ty, train_images=x,
                       train_labels=y)
    entry = {"classnames": ["x"], "templates": ["{c}"], "lr_full_shot": 0.01}
    proto = {
        "orders": {"order1": ["A", "B"]},
        "datasets": {"A": entry, "B": entry},
        "generic": ["A"],
        "cil": {
            "pool": ["A", "B"],
            "class_orders": {"mini": ORDER},
            "settings": {"mini_2-2": {"dataset": "mini", "initial_increment": 2, "increment": 2, "batch_size": 8,
                                      "lr": 0.01, "ls": 0.0, "weight_decay": 0.0, "warmup_steps": 2,
                                      "prompt_template": "a bad photo of a {c}.", "epochs_per_step": 1}},
        },
    }
    (tmp_path / "protocol.yaml").write_text(yaml.safe_dump(proto))
    cfg = {
        "benchmark": "mini", "protocol": str(tmp_path / "protocol.yaml"), "data_root": str(data),
        "results_dir": str(tmp_path / "results"), "device": "cpu",
        "model": {"name": "tiny-clip", "pretrained": None},
        "ddas": {"generic_dataset": "A"},
        "cil": {"eval_batch_size": 16},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    view = tmp_path / "view"
    assert main(["prepare-cil", "-c", str(tmp_path / "config.yaml"), "--run", "cil_mini_4steps",
                 "--prepared", str(data / "A"), str(data / "B"), "--out", str(view)]) == 0
    return tmp_path, view


def test_the_mini_view_pools_the_datasets_in_order(toy_cil):
    _, view = toy_cil
    v = CILView(view)
    v.verify()
    assert v.classnames == [f"a{c}" for c in range(4)] + [f"b{c}" for c in range(4)]
    _, labels = v.arrays("train")
    assert sorted(set(labels.tolist())) == list(range(8)) and len(labels) == 128


def test_a_step_trains_only_its_own_classes(toy_cil):
    root, view = toy_cil
    rc = load_config(root / "config.yaml", {"setting": "cil", "cil": {"dataset": "mini", "steps": 4}})
    assert rc.cil.num_steps == 4 and [rc.cil.step_classes(s) for s in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    v = CILView(view)
    _, labels = v.arrays("train")
    for s in range(4):
        spec = cil_step_spec(rc, s)
        task = step_task(spec, v)
        originals = [ORDER[c] for c in spec.classes]  # the classes of step s, as the datasets label them
        assert task.classnames == [v.classnames[o] for o in originals]
        assert task.prompts(0) == [f"a bad photo of a {v.classnames[o]}." for o in originals]
        got = [task.train[i][1] for i in range(len(task.train))]
        assert sorted(set(got)) == [0, 1]  # targets shifted to the step's own classes
        assert len(got) == int(np.isin(labels, originals).sum())  # every training image of them, no other


def test_evaluation_covers_exactly_the_classes_seen(toy_cil):
    root, view = toy_cil
    cfg = str(root / "config.yaml")
    run = ["--run", "cil_mini_4steps"]
    out = root / "out"
    assert main(["train-step", "-c", cfg, *run, "--step", "0", "--view", str(view), "--out", str(out / "s0.safetensors"),
                 "--no-progress"]) == 0
    assert main(["evaluate-step", "-c", cfg, *run, "--step", "0", "--checkpoint", str(out / "s0.safetensors"),
                 "--view", str(view), "--out", str(out / "e0.json")]) == 0
    assert main(["evaluate-step", "-c", cfg, *run, "--view", str(view), "--out", str(out / "zs.json")]) == 0
    _, test_labels = CILView(view).arrays("test")
    remapped = remap_table(ORDER, 8)[test_labels]
    e0 = read_json(out / "e0.json")["results"]
    assert [(r["after_step"], r["classes"], r["total"]) for r in e0] == [(0, 2, int((remapped < 2).sum()))]
    zs = read_json(out / "zs.json")["results"]  # zero-shot CLIP after every step: the same images
    assert [(r["after_step"], r["classes"], r["total"], len(r["per_step"])) for r in zs] == [
        (s, 2 * (s + 1), int((remapped < 2 * (s + 1)).sum()), s + 1) for s in range(4)
    ]


def test_tinyimagenet_follows_wnids_txt_and_the_curated_names(tmp_path):
    from moe_adapters.data import mtil as md

    from .test_mtil_data import build

    pins = md.load_pins()
    build("TinyImageNet", md.raw_root(tmp_path) / "TinyImageNet", pins)  # wnids.txt: n02085620, then n01443537
    prepared = md.prepare_dataset("TinyImageNet", tmp_path / "TinyImageNet", data_root=tmp_path, pins=pins,
                                  image_size=32)
    curated = [("n02085620", "Chihuahua dog"), ("n01443537", "goldfish fish")]
    v = CILView(tinyimagenet_view(prepared, tmp_path / "cil", curated))
    assert v.classnames == ["Chihuahua dog", "goldfish fish"]  # wnids.txt order, not the sorted order
    images, labels = v.arrays("train")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and images.shape[0] == 6 and images.shape[-1] == 3
    # the MTIL prepared folder (autoencoder 0's data) keeps the sorted order, as the reference's mtil code
    assert read_json(prepared / "meta.json")["classnames"] == ["goldfish", "Chihuahua"]
    with pytest.raises(ValueError, match="wnids"):
        tinyimagenet_view(prepared, tmp_path / "cil2", list(reversed(curated)))
    # the real curated list: 200 classes, each wnid once
    from moe_adapters.steps.specs import cil_prepare_spec

    names = cil_prepare_spec(load_config(overrides={"setting": "cil", "cil": {"dataset": "tinyimagenet", "steps": 5}})).curated
    assert len(names) == 200 and len({w for w, _ in names}) == 200 and names[0] == ("n02124075", "Egyptian Mau")


def test_cifar100_names_keep_their_underscores(tmp_path):
    from moe_adapters.data import mtil as md
    from moe_adapters.data.cil import cifar100_view

    from .test_mtil_data import build

    pins = md.load_pins()
    build("CIFAR100", md.raw_root(tmp_path) / "CIFAR100", pins)
    prepared = md.prepare_dataset("CIFAR100", tmp_path / "CIFAR100", data_root=tmp_path, pins=pins, image_size=32)
    v = CILView(cifar100_view(prepared, tmp_path / "cil"))
    assert v.classnames == ["apple", "aquarium_fish", "baby"]
    assert read_json(prepared / "meta.json")["classnames"] == ["apple", "aquarium fish", "baby"]  # MTIL's
    images, _ = v.arrays("test")
    assert images.shape[1:] == (32, 32, 3)  # raw: the reference evaluates with the training crop


@pytest.mark.parametrize(
    "dataset,steps,jobs",
    [("cifar100", 10, 10), ("cifar100", 20, 20), ("cifar100", 50, 50),
     ("tinyimagenet", 5, 6), ("tinyimagenet", 10, 11), ("tinyimagenet", 20, 21)],
)
def test_the_paper_settings_resolve_to_the_references_steps(dataset, steps, jobs):
    rc = load_config(overrides={"setting": "cil", "cil": {"dataset": dataset, "steps": steps}})
    assert rc.cil.num_steps == jobs and rc.setting == f"cil_{dataset}_{steps}steps"
    assert rc.cil.batch_size == (128 if dataset == "cifar100" and steps in (10, 20) else 64)
    assert (rc.cil.lr, rc.cil.warmup, rc.cil.label_smoothing, rc.cil.weight_decay) == (0.001, 30, 0.0, 0.0)
    assert (rc.cil.num_experts, rc.cil.top_k, rc.cil.eval_noise, rc.cil.eval_transform) == (2, 2, True, "train")
    covered = [c for s in range(jobs) for c in rc.cil.step_classes(s)]
    assert covered == list(range(len(rc.cil.class_order)))  # every class once, in order
    spec = cil_evaluate_spec(rc, jobs - 1)
    assert spec.batch_size == 64 and len(spec.step_classes) == jobs


def test_cil_parameter_count_stays_the_papers(capsys):
    assert main(["params", "--setting", "cil", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["moe"] == 4_027_392


def test_a_tiny_run_end_to_end_gives_the_table_and_the_metrics(toy_cil):
    root, view = toy_cil
    cfg, run = str(root / "config.yaml"), ["--run", "cil_mini_4steps"]
    out = root / "run"
    prev, evals = [], []
    for s in range(4):
        ck = out / f"step_{s}.safetensors"
        assert main(["train-step", "-c", cfg, *run, "--step", str(s), "--view", str(view), *prev, "--out", str(ck),
                     "--no-progress"]) == 0
        prev = ["--prev", str(ck)]
        evals.append(str(out / f"e{s}.json"))
        assert main(["evaluate-step", "-c", cfg, *run, "--step", str(s), "--checkpoint", str(ck), "--view", str(view),
                     "--out", evals[-1]]) == 0
    assert main(["evaluate-step", "-c", cfg, *run, "--view", str(view), "--out", str(out / "zs.json")]) == 0
    assert main(["cil-matrix", "-c", cfg, *run, "--evals", *evals, "--out", str(out / "ACC.csv")]) == 0
    assert main(["cil-table", "-c", cfg, *run, "--accuracy", str(out / "ACC.csv"), "--zero-shot", str(out / "zs.json"),
                 "--out", str(out / "t.csv"), "--markdown", str(out / "t.md"), "--metrics-json", str(out / "m.json")]) == 0
    m = read_json(out / "m.json")
    acc = [read_json(e)["results"][0]["accuracy"] for e in evals]
    assert m["avg"] == round(float(np.mean(acc)), 2) and m["last"] == round(acc[-1], 2)
    assert m["paper"] is None and m["provenance"]["run"] == "cil_mini_4steps"
    rows = list(csv.DictReader((out / "t.csv").open()))
    assert [(r["method"], r["metric"]) for r in rows] == [
        (m_, k) for m_ in ("MoE-Adapters (ours)", "Zero-shot CLIP (ours)") for k in ("Avg", "Last")
    ]
    assert "## After every step" in (out / "t.md").read_text()


def test_the_paper_table_sits_beside_the_references_logs():
    from moe_adapters.reporting.tables import cil_paper_means, cil_rows

    assert cil_paper_means("cil_tinyimagenet_10steps") == {"MoE-Adapters": {"avg": 80.23, "last": 76.35}}
    assert cil_paper_means("cil_mini_4steps") is None
    ours = {"avg": 80.0, "last": 70.0}
    rows = cil_rows(ours, {"avg": 60.0, "last": 50.0}, cil_paper_means("cil_cifar100_50steps"))
    paper = paper_numbers()["cil"]["cifar100_50_steps"]
    assert rows[-2:] == [["difference (ours - paper)", "Avg", round(80.0 - paper["avg"], 2)],
                         ["difference (ours - paper)", "Last", round(70.0 - paper["last"], 2)]]
