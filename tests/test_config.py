"""Config validation: defaults are the paper, a bad key or value is named."""

import pytest

from moe_adapters.cli import main
from moe_adapters.config import ConfigError, ddas_threshold, iterations, load_config, task_lr


def test_defaults_are_the_paper():
    c = load_config()
    assert c["benchmark"] == "mtil" and c["order"] == "order1" and c["shots"] == 0
    assert c["model"]["name"] == "ViT-B-16" and c["model"]["num_experts"] == 22 and c["model"]["top_k"] == 2
    assert iterations(c) == 1000 and ddas_threshold(c) == 0.0655
    assert task_lr(c, "Aircraft") == 0.005 and task_lr(c, "EuroSAT") == 0.0001
    few = load_config(overrides={"shots": 5})
    assert iterations(few) == 500 and ddas_threshold(few) == 0.06 and task_lr(few, "Food") == 0.01


@pytest.mark.parametrize(
    "override,key",
    [
        ({"order": "order9"}, "'order'"),
        ({"order": "first"}, "'order'"),
        ({"model": {"top_k": 30}}, "'model.top_k'"),
        ({"model": {"num_expert": 3}}, "'model'"),
        ({"ddas": {"threshold": "high"}}, "'ddas.threshold'"),
        ({"train": {"lr": {"Imagenet": 0.1}}}, "'train.lr.Imagenet'"),
        ({"shots": 3}, "'shots'"),
        ({"device": "tpu"}, "'device'"),
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
    assert main(["check-config", "--set", "train.iterations=5"]) == 0
