"""Nothing silently wrong (issue 16): every artifact is verified where it is read, and every bad input gets a
clear, early error naming the file, key or value. One test per numbered finding of the issue."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from moe_adapters.cli import main

from .test_pipeline import trained_run  # noqa: F401  (the tiny run every CLI step of which ran, as a fixture)
from .workflow_helpers import REPO, SNAKEMAKE, project_copy, run, snakemake, tool_env

HEX64 = re.compile(r"\b[0-9a-f]{64}\b")


def cli(capsys, *args) -> tuple[int, str]:
    """Run `moe-adapters ARGS` in this process: its exit status and what it printed on stderr."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def flip_bytes(path: Path, start: int, n: int = 8) -> None:
    """Overwrite n bytes at `start` (negative: from the end) in place, keeping the file's size and header."""
    raw = bytearray(path.read_bytes())
    i = start % len(raw)
    raw[i : i + n] = bytes(b ^ 0xFF for b in raw[i : i + n])
    path.write_bytes(bytes(raw))


def names_file_hashes_and_rule(msg: str, path: Path, rule: str) -> None:
    assert str(path) in msg, msg
    assert len(set(HEX64.findall(msg))) == 2, msg  # the recorded and the actual SHA-256
    assert f"rule {rule}" in msg, msg


# ---------------------------------------------------------------- 1. corrupt prepared data is used


def test_1_corrupt_prepared_arrays_are_refused_where_they_are_read(toy_run, capsys, monkeypatch):
    from moe_adapters.data.prepared import PreparedDataset

    root, cfg = toy_run
    images = root / "data/Red/test_images.npy"
    flip_bytes(images, -400, 10)  # ten pixels of the test images, the .npy header intact
    with pytest.raises(Exception) as e:
        PreparedDataset(root / "data/Red").test_arrays()
    names_file_hashes_and_rule(str(e.value), images, "prepare")
    # the step that reads a corrupt train split stops before training, naming the file
    flip_bytes(root / "data/Red/train_images.npy", -400, 10)
    rc, err = cli(capsys, "train-autoencoder", "-c", cfg, "--index", "1", "--out", root / "ae.safetensors", "--no-progress")
    assert rc != 0 and not (root / "ae.safetensors").exists()
    names_file_hashes_and_rule(one_line(err), root / "data/Red/train_images.npy", "prepare")
    # a wholly garbage .npy: named, not numpy's bare "allow_pickle" message, with verification on and off
    labels = root / "data/Green/test_labels.npy"
    labels.write_bytes(b"garbage " * 64)
    with pytest.raises(Exception) as e:
        PreparedDataset(root / "data/Green").test_arrays()
    names_file_hashes_and_rule(str(e.value), labels, "prepare")
    monkeypatch.setenv("MOE_ADAPTERS_VERIFY", "0")
    with pytest.raises(Exception) as e:
        PreparedDataset(root / "data/Green").test_arrays()
    assert str(labels) in str(e.value) and "allow_pickle" not in str(e.value), str(e.value)


# ---------------------------------------------------------------- 2. corrupt checkpoints, autoencoders, features, evaluations


def test_2_flipped_bytes_in_any_saved_artifact_are_refused_by_the_step_that_reads_it(trained_run, capsys):  # noqa: F811
    root, cfg, r = trained_run
    feats = [r / "features" / f"{d}.safetensors" for d in ("Red", "Green")]
    aes = [r / f"ae_{k}.safetensors" for k in range(3)]
    zs = r / "eval_zs.json"
    assert cli(capsys, "evaluate", "-c", cfg, "--features", *feats, "--out", zs)[0] == 0

    def refused(path: Path, rule: str, *args) -> None:
        saved = path.read_bytes()
        flip_bytes(path, -16)  # inside the tensor data (the last tensor's last bytes)
        try:
            rc, err = cli(capsys, *args)
            assert rc != 0, f"{args[0]} read the corrupt {path}"
            names_file_hashes_and_rule(one_line(err), path, rule)
        finally:
            path.write_bytes(saved)

    out = r / "again"
    refused(aes[1], "autoencoder", "features", "-c", cfg, "--dataset", "Red", "--autoencoders", *aes, "--out", out)
    refused(r / "task_0.safetensors", "train_task", "train-task", "-c", cfg, "--task", "1",
            "--prev", r / "task_0.safetensors", "--out", out, "--no-progress")
    refused(feats[0], "features", "evaluate", "-c", cfg, "--features", *feats, "--out", out)
    refused(r / "task_1.safetensors", "train_task", "costs", "--checkpoints", r / "task_1.safetensors", "--out", out)
    # an evaluation whose numbers were edited
    ev = json.loads(zs.read_text())
    ev["results"]["Red"]["accuracy"] = 99.0
    zs.write_text(json.dumps(ev, indent=2))
    rc, err = cli(capsys, "costs", "--evaluations", zs, "--out", out)
    assert rc != 0
    names_file_hashes_and_rule(one_line(err), zs, "evaluate_zero_shot")
    assert not out.exists()


# ---------------------------------------------------------------- 3. the metrics CLI accepts malformed matrices

MINI_ORDER1 = ["Textures", "Digits", "Shapes", "Faces", "Glyphs"]


def matrix_text(names, rows: int, cols: int = 5) -> str:
    lines = [",".join(names)] if names else []
    lines += [",".join(f"{50 + i + j:.1f}" for j in range(cols)) for i in range(rows)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text,why",
    [
        (matrix_text(MINI_ORDER1, 6), "6 rows"),
        (matrix_text(MINI_ORDER1, 4), "4 rows"),
        (matrix_text(None, 5), "no header row"),
        (matrix_text(["Digits", "Textures", "Shapes", "Faces", "Glyphs"], 5), "no order"),
        (matrix_text(["Textures", "Digits", "Shapes", "Faces", "Glyph"], 5), "'Glyph'"),
        ("", "empty"),
        (None, "a directory"),
    ],
    ids=["6x5", "4x5", "no-header", "swapped", "wrong-name", "empty-file", "directory"],
)
def test_3_metrics_refuses_a_matrix_that_does_not_fit_its_order(tmp_path, capsys, text, why):
    path = tmp_path / "m.csv"
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    for args in ([], ["--json"], ["--benchmark", "mini"]):
        rc, err = cli(capsys, "metrics", path, *args)
        assert rc != 0
        line = one_line(err)
        assert line.startswith("moe-adapters metrics: error:") and str(path) in line and why in line, line
    if text is None or text == "":  # `show` says the same in one line
        rc, err = cli(capsys, "show", path)
        assert rc != 0 and why in one_line(err)


def test_3_a_well_formed_matrix_is_read_against_the_order_its_header_names(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(matrix_text(MINI_ORDER1, 5))
    capsys.readouterr()
    assert main(["metrics", str(path), "--json"]) == 0  # no --order, no --benchmark: mini order1, from the header
    assert list(json.loads(capsys.readouterr().out)["per_dataset"]) == MINI_ORDER1
    rc, err = cli(capsys, "metrics", path, "--order", "order2")
    assert rc != 0 and "order2" in one_line(err)


# ---------------------------------------------------------------- 4. config errors


def broken_yaml(path: Path) -> int:
    """Break the YAML of a config file (an unclosed list); the line of the break."""
    lines = path.read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("order:"))
    lines[at] = "order: [order1"
    path.write_text("\n".join(lines) + "\n")
    return at + 1


def test_4_a_yaml_syntax_error_names_file_and_line_through_snakemake(tmp_path):
    project_copy(tmp_path)
    # the mini profile's config file (what `make mini` and `dvc repro mini` run)
    broken_yaml(tmp_path / "config/mini.yaml")
    r = run(tmp_path, *SNAKEMAKE, "--workflow-profile", "profiles/mini", "-n", ok=False)
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert re.search(r"config/mini\.yaml is not valid YAML at line \d+", out), out[-2000:]
    # the Snakefile's own default, config/config.yaml
    broken_yaml(tmp_path / "config/config.yaml")
    r = snakemake(tmp_path, "-n")
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert re.search(r"config/config\.yaml is not valid YAML at line \d+", out), out[-2000:]
    assert not (tmp_path / "results").exists()


def test_4_an_unknown_generic_dataset_is_refused_before_any_job_naming_key_and_choices(tmp_path):
    r = snakemake(tmp_path, "-n", "--config", "ddas={generic_dataset: Nope}")
    out = r.stderr + r.stdout
    assert r.returncode != 0
    assert "config key 'ddas.generic_dataset': 'Nope'" in out and "TinyImageNet" in out, out[-2000:]
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------- 5. a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, filled up to its last 48 KiB."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a 2 MiB tmpfs (a real file system that fills up)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        free = shutil.disk_usage(mnt).free
        (mnt / "filler").write_bytes(b"\0" * (free - (48 << 10)))
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])
            raise AssertionError(f"{mnt} was still in use: a file on it was left open")


def test_5_a_job_that_runs_out_of_space_says_so_in_snakemakes_output(tmp_path, small_disk):
    cfg = yaml.safe_load((REPO / "config/mini.yaml").read_text())
    cfg.update(data_root=str(small_disk / "data"), results_dir=str(small_disk / "results"))
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(cfg))
    folder = small_disk / "data/Faces"
    r = snakemake(tmp_path, "--configfile", tmp_path / "mini.yaml", "--cores", "1", folder / "meta.json")
    out = r.stderr + r.stdout
    assert r.returncode != 0
    m = re.search(r"no space left on the device of (\S+): writing (\S+) failed .*?(\d[\d.]* [KMG]?i?B) free", out)
    assert m and m.group(2).startswith(str(folder)), out[-3000:]
    assert not (folder / "meta.json").exists() and not list(folder.glob(".*tmp")) and not list(folder.glob("*.npy"))
    # run by hand, torch's own message ("unexpected pos") is replaced by the same one
    from moe_adapters.checkpoint import save_torch

    with pytest.raises(OSError, match=r"no space left on the device of .*: writing .*state\.pt failed"):
        save_torch(small_disk / "state.pt", {"x": np.zeros(1 << 16)})
    assert sorted(p.name for p in small_disk.iterdir() if p.name not in ("data", "results")) == ["filler"]


# ---------------------------------------------------------------- 6. unreadable weights


@pytest.mark.parametrize("name,content", [("w.safetensors", b"not weights\n"), ("w.pt", b"\x80\x02garbage"), ("w.bin", b"")])
def test_6_a_pretrained_file_that_is_not_weights_is_named(toy_run, capsys, name, content):
    root, cfg = toy_run
    weights = root / name
    weights.write_bytes(content)
    rc, err = cli(capsys, "backbone", "-c", cfg, "--set", f"model.pretrained={weights}", "--out", root / "b.json")
    assert rc != 0
    line = one_line(err)
    assert str(weights) in line and "model.pretrained" in line, line


# ---------------------------------------------------------------- 7. litter of interrupted writes


def killed(code: str) -> None:
    """Run `code` in a fresh Python that kills itself with SIGKILL at its end (as kill -9 would)."""
    script = f"{code}\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"
    r = subprocess.run([sys.executable, "-c", script], env=tool_env(), capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr


def test_7_temporaries_of_interrupted_writes_are_removed_by_the_next_run_of_their_step(toy_run, tmp_path, capsys):
    root, cfg = toy_run
    out = root / "results/task_0.safetensors"
    state = out.parent / ".resume" / f"{out.name}.state"
    # a training step killed while writing its resume state, and while writing its checkpoint
    killed(
        "from moe_adapters.fsutil import atomic_path\n"
        f"a = atomic_path({str(state)!r}); a.__enter__()\n"
        f"b = atomic_path({str(out)!r}); b.__enter__().write_bytes(b'half a checkpoint')\n"
    )
    assert len(list(out.parent.glob(".*.tmp")) + list(state.parent.glob(".*.tmp"))) == 2
    assert cli(capsys, "train-task", "-c", cfg, "--task", "0", "--out", out, "--no-progress")[0] == 0
    assert out.is_file()
    # (an empty .resume/ may stay: a sibling job of the folder may be about to write its state there)
    assert [p for p in out.parent.rglob("*") if p.is_file()] == [out]


def test_7_prepare_removes_the_evaluation_cache_of_an_interrupted_run(tmp_path):
    from moe_adapters.data import mtil as md

    from .test_mtil_data import build

    data = tmp_path / "data"
    pins = md.load_pins()
    build("DTD", md.raw_root(data) / "DTD", pins)
    (tmp_path / "pins.json").write_text(json.dumps(pins))
    out = data / "DTD"
    killed(  # prepare killed while it writes the evaluation cache into the (DVC-tracked) data folder
        "import json\nfrom pathlib import Path\nfrom moe_adapters.data import mtil as md\n"
        "from moe_adapters.data.mtil import prepare as p\n"
        "def half_written(dataset, src, idx, size, workers, dest):\n"
        "    Path(dest).write_bytes(b'half an evaluation cache')\n"
        "    import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
        "p.build_eval_cache = half_written\n"
        f"pins = json.loads(Path({str(tmp_path / 'pins.json')!r}).read_text())\n"
        f"md.prepare_dataset('DTD', Path({str(out)!r}), data_root={str(data)!r}, pins=pins, image_size=32)\n"
    )
    assert len(list(out.glob(".test_images.*"))) == 1
    md.prepare_dataset("DTD", out, data_root=data, pins=pins, image_size=32)
    assert (out / "meta.json").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_7_dvc_ignores_temporaries_and_resume_states(tmp_path):
    project_copy(tmp_path)
    run(tmp_path, "git", "init", "-q")
    dvc = str(Path(sys.executable).parent / "dvc")
    for path in (
        "results/mini/data/Faces/.test_images.npy.host-123.abcd.tmp",
        "data/DTD/.test_images.host-123.abcd.npy.tmp",
        "results/mini/mini_order1/checkpoints/.resume/task_0.safetensors.state",
    ):
        r = run(tmp_path, dvc, "check-ignore", path, ok=False)
        assert r.returncode == 0, f"DVC would track {path}"
    assert run(tmp_path, dvc, "check-ignore", "results/mini/data/Faces/test_images.npy", ok=False).returncode == 1
