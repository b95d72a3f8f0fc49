"""`moe-adapters import-reference`: the authors' release, in their key layout, into this project's checkpoints.

A tiny CLIP is built in both formats (this project's model, and a state dict under the reference's names, OpenAI's
for the backbone); after the import, evaluation with the imported weights gives exactly the logits of the model
they came from. A file that would execute code when unpickled is refused, a wrong key layout names its key, an
incomplete release names what is missing and writes nothing, another backbone is refused, and an imported
checkpoint cannot be trained on.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import zipfile

import pytest
import torch
import yaml

from moe_adapters.checkpoint import CheckpointError, load_autoencoder, load_task_checkpoint, read_metadata
from moe_adapters.cli import main
from moe_adapters.evaluation import EVAL_LOGIT_SCALE, text_head
from moe_adapters.model.ddas import Autoencoder, PixelFeatures
from moe_adapters.reference import (
    adapter_keys,
    check_backbone,
    import_reference,
    map_task_state,
    to_reference_layout,
)
from moe_adapters.workflow.plan import Plan

from .conftest import QUADRANTS, TEMPLATES
from .release_helpers import DATASETS, tiny_release_model, toy_mtil_config, write_release

RUN = "mtil_order1-reference"


@pytest.fixture
def setting(tmp_path):
    cfg = toy_mtil_config(tmp_path, data_root=str(tmp_path / "data"), results_dir=str(tmp_path / "results"),
                          protocol="protocol.yaml")
    cfg["protocol"] = str(tmp_path / "protocol.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rc = Plan(cfg).run(RUN)
    release = write_release(tmp_path / "release")
    return tmp_path, rc, release


def logits(model, images, tokenizer, route):
    head = text_head(model, tokenizer, QUADRANTS, TEMPLATES, route)
    return EVAL_LOGIT_SCALE * model.encode_image(images, route, normalize=True) @ head.T


def test_the_key_mapping_is_the_identity_on_tensors_and_covers_every_adapter(tiny_model):
    ref = to_reference_layout(tiny_model)
    mapping = adapter_keys(tiny_model)
    ours = tiny_model.moe_state_dict()
    assert set(mapping.values()) == {k for k in ours if not k.startswith("frozen_")}
    for r, o in mapping.items():
        assert torch.equal(ref[r], ours[o])  # same orientation: Linear weights [out, in], routers (width, experts)
    assert ref["visual.transformer.resblocks.0.router_list.0"].shape == (64, tiny_model.spec.num_experts)
    assert ref["transformer.resblocks.1.adaptmlp_list.0.down_proj.weight"].shape == (tiny_model.spec.bottleneck, 64)


def test_imported_weights_give_the_same_logits_as_the_model_they_came_from(setting, tokenizer):
    tmp, rc, release = setting
    import_reference(rc, [tmp / "release"], log=lambda *_: None)
    folder = tmp / "results" / RUN
    images = torch.rand(6, 3, 32, 32)
    for k in range(len(DATASETS)):
        original = tiny_release_model()
        original.load_state_dict(release["models"][k], strict=False)
        imported = tiny_release_model()
        with torch.no_grad():  # start from other adapters, so that the load is what makes them equal
            imported.randomize_adapters(0.3, seed=999)
        meta = load_task_checkpoint(folder / "checkpoints" / f"task_{k}.safetensors", imported)
        assert meta["imported"]["file"] == f"{DATASETS[k]}.pth" and len(meta["imported"]["sha256"]) == 64
        assert meta["frozen_set"] == "unknown"
        original.eval()
        imported.eval()
        with torch.no_grad():
            for route in range(k + 1):
                assert torch.equal(logits(imported, images, tokenizer, route), logits(original, images, tokenizer, route))
    feats = PixelFeatures(8)(images)
    for j in range(len(DATASETS) + 1):
        ae = Autoencoder(3 * 8 * 8, 10)
        meta = load_autoencoder(folder / "autoencoders" / f"ae_{j}.safetensors", ae)
        assert torch.equal(ae.per_sample_mse(feats), release["trained"][j].per_sample_mse(feats))
        if j >= 2:  # the untrained weights the reference lets compete: the release's own
            init = Autoencoder(3 * 8 * 8, 10)
            init.load_state_dict(meta["initial_state"])
            assert torch.equal(init.per_sample_mse(feats), release["initial"][j].per_sample_mse(feats))
    record = (folder / "imported.json").read_text()
    assert "Red_autochooser.pth" in record and "sha256" in record


def test_a_pickle_that_would_execute_code_is_refused(setting, capsys):
    tmp, rc, _ = setting
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp / "release" / "Green.pth", "wb") as f:
        pickle.dump({"state_dict": {"w": Evil()}}, f)
    rcode = main(["import-reference", "--setting", "mtil_order1", "-c", str(tmp / "config.yaml"), str(tmp / "release")])
    err = capsys.readouterr().err
    assert rcode == 1 and "execute code" in err and "Green.pth" in err, err
    assert not marker.exists()
    assert not (tmp / "results" / RUN / "checkpoints").exists()  # nothing is written before every file has passed


@pytest.mark.parametrize(
    "edit,key,word",
    [
        (lambda s: s.pop("visual.transformer.resblocks.1.router_list.1"), "visual.transformer.resblocks.1.router_list.1", "missing"),
        (lambda s: s.pop("transformer.resblocks.0.adaptmlp_list.3.up_proj.bias"), "transformer.resblocks.0.adaptmlp_list.3.up_proj.bias", "missing"),
        (lambda s: s.update({"visual.transformer.resblocks.0.router_list.7": torch.zeros(64, 4)}), "visual.transformer.resblocks.0.router_list.7", "unexpected"),
        (lambda s: s.update({"module.logit_scale": torch.zeros(())}), "module.logit_scale", "unexpected"),
    ],
)
def test_a_wrong_key_layout_names_its_first_missing_or_unexpected_key(setting, edit, key, word):
    tmp, rc, _ = setting
    path = tmp / "release" / "Red.pth"
    state = torch.load(path, weights_only=True)["state_dict"]
    edit(state)
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=f"{word} key '{key}'") as e:
        import_reference(rc, [tmp / "release"], log=lambda *_: None)
    assert "Red.pth" in str(e.value)
    assert not (tmp / "results" / RUN / "checkpoints").exists()


def test_ignored_entries_are_the_alias_ln3_and_gating_buffers(setting):
    tmp, rc, _ = setting
    state = torch.load(tmp / "release" / "Red.pth", weights_only=True)["state_dict"]
    ignored = {k.split(".", 4)[-1] if k.startswith("visual") else k.split(".", 3)[-1] for k in state
               if ".adaptmlp." in k or ".ln_3." in k or k.endswith((".mean", ".std"))}
    assert ignored == {"adaptmlp.down_proj.weight", "adaptmlp.down_proj.bias", "adaptmlp.up_proj.weight",
                       "adaptmlp.up_proj.bias", "ln_3.weight", "ln_3.bias", "mean", "std"}
    import_reference(rc, [tmp / "release"], log=lambda *_: None)  # they are present, and do not stop the import


def test_an_incomplete_release_says_what_was_found_and_what_is_missing_and_writes_nothing(setting, capsys):
    tmp, rc, _ = setting
    (tmp / "release" / "Green.pth").unlink()
    (tmp / "release" / "Green_autochooser.pth").unlink()
    rcode = main(["import-reference", "--setting", "mtil_order1", "-c", str(tmp / "config.yaml"), str(tmp / "release")])
    err = capsys.readouterr().err
    assert rcode == 2, err
    assert "found: " + str(tmp / "release" / "Red.pth") in err
    assert "Green.pth" in err and "MISSING" in err
    assert "missing: Green.pth; autoencoder 2" in err
    assert "nothing was written" in err and "Released checkpoints" in err
    assert not (tmp / "results").exists()


def test_archives_and_bundles_of_the_release_are_read_alike(setting):
    tmp, rc, _ = setting
    folder = tmp / "release"
    with zipfile.ZipFile(tmp / "full_shot_order1_1000iters.zip", "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"full_shot_order1_1000iters/{f.name}")
    with tarfile.open(tmp / "release.tar", "w") as t:
        t.add(folder, arcname="release")
    bundle = {f.stem: torch.load(f, weights_only=True) for f in folder.iterdir()}
    torch.save(bundle, tmp / "full_shot_order1_1000iters.pth")
    digests = []
    for source in ("release", "full_shot_order1_1000iters.zip", "release.tar", "full_shot_order1_1000iters.pth"):
        shutil.rmtree(tmp / "results", ignore_errors=True)
        lines = []
        import_reference(rc, [tmp / source], log=lines.append)
        assert "MISSING" not in "\n".join(lines)
        out = tmp / "results" / RUN
        digests.append({p.name: load_task_checkpoint_tensors(p) for p in sorted(out.rglob("*.safetensors"))})
    assert all(d == digests[0] for d in digests[1:])


def load_task_checkpoint_tensors(path):
    from moe_adapters.checkpoint import load_tensors

    tensors, _ = load_tensors(path)
    return {k: v.sum().item() for k, v in tensors.items()}


def test_one_model_under_another_name_is_placed_by_its_routers(setting):
    tmp, rc, _ = setting
    folder = tmp / "release"
    (folder / "Green.pth").rename(tmp / "final_model.pth")
    lines = []
    import_reference(rc, [folder, tmp / "final_model.pth"], log=lines.append)
    assert "final_model.pth (task read from its routers (0..1 trained))" in "\n".join(lines)


def test_another_backbone_is_refused_naming_the_tensor(setting):
    tmp, rc, _ = setting
    path = tmp / "release" / "Red.pth"
    state = torch.load(path, weights_only=True)["state_dict"]
    state["ln_final.weight"] = state["ln_final.weight"] + 1e-3
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="backbone tensor 'ln_final.weight' differs from the run's backbone"):
        import_reference(rc, [tmp / "release"], log=lambda *_: None)


def test_a_half_precision_release_of_the_same_weights_passes_the_backbone_check():
    # OpenAI's weights are float16 numbers; the run holds them as float32. A release saved in float16 holds the same
    # numbers: cast to the run's dtype, every backbone tensor is equal, and the adapters load exactly.
    model = tiny_release_model()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
        model.randomize_adapters(0.2, seed=5)
        for p in model.parameters():
            p.copy_(p.half().float())
    state = {k: v.half() for k, v in to_reference_layout(model).items()}
    check_backbone(state, model, "half.pth")
    other = tiny_release_model()
    with torch.no_grad():
        for p in other.clip.parameters():
            p.copy_(p.half().float())
    map_task_state(state, other, "half.pth")
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), model.parameters(), strict=True))


def test_training_on_from_an_imported_checkpoint_is_refused(setting):
    tmp, rc, _ = setting
    import_reference(rc, [tmp / "release"], log=lambda *_: None)
    from moe_adapters.steps.specs import Runtime, task_spec
    from moe_adapters.steps.train import train_task_step

    spec = task_spec(rc, 1)
    with pytest.raises(CheckpointError, match="hold no frozen set"):
        train_task_step(spec, Runtime(0, 0, True, True), tmp / "data" / "Green", tmp / "out.safetensors",
                        prev=tmp / "results" / RUN / "checkpoints" / "task_0.safetensors", progress=False)
    assert read_metadata(tmp / "results" / RUN / "checkpoints" / "task_0.safetensors")["frozen_set"] == "unknown"


def test_the_dag_of_an_imported_run_trains_nothing_and_a_missing_file_says_how_to_get_it(setting):
    from .workflow_helpers import planned_jobs, snakemake

    tmp, rc, _ = setting
    import_reference(rc, [tmp / "release"], log=lambda *_: None)
    target = str(tmp / "results" / f"{RUN}_table.csv")
    r = snakemake(tmp, "-n", target, "--configfile", str(tmp / "config.yaml"))
    assert r.returncode == 0, r.stderr[-3000:]
    rules = {rule for rule, _ in planned_jobs(r.stdout)}
    assert rules == {"backbone", "features", "evaluate", "evaluate_zero_shot", "matrix", "costs", "table"}, rules
    (tmp / "results" / RUN / "checkpoints" / "task_1.safetensors").unlink()
    r = snakemake(tmp, "-n", target, "--configfile", str(tmp / "config.yaml"))
    assert r.returncode != 0
    msg = r.stdout + r.stderr
    assert "task_1.safetensors is missing" in msg and "moe-adapters import-reference --setting mtil_order1" in msg, msg


def test_the_variant_name_reference_is_reserved_and_takes_no_overrides(setting):
    from moe_adapters.config import ConfigError

    tmp, _, _ = setting
    cfg = yaml.safe_load((tmp / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="reserved for the authors' released checkpoints"):
        Plan({**cfg, "variants": {"reference": {"ddas": {"threshold": 0.1}}}})
    with pytest.raises(ConfigError, match="takes no overrides"):
        Plan(cfg, cfg, ("reference", {"ddas": {"threshold": 0.1}}))
    plan = Plan(cfg)
    assert plan.imported(RUN) and not plan.imported("mtil_order1")
    assert plan.owner("evaluate", RUN, 0) == RUN and plan.owner("backbone", RUN) == RUN  # it shares nothing
