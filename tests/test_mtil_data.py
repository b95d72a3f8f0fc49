"""The paper's data layer on tiny fake copies of each dataset's on-disk layout (generated images, no network)."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from moe_adapters.data import mtil as md
from moe_adapters.data.batches import TrainBatches, few_shot_subset
from moe_adapters.data.prepared import DataMissingError, PreparedDataset
from moe_adapters.protocol import load_protocol
from moe_adapters.steps.specs import image_size

PAPER_SIZE = image_size("ViT-B-16")

PROTO = load_protocol("mtil")


def jpeg(path: Path, seed: int, size=(40, 30)) -> None:
    """A small random-colour JPEG (content differs per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)


def savemat(path: Path, obj: dict) -> None:
    import scipy.io as sio

    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(path, obj)


def idx_file(path: Path, arr: np.ndarray) -> None:
    """MNIST's IDX format: magic (type 0x08 = uint8, number of dims), big-endian sizes, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(head + arr.astype(np.uint8).tobytes())


# ------------------------------------------------------------ one builder per dataset: (sizes, classes, expected names)


def build_aircraft(raw: Path):
    d = raw / "fgvc-aircraft-2013b" / "data"
    classes = ["707-320", "A300B4", "Cessna 172"]
    d.mkdir(parents=True)
    (d / "variants.txt").write_text("\n".join(classes) + "\n")
    lines = {"train": [], "test": []}
    for k in range(9):
        split = "test" if k % 3 == 2 else "train"
        lines[split].append(f"{k:07d} {classes[k % 3]}")
        jpeg(d / "images" / f"{k:07d}.jpg", k)
    for split, ls in lines.items():
        (d / f"images_variant_{split}.txt").write_text("\n".join(ls) + "\n")
    return {"train": 6, "test": 3}, 3, classes


def build_caltech(raw: Path, categories: list[str]):
    base = raw / "caltech101" / "101_ObjectCategories"
    n = 0
    for c, cat in enumerate(["BACKGROUND_Google", *categories]):
        for k in range(2 if c < 5 else 1):
            jpeg(base / cat / f"image_{k + 1:04d}.jpg", n, size=(24, 20))
            n += 1
    n -= 2  # background images are not samples
    return {"train": int(0.8 * n), "test": n - int(0.8 * n)}, 101, PROTO["datasets"]["Caltech101"]["classnames"]


def build_cifar100(raw: Path):
    d = raw / "cifar-100-python"
    d.mkdir(parents=True)
    classes = ["apple", "aquarium_fish", "baby"]
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        data = (rng.random((n, 3072)) * 255).astype(np.uint8)
        with open(d / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": [i % 3 for i in range(n)]}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": classes}, f)
    return {"train": 12, "test": 6}, 3, ["apple", "aquarium fish", "baby"]


def build_dtd(raw: Path, bad_test: bool = False, bad_train: bool = False):
    d = raw / "dtd" / "dtd"
    classes = ["banded", "polka-dotted", "zig_zag"]
    lines = {"train": [], "test": []}
    k = 0
    for c in classes:
        for split in ("train", "train", "test"):
            rel = f"{c}/{c}_{k:04d}.jpg"
            jpeg(d / "images" / rel, k)
            lines[split].append(rel)
            k += 1
    (d / "labels").mkdir(parents=True)
    for split, ls in lines.items():
        (d / "labels" / f"{split}1.txt").write_text("\n".join(ls) + "\n")
    if bad_test:
        (d / "images" / lines["test"][1]).write_bytes(b"this is not a jpeg")
    if bad_train:
        p = d / "images" / lines["train"][0]
        p.write_bytes(p.read_bytes()[:200])  # truncated
    return {"train": 6, "test": 3}, 3, ["banded", "polka-dotted", "zig zag"]


def build_eurosat(raw: Path, categories: list[str]):
    base = raw / "eurosat" / "2750"
    for c, cat in enumerate(categories):
        for k in range(2):
            jpeg(base / cat / f"{cat}_{k + 1}.jpg", 10 * c + k, size=(16, 16))
    return {"train": 16, "test": 4}, 10, PROTO["datasets"]["EuroSAT"]["classnames"]


def build_flowers(raw: Path):
    d = raw / "flowers-102"
    for k in range(1, 7):
        jpeg(d / "jpg" / f"image_{k:05d}.jpg", k)
    savemat(d / "imagelabels.mat", {"labels": np.array([1, 2, 102, 50, 1, 7])})
    savemat(d / "setid.mat", {"trnid": np.array([1, 2, 3]), "valid": np.array([4]), "tstid": np.array([5, 6])})
    return {"train": 3, "test": 2}, 102, PROTO["datasets"]["Flowers"]["classnames"]


def build_food(raw: Path):
    d = raw / "food-101"
    classes = ["apple_pie", "baby_back_ribs"]
    meta = {"train": {c: [] for c in classes}, "test": {c: [] for c in classes}}
    k = 0
    for c in classes:
        for split in ("train", "train", "test"):
            meta[split][c].append(f"{c}/{k}")
            jpeg(d / "images" / c / f"{k}.jpg", k)
            k += 1
    (d / "meta").mkdir(parents=True)
    for split, m in meta.items():
        (d / "meta" / f"{split}.json").write_text(json.dumps(m))
    return {"train": 4, "test": 2}, 2, ["apple pie", "baby back ribs"]


def build_mnist(raw: Path):
    d = raw / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 5)):
        idx_file(d / f"{prefix}-images-idx3-ubyte", (rng.random((n, 28, 28)) * 255).astype(np.uint8))
        idx_file(d / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    # torchvision's MNIST.classes, kept verbatim as by ZSCL and the reference (prompts: 'a photo of the number: "0 - zero".')
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return {"train": 20, "test": 5}, 10, [f"{i} - {w}" for i, w in enumerate(words)]


def build_pets(raw: Path):
    d = raw / "oxford-iiit-pet"
    rows = {"trainval": [], "test": []}
    for k, (breed, label, species) in enumerate(
        [("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Abyssinian", 1, 1), ("american_bulldog", 2, 2)]
    ):
        split = "test" if k >= 2 else "trainval"
        rows[split].append(f"{breed}_{k} {label} {species} 1")
        jpeg(d / "images" / f"{breed}_{k}.jpg", k)
    (d / "annotations").mkdir(parents=True)
    for split, rs in rows.items():
        (d / "annotations" / f"{split}.txt").write_text("\n".join(rs) + "\n")
    return {"train": 2, "test": 2}, 2, ["Abyssinian", "American Bulldog"]


def build_cars(raw: Path):
    d = raw / "stanford_cars"
    classes = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    savemat(d / "devkit" / "cars_meta.mat", {"class_names": np.array(classes, dtype=object)})
    rec = [("fname", "O"), ("class", "O")]
    for split, mat in (("train", d / "devkit" / "cars_train_annos.mat"), ("test", d / "cars_test_annos_withlabels.mat")):
        anns = []
        for k in range(3):
            fname = f"{k + 1:05d}.jpg"
            jpeg(d / f"cars_{split}" / fname, k + (10 if split == "test" else 0))
            anns.append((fname, k % 2 + 1))
        savemat(mat, {"annotations": np.array(anns, dtype=rec)})
    return {"train": 3, "test": 3}, 2, classes


def build_sun(raw: Path):
    d = raw / "SUN397"
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    d.mkdir(parents=True)
    (d / "ClassName.txt").write_text("\n".join(classes) + "\n")
    k = 0
    for c in classes:
        for _ in range(4):
            jpeg(d / c.lstrip("/") / f"sun_{k:04d}abc.jpg", k)
            k += 1
    return {"train": int(0.8 * k), "test": k - int(0.8 * k)}, 3, ["abbey", "apartment building/outdoor", "bakery/shop"]


def build_tiny(raw: Path):
    d = raw / "tiny-imagenet-200"
    wnids = ["n02085620", "n01443537"]
    d.mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (d / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn02085620\tChihuahua\nn09999999\tother\n")
    for c, w in enumerate(wnids):
        for k in range(3):
            jpeg(d / "train" / w / "images" / f"{w}_{k}.JPEG", 10 * c + k)
        (d / "train" / w / f"{w}_boxes.txt").write_text("")
    ann = []
    for k in range(4):
        jpeg(d / "val" / "images" / f"val_{k}.JPEG", 100 + k)
        ann.append(f"val_{k}.JPEG\t{wnids[k % 2]}\t0\t0\t10\t10")
    (d / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    # sorted wnids: n01443537 (goldfish) first
    return {"train": 6, "test": 4}, 2, ["goldfish", "Chihuahua"]


def build(name: str, raw: Path, pins: dict, **kw):
    """Build the fake layout of `name` and shrink its pins to it (no sums: the files are generated here)."""
    spec = pins["datasets"][name]
    builders = {
        "Aircraft": build_aircraft,
        "Caltech101": lambda r: build_caltech(r, spec["categories"]),
        "CIFAR100": build_cifar100,
        "DTD": lambda r: build_dtd(r, **kw),
        "EuroSAT": lambda r: build_eurosat(r, spec["categories"]),
        "Flowers": build_flowers,
        "Food": build_food,
        "MNIST": build_mnist,
        "OxfordPet": build_pets,
        "StanfordCars": build_cars,
        "SUN397": build_sun,
        "TinyImageNet": build_tiny,
    }
    sizes, num_classes, names = builders[name](raw)
    fake_pins(spec, sizes, num_classes)
    return names


def fake_pins(spec: dict, sizes: dict, num_classes: int) -> None:
    for s in spec["sources"]:
        s.update(sha256=None, md5=None, size=None)
    spec.update(sizes=sizes, num_classes=num_classes, tree_md5=None, order_sha256=None)
    if spec["split"]["kind"] == "random_split":
        spec["split"].update(n=sizes["train"] + sizes["test"], perm_sha256=None)


@pytest.fixture
def cfg(tmp_path):
    """The data root of a test (raw data under <root>/raw)."""
    return str(tmp_path / "data")


@pytest.fixture
def pins():
    return md.load_pins()


# ------------------------------------------------------------ every dataset


@pytest.mark.parametrize("name", md.dataset_names())
def test_each_dataset_prepares(cfg, pins, name):
    raw = md.raw_root(cfg) / name
    names = build(name, raw, pins)
    spec = pins["datasets"][name]
    out = md.prepare_dataset(name, Path(cfg) / name, data_root=cfg, pins=pins, download=False, image_size=32)
    p = PreparedDataset(out, verify=True)
    m = p.meta
    assert m["classnames"] == names
    want_templates = ["a bad photo of a {c}."] if name == "TinyImageNet" else PROTO["datasets"][name]["templates"]
    assert m["templates"] == want_templates
    if name == "MNIST":  # the reference's prompts: torchvision's class names in the ZSCL template
        assert p.task_data().prompts(0)[:2] == ['a photo of the number: "0 - zero".', 'a photo of the number: "1 - one".']
    assert (m["num_train"], m["num_test"]) == (spec["sizes"]["train"], spec["sizes"]["test"])
    images, labels = p.test_arrays()
    assert images.dtype == np.uint8 and images.shape == (spec["sizes"]["test"], 3, 32, 32)
    assert labels.min() >= 0 and labels.max() < len(names)
    assert np.load(out / "test_index.npy").shape == (spec["sizes"]["test"],)
    train = p.train_dataset()
    assert len(train) == spec["sizes"]["train"]
    img, y = train[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and isinstance(y, int)
    assert y == int(np.load(out / "train_targets.npy")[0])
    lock = json.loads((md.raw_root(cfg) / "checksums" / f"{name}.lock.json").read_text())
    assert lock["tree"]["files"] > 0


def test_eval_cache_uses_the_model_resolution_and_eval_geometry(cfg, pins):
    from moe_adapters.data.transforms import eval_geometry

    build("DTD", md.raw_root(cfg) / "DTD", pins)
    out = md.prepare_dataset("DTD", Path(cfg) / "DTD", data_root=cfg, pins=pins, download=False, image_size=PAPER_SIZE)
    images, _ = PreparedDataset(out).test_arrays()
    assert images.shape == (3, 3, 224, 224)  # ViT-B-16's resolution, read from its open_clip config
    first = np.load(out / "test_index.npy")[0]
    src = md.open_source("DTD", md.raw_root(cfg) / "DTD", {"split": "test", "partition": 1})
    want = np.asarray(eval_geometry(224)(src.ds[int(first)][0])).transpose(2, 0, 1)
    assert np.array_equal(images[0], want)


# ------------------------------------------------------------ checksums


def _tar(src_dir: Path, arcname: str, dest: Path) -> str:
    with tarfile.open(dest, "w:gz") as t:
        t.add(src_dir, arcname=arcname)
    return hashlib.sha256(dest.read_bytes()).hexdigest()


def test_pinned_checksum_mismatch_is_refused_and_the_file_never_used(cfg, pins):
    raw = md.raw_root(cfg) / "DTD"
    raw.mkdir(parents=True)
    (raw / "dtd-r1.0.1.tar.gz").write_bytes(b"not the archive")
    pins["datasets"]["DTD"]["sources"][0]["size"] = None  # reach the SHA-256 comparison
    out = Path(cfg) / "DTD"
    with pytest.raises(md.ChecksumError, match=r"DTD: .*dtd-r1\.0\.1\.tar\.gz is not the expected file; it was not used"):
        md.prepare_dataset("DTD", out, data_root=cfg, pins=pins, download=False, image_size=PAPER_SIZE)
    assert not (raw / "dtd").exists()  # never unpacked
    assert not (out / "meta.json").exists()


def test_archive_is_verified_then_unpacked_and_the_tree_is_locked(cfg, pins, tmp_path):
    stage = tmp_path / "stage"
    build("DTD", stage, pins)
    raw = md.raw_root(cfg) / "DTD"
    raw.mkdir(parents=True)
    sha = _tar(stage / "dtd" / "dtd", "dtd", raw / "dtd-r1.0.1.tar.gz")
    pins["datasets"]["DTD"]["sources"][0]["sha256"] = sha  # pinned, as in production
    out = md.prepare_dataset("DTD", tmp_path / "p1", data_root=cfg, pins=pins, download=False, image_size=32)
    assert (raw / "dtd" / "dtd" / "labels" / "train1.txt").is_file()
    assert PreparedDataset(out).meta["raw"]["pinned"] == ["dtd-r1.0.1.tar.gz"]
    # a file of the unpacked tree changes later: refused, naming it
    victim = sorted((raw / "dtd" / "dtd" / "images" / "banded").glob("*.jpg"))[0]
    jpeg(victim, 999)
    with pytest.raises(md.ChecksumError, match=r"images/banded/banded_0000\.jpg"):
        md.prepare_dataset("DTD", tmp_path / "p2", data_root=cfg, pins=pins, download=False, image_size=32)
    assert not (tmp_path / "p2" / "meta.json").exists()


def test_unpinned_archive_checked_against_torchvision_md5_then_recorded(cfg, pins, tmp_path):
    stage = tmp_path / "stage"
    build("CIFAR100", stage, pins)
    raw = md.raw_root(cfg) / "CIFAR100"
    raw.mkdir(parents=True)
    _tar(stage / "cifar-100-python", "cifar-100-python", raw / "cifar-100-python.tar.gz")
    src = pins["datasets"]["CIFAR100"]["sources"][0]
    src["md5"] = "0" * 32
    with pytest.raises(md.ChecksumError, match="md5 differs from torchvision's"):
        md.prepare_dataset("CIFAR100", tmp_path / "p", data_root=cfg, pins=pins, download=False, image_size=32)
    src["md5"] = hashlib.md5((raw / "cifar-100-python.tar.gz").read_bytes()).hexdigest()
    md.prepare_dataset("CIFAR100", tmp_path / "p", data_root=cfg, pins=pins, download=False, image_size=32)
    lock = json.loads((md.raw_root(cfg) / "checksums" / "CIFAR100.lock.json").read_text())
    assert lock["sources"]["cifar-100-python.tar.gz"] == hashlib.sha256(
        (raw / "cifar-100-python.tar.gz").read_bytes()
    ).hexdigest()


def test_recorded_source_sha256_refuses_a_changed_file(cfg, pins, tmp_path):
    build("Flowers", md.raw_root(cfg) / "Flowers", pins)
    md.prepare_dataset("Flowers", tmp_path / "p1", data_root=cfg, pins=pins, download=False, image_size=32)
    mat = md.raw_root(cfg) / "Flowers" / "flowers-102" / "setid.mat"
    savemat(mat, {"trnid": np.array([1, 2]), "valid": np.array([4]), "tstid": np.array([5, 6, 3])})
    with pytest.raises(md.ChecksumError, match="setid.mat.*recorded on first use"):
        md.prepare_dataset("Flowers", tmp_path / "p2", data_root=cfg, pins=pins, download=False, image_size=32)


def test_pinned_md5s_are_torchvisions(pins):
    from torchvision import datasets as tvd

    ds = pins["datasets"]
    assert ds["DTD"]["sources"][0]["md5"] == tvd.DTD._MD5
    assert ds["Food"]["sources"][0]["md5"] == tvd.Food101._MD5
    assert ds["SUN397"]["sources"][0]["md5"] == tvd.SUN397._DATASET_MD5
    assert ds["CIFAR100"]["sources"][0]["md5"] == tvd.CIFAR100.tgz_md5
    assert ds["CIFAR100"]["tree_md5"] == {
        f"cifar-100-python/{f}": m for f, m in tvd.CIFAR100.train_list + tvd.CIFAR100.test_list
    } | {"cifar-100-python/meta": tvd.CIFAR100.meta["md5"]}
    assert {s["file"]: s["md5"] for s in ds["MNIST"]["sources"]} == dict(tvd.MNIST.resources)
    flowers = {Path(s["file"]).name: s["md5"] for s in ds["Flowers"]["sources"]}
    assert flowers == {f: m for f, m in tvd.Flowers102._file_dict.values()}
    assert [s["md5"] for s in ds["OxfordPet"]["sources"]] == [m for _, m in tvd.OxfordIIITPet._RESOURCES]


# ------------------------------------------------------------ missing data, offline


def test_missing_manual_dataset_names_it_and_where_while_others_prepare(cfg, pins):
    with pytest.raises(DataMissingError) as e:
        md.prepare_dataset("StanfordCars", Path(cfg) / "StanfordCars", data_root=cfg, pins=pins, image_size=PAPER_SIZE)
    msg = str(e.value)
    where = str((md.raw_root(cfg) / "StanfordCars").resolve())
    assert "StanfordCars" in msg and "by hand" in msg and where in msg
    for f in ("car_devkit.tgz", "cars_train.tgz", "cars_test.tgz", "cars_test_annos_withlabels.mat"):
        assert f in msg
    build("DTD", md.raw_root(cfg) / "DTD", pins)
    out = md.prepare_dataset("DTD", Path(cfg) / "DTD", data_root=cfg, pins=pins, image_size=32)
    assert (out / "meta.json").is_file()


def test_offline_check_of_everything_is_fast_and_one_message(cfg, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torchvision.datasets.utils as tvu

    monkeypatch.setattr(tvu, "download_url", lambda *a, **k: pytest.fail("no network may be attempted"))
    start = time.perf_counter()
    with pytest.raises(DataMissingError) as e:
        md.check_all(cfg, download=True)  # a download is asked for, but HF_HUB_OFFLINE=1 wins
    msg = str(e.value)
    assert time.perf_counter() - start < 3
    assert msg.startswith("12 of 12 datasets cannot be prepared")
    for name in md.dataset_names():
        assert f"\n{name}: raw data missing" in msg
    assert "network access is off" in msg
    for name in ("Food", "SUN397"):  # one dataset alone fails just as fast
        start = time.perf_counter()
        with pytest.raises(DataMissingError, match=name):
            md.prepare_dataset(name, Path(cfg) / name, data_root=cfg, download=True, image_size=PAPER_SIZE)
        assert time.perf_counter() - start < 1


def test_cli_check_all(tmp_path, capsys, monkeypatch):
    from moe_adapters.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["prepare", "--check-all", "--set", f"data_root={tmp_path / 'data'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "12 of 12 datasets cannot be prepared" in err and "TinyImageNet" in err
    rc = main(["prepare", "--set", f"data_root={tmp_path / 'data'}", "--dataset", "MNIST"])
    assert rc == 2 and "MNIST: raw data missing" in capsys.readouterr().err


def test_check_all_reports_present_and_prepared(cfg, pins):
    build("DTD", md.raw_root(cfg) / "DTD", pins)
    build("MNIST", md.raw_root(cfg) / "MNIST", pins)
    md.prepare_dataset("MNIST", Path(cfg) / "MNIST", data_root=cfg, pins=pins, image_size=32)
    assert md.check_all(cfg, ["DTD", "MNIST"], pins=pins) == {"DTD": "raw data present", "MNIST": "prepared"}


def test_download_goes_through_part_file_and_verification(cfg, pins, tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    stage = tmp_path / "stage"
    build("EuroSAT", stage, pins)
    archive = tmp_path / "EuroSAT.zip"
    import shutil

    shutil.make_archive(str(archive.with_suffix("")), "zip", stage / "eurosat")
    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, filename))
        shutil.copy(archive, Path(root) / filename)

    monkeypatch.setattr(tvu, "download_url", fake_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    src = pins["datasets"]["EuroSAT"]["sources"][0]
    src["sha256"] = "f" * 64  # a wrong pin: the download is refused and not kept
    with pytest.raises(md.ChecksumError, match="EuroSAT.zip is not the expected file"):
        md.prepare_dataset("EuroSAT", tmp_path / "p", data_root=cfg, pins=pins, download=True, image_size=32)
    raw = md.raw_root(cfg) / "EuroSAT"
    assert not (raw / "EuroSAT.zip").exists() and not (raw / "eurosat").exists()
    src["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    md.prepare_dataset("EuroSAT", tmp_path / "p", data_root=cfg, pins=pins, download=True, image_size=32)
    assert calls[-1] == (src["url"], "EuroSAT.zip.part") and (raw / "EuroSAT.zip").is_file()


# ------------------------------------------------------------ decoding


def test_undecodable_test_image_is_reported_and_nothing_prepared(cfg, pins):
    build("DTD", md.raw_root(cfg) / "DTD", pins, bad_test=True)
    out = Path(cfg) / "DTD"
    with pytest.raises(md.DecodeError) as e:
        md.prepare_dataset("DTD", out, data_root=cfg, pins=pins, image_size=32)
    msg = str(e.value)
    assert msg.startswith("DTD: 1 test image(s) failed to decode") and "polka-dotted/polka-dotted_0005.jpg" in msg
    assert not (out / "meta.json").exists() and not list(out.glob("*.tmp"))


def test_truncated_train_image_stops_prepare(cfg, pins):
    build("DTD", md.raw_root(cfg) / "DTD", pins, bad_train=True)
    out = Path(cfg) / "DTD"
    with pytest.raises(md.DecodeError, match=r"(?s)DTD: 1 train image\(s\) failed to decode.*banded_0000\.jpg"):
        md.prepare_dataset("DTD", out, data_root=cfg, pins=pins, image_size=32)
    assert not (out / "meta.json").exists()
    # nothing was trusted: once the copy is repaired, it prepares (no stale first-use record in the way)
    assert not (md.raw_root(cfg) / "checksums" / "DTD.lock.json").exists()
    jpeg(md.raw_root(cfg) / "DTD" / "dtd" / "dtd" / "images" / "banded" / "banded_0000.jpg", 0)
    md.prepare_dataset("DTD", out, data_root=cfg, pins=pins, image_size=32)
    assert (out / "meta.json").is_file()


# ------------------------------------------------------------ splits, sizes, few-shot


@pytest.mark.parametrize("name", ["Caltech101", "EuroSAT", "SUN397"])
def test_random_split_index_lists_reproduce_the_pins(pins, name):
    spec = pins["datasets"][name]
    n = spec["split"]["n"]
    train, test = md.random_split_indices(n, pins["random_split"]["seed"], pins["random_split"]["fraction"])
    assert (len(train), len(test)) == (spec["sizes"]["train"], spec["sizes"]["test"])
    assert md.index_digest(train, test) == spec["split"]["perm_sha256"]
    a, b = torch.utils.data.random_split(
        range(n), [int(0.8 * n), n - int(0.8 * n)], generator=torch.Generator().manual_seed(42)
    )
    assert train.tolist() == list(a.indices) and test.tolist() == list(b.indices)
    assert sorted(train.tolist() + test.tolist()) == list(range(n))


def test_recorded_sizes(pins):
    n = {k: v["split"].get("n") for k, v in pins["datasets"].items()}
    assert (n["Caltech101"], n["EuroSAT"], n["SUN397"]) == (8677, 27000, 108754)


def test_a_dataset_of_another_size_is_refused(cfg, pins):
    build("EuroSAT", md.raw_root(cfg) / "EuroSAT", pins)
    pins["datasets"]["EuroSAT"]["split"]["n"] = 27000
    with pytest.raises(md.DatasetSizeError, match="20 images on disk, the recorded size is 27,000"):
        md.prepare_dataset("EuroSAT", Path(cfg) / "EuroSAT", data_root=cfg, pins=pins, image_size=32)


def test_sun397_order_is_sorted_and_its_file_list_pinned(cfg, pins):
    build("SUN397", md.raw_root(cfg) / "SUN397", pins)
    src = md.open_source("SUN397", md.raw_root(cfg) / "SUN397", {})
    assert src.paths == sorted(src.paths)
    pins["datasets"]["SUN397"]["order_sha256"] = "0" * 64
    with pytest.raises(md.DatasetSizeError, match="not the recorded list"):
        md.prepare_dataset("SUN397", Path(cfg) / "SUN397", data_root=cfg, pins=pins, image_size=32)


def test_few_shot_indices_are_the_training_loop_selection():
    labels = np.array([i % 7 for i in range(90)])

    class Ids(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return torch.tensor([i]), int(labels[i])

    got = md.few_shot_indices(labels, 5, seed=42, batch_size=16)
    subset = few_shot_subset(TrainBatches(Ids(), None, 16, 42), 5, 7)
    assert got.tolist() == subset.images[:, 0].tolist()
    assert np.bincount(labels[got]).tolist() == [5] * 7
