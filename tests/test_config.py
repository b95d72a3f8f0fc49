"""Config validation and resolution: defaults are the paper, every derived value is resolved, a bad key or value is
named, and deviations list every value that differs from the reference's."""

import pytest

from moe_adapters.cli import main
from moe_adapters.config import ConfigError, config_hash, deviations, flatten, load_config, run_config_yaml


def test_defaults_are_the_paper_and_resolved_once():
    c = load_config()
    assert (c.benchmark, c.order, c.shots, c.protocol) == ("mtil", "order1", 0, "mtil")
    assert c.model.name == "ViT-B-16" and c.model.num_experts == 22 and c.model.top_k == 2
    assert c.train.iterations == 1000 and c.ddas.threshold == 0.0655 and c.ddas.lr == 0.01
    assert c.train.lr["Aircraft"] == 0.005 and c.train.lr["EuroSAT"] == 0.0001 and len(c.train.lr) == 11
    assert c.ddas.few_shot_autoencoders is False and c.ddas.feature_weights == "torchvision"
    few = load_config(overrides={"shots": 5})
    assert few.train.iterations == 500 and few.ddas.threshold == 0.06 and few.ddas.lr == 0.003
    assert few.train.lr["Food"] == 0.01 and few.ddas.few_shot_autoencoders is True
    assert deviations(c) == {} and deviations(few) == {}


def test_named_thresholds_of_the_reference_scripts():
    assert load_config(overrides={"shots": 5, "ddas": {"threshold": "train_script"}}).ddas.threshold == 0.0585
    assert load_config(overrides={"shots": 5, "ddas": {"threshold": "test_script"}}).ddas.threshold == 0.06
    d = deviations(load_config(overrides={"shots": 5, "ddas": {"threshold": "train_script"}}))
    assert d == {"ddas.threshold": {"value": 0.0585, "reference": 0.06}}


def test_run_config_has_no_null_where_the_code_substitutes_a_value():
    for over, want in (({}, {"variant", "cil"}), ({"shots": 5}, {"variant", "cil"}),
                       ({"setting": "cil", "cil": {"dataset": "tinyimagenet", "steps": 10}}, {"variant"})):
        flat = flatten(load_config(overrides=over).to_dict())
        nulls = {k for k, v in flat.items() if v is None}
        # model.pretrained: null would mean random weights (not substituted); variant: null is the baseline;
        # cil: null, an MTIL run (a class-incremental run has its cil section resolved, no null left in it)
        assert nulls == want, nulls
    text = run_config_yaml(load_config(overrides={"shots": 5}))
    assert "iterations: 500" in text and "threshold: 0.06" in text and "lr: null" not in text


def test_every_differing_value_is_a_deviation():
    c = load_config(
        overrides={"train": {"lr": {"DTD": 0.002}, "iterations": 1000, "batch_size": 32}, "shots": 5,
                   "ddas": {"threshold": 0.0585}, "speed": {"batched_experts": False}, "report": {"figure_dpi": 80}}
    )
    d = deviations(c)
    assert d == {
        "train.lr.DTD": {"value": 0.002, "reference": 0.005},
        "train.iterations": {"value": 1000, "reference": 500},
        "train.batch_size": {"value": 32, "reference": 64},
        "ddas.threshold": {"value": 0.0585, "reference": 0.06},
    }


def test_exact_switches_and_locations_leave_the_hash_unchanged():
    base = config_hash(load_config())
    assert config_hash(load_config(overrides={"speed": {"batched_experts": False, "truncate_text": False}})) == base
    assert config_hash(load_config(overrides={"results_dir": "elsewhere", "train": {"num_workers": 0}})) == base
    assert config_hash(load_config(overrides={"speed": {"tf32": True}})) != base
    assert config_hash(load_config(overrides={"ddas": {"threshold": 0.05}})) != base


def test_nested_overrides_as_snakemake_passes_them_are_typed():
    # Snakemake's --config 'train={"label_smoothing": 0.0}' hands the nested values over as strings
    c = load_config(overrides={"train": {"label_smoothing": "0.0", "freeze_top": "3"}, "ddas": {"only_trained": "true"}})
    assert c.train.label_smoothing == 0.0 and c.train.freeze_top == 3 and c.ddas.only_trained is True


def test_order_two_keeps_each_datasets_rate_and_by_position_is_named():
    o1, o2 = load_config(), load_config(overrides={"order": "order2"})
    assert o2.train.lr == {d: o1.train.lr[d] for d in o2.datasets}  # per dataset, the documented default
    pos = load_config(overrides={"order": "order2", "train": {"lr_rule": "by_position"}})
    assert [pos.train.lr[d] for d in pos.datasets] == [o1.train.lr[d] for d in o1.datasets]
    assert "train.lr_rule" in deviations(pos)


@pytest.mark.parametrize(
    "override,key",
    [
        ({"order": "order9"}, "'order'"),
        ({"order": "first"}, "'order'"),
        ({"model": {"top_k": 30}}, "'model.top_k'"),
        ({"model": {"num_expert": 3}}, "'model.num_expert'"),
        ({"ddas": {"threshold": "high"}}, "'ddas.threshold'"),
        ({"train": {"lr": {"Imagenet": 0.1}}}, "'train.lr.Imagenet'"),
        ({"shots": 3}, "'shots'"),
        ({"device": "tpu"}, "'device'"),
        ({"ddas": {"generic_dataset": "Nope"}}, "'ddas.generic_dataset'"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=override)


def test_cli_rejects_a_bad_config_file_before_doing_anything(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("order: order9\n")
    assert main(["check-config", "--config", str(p)]) == 2
    assert "config key 'order'" in capsys.readouterr().err
    assert main(["check-config", "--config", str(tmp_path / "none.yaml")]) == 2
    p.write_text("train:\n  iterations: 5\n batch_size: 3\n")
    assert main(["check-config", "--config", str(p)]) == 2
    assert f"config file {p} is not valid YAML at line 3" in capsys.readouterr().err
    assert main(["check-config", "--set", "train.iterations=5"]) == 0
