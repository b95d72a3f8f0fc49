"""The paper's datasets (11 MTIL datasets, TinyImageNet; CIFAR100 also serves class-incremental runs):
fetched, verified, split and cached in the prepared format.

Raw data lives in <data_root>/raw/<Dataset>/ in the layout torchvision reads (see README, "Data"); the pinned
facts (sources, sizes, SHA-256, split permutations) are in the packaged protocol/mtil_data.yaml. Preparing a
dataset: check it is present (failing in milliseconds with what to put where), download it only when asked and
the network is allowed, verify every file it will read, unpack atomically, hash the unpacked tree (trust on
first use, refused if it later changes), open it with torchvision, check sizes and classes, split, check that
every train image decodes, decode the test split once into the uint8 evaluation cache, draw the few-shot
index lists, and write meta.json last.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tvd

from .data import TrainBatches, eval_geometry
from .fsutil import read_json, write_json, write_text
from .prepared import DataMissingError, sha256_file, write_prepared

log = logging.getLogger(__name__)

FEW_SHOTS = (5,)  # the paper's few-shot setting
MAX_LISTED = 20  # bad files named in one error message


class ChecksumError(ValueError):
    """A raw file differs from its pinned or recorded checksum; it was not used."""


class DatasetSizeError(ValueError):
    """A dataset has another size or class count than the recorded one, so its splits would differ."""


class DecodeError(ValueError):
    """Images of a dataset fail to decode; nothing was prepared."""


# ---------------------------------------------------------------- pinned facts


@cache
def _packaged_pins() -> str:
    return str(resources.files("moe_adapters") / "protocol" / "mtil_data.yaml")


def load_pins(path: str | Path | None = None) -> dict:
    """The pinned data facts (a fresh copy: tests may shrink sizes and drop sums for tiny fake datasets)."""
    return copy.deepcopy(_read_yaml(str(path or _packaged_pins())))


@cache
def _read_yaml(path: str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def dataset_names(pins: dict | None = None) -> list[str]:
    """Every dataset this module prepares: the 11 MTIL datasets and TinyImageNet."""
    return list((pins or load_pins())["datasets"])


def _spec(pins: dict, name: str) -> dict:
    try:
        return pins["datasets"][name]
    except KeyError:
        raise KeyError(
            f"no raw-data recipe for dataset {name!r} (known: {', '.join(pins['datasets'])})"
        ) from None


def raw_root(cfg: dict) -> Path:
    """Where raw downloads and hand-placed copies live: <data_root>/raw."""
    return Path(cfg["data_root"]) / "raw"


def network_allowed(download: bool | None = None) -> bool:
    """Downloads happen only when asked (flag or MOE_ADAPTERS_DOWNLOAD=1) and never under HF_HUB_OFFLINE=1."""
    if download is None:
        download = os.environ.get("MOE_ADAPTERS_DOWNLOAD", "").lower() in ("1", "true", "yes", "on")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    return bool(download) and not offline


# ---------------------------------------------------------------- presence


@dataclass
class Presence:
    """What of a dataset's raw data is on disk."""

    unpacked: bool  # every `expect` path exists
    needed: list[dict]  # sources the next prepare reads: loose files, plus archives when not unpacked
    missing: list[dict]  # needed sources that are absent

    @property
    def ready(self) -> bool:
        return not self.missing


def presence(spec: dict, raw: Path) -> Presence:
    """Stat only: is the unpacked layout there, and which needed files are absent."""
    unpacked = all((raw / p).exists() for p in spec["expect"])
    needed = [s for s in spec["sources"] if not s.get("extract_to") or not unpacked]
    return Presence(unpacked, needed, [s for s in needed if not (raw / s["file"]).is_file()])


def _human(n: int | None) -> str:
    if n is None:
        return "size not pinned"
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n:,} B"


def missing_message(name: str, spec: dict, raw: Path, pres: Presence, net: bool) -> str:
    """What is missing for one dataset, where exactly to put it and where to get it."""
    folder = raw.resolve()
    if spec["download"] == "manual":
        why = f"placed by hand ({spec.get('why_manual', 'no working download')})"
    elif not net:
        why = (
            "downloaded automatically, but network access is off (run `moe-adapters prepare --dataset "
            f"{name} --download` with HF_HUB_OFFLINE unset or 0), or placed by hand"
        )
    else:
        why = "downloaded automatically (the download did not complete)"
    lines = [f"{name}: raw data missing, to be {why}. Put in {folder}/:"]
    for s in pres.missing:
        pin = f"sha256 {s['sha256'][:16]}…" if s.get("sha256") else "sha256 recorded on first use"
        lines.append(f"    {s['file']}  ({_human(s.get('size'))}, {pin})  from {s.get('url') or 'a mirror'}")
    if not pres.unpacked and any(s.get("extract_to") for s in spec["sources"]):
        lines.append("  or its unpacked layout, with: " + ", ".join(f"{folder}/{p}" for p in spec["expect"]))
    return "\n".join(lines)


def check_all(
    cfg: dict, datasets: list[str] | None = None, *, pins: dict | None = None, download: bool | None = None
) -> dict[str, str]:
    """Check every dataset at once (stat only, no network): one DataMissingError listing everything missing.

    Returns {dataset: "prepared" | "raw data present" | "will download"} when nothing is missing.
    """
    pins = pins or load_pins()
    names = datasets or dataset_names(pins)
    net = network_allowed(download)
    status, problems = {}, []
    for name in names:
        spec = _spec(pins, name)
        if (Path(cfg["data_root"]) / name / "meta.json").is_file():
            status[name] = "prepared"
            continue
        pres = presence(spec, raw_root(cfg) / name)
        if pres.ready:
            status[name] = "raw data present"
        elif net and spec["download"] == "auto" and all(s.get("url") for s in pres.missing):
            status[name] = "will download"
        else:
            problems.append(missing_message(name, spec, raw_root(cfg) / name, pres, net))
    if problems:
        raise DataMissingError(
            f"{len(problems)} of {len(names)} datasets cannot be prepared:\n" + "\n".join(problems)
        )
    return status


# ---------------------------------------------------------------- fetch and verify


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(name: str, spec: dict, raw: Path, sources: list[dict]) -> None:
    """Fetch missing sources through torchvision's downloader into `<file>.part`, renamed once verified."""
    from torchvision.datasets.utils import download_url

    for s in sources:
        dest = raw / s["file"]
        part = dest.with_name(dest.name + ".part")
        log.info("%s: downloading %s", name, s["url"])
        try:
            with _socket_timeout(60):
                download_url(s["url"], str(part.parent), filename=part.name)
        except Exception as e:
            part.unlink(missing_ok=True)
            raise DataMissingError(
                f"{name}: downloading {s['url']} failed ({type(e).__name__}: {e}); put {s['file']} in "
                f"{raw.resolve()}/ by hand"
            ) from None
        _verify_source(name, s, part, raw, display=dest)
        os.replace(part, dest)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _lock_path(raw: Path) -> Path:
    return raw.parent / "checksums" / f"{raw.name}.lock.json"


def _read_lock(raw: Path) -> dict:
    p = _lock_path(raw)
    return read_json(p) if p.is_file() else {"sources": {}, "tree": None}


def _verify_source(name: str, s: dict, path: Path, raw: Path, display: Path | None = None) -> str:
    """Size, pinned SHA-256 (else torchvision's md5 plus the SHA-256 recorded on first use); returns the SHA-256."""
    shown = display or path
    bad = f"{name}: {shown} is not the expected file; it was not used. Delete it and fetch it again"
    if s.get("size") is not None and path.stat().st_size != s["size"]:
        raise ChecksumError(f"{bad} (size {path.stat().st_size:,} B, expected {s['size']:,} B)")
    have = sha256_file(path)
    if s.get("sha256"):
        if have != s["sha256"]:
            raise ChecksumError(f"{bad} (sha256 {have}, pinned {s['sha256']})")
        return have
    if s.get("md5") and _md5(path) != s["md5"]:
        raise ChecksumError(f"{bad} (md5 differs from torchvision's {s['md5']})")
    recorded = _read_lock(raw)["sources"].get(s["file"])
    if recorded and recorded != have:
        raise ChecksumError(
            f"{bad} (sha256 {have}, recorded on first use {recorded} in {_lock_path(raw)}; if the new file is "
            "legitimately different, delete that entry)"
        )
    return have


def _extract(name: str, s: dict, raw: Path) -> None:
    """Unpack a verified archive into a private folder, then rename its top-level entries into place."""
    from torchvision.datasets.utils import extract_archive

    dest = raw / s["extract_to"]
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=raw))
    try:
        log.info("%s: unpacking %s", name, s["file"])
        stage = tmp / "stage"
        extract_archive(str(raw / s["file"]), str(stage))
        out = stage
        if s.get("inner"):
            out = tmp / "inner"
            extract_archive(str(stage / s["inner"]), str(out))
        for entry in sorted(out.iterdir()):
            if not (dest / entry.name).exists():
                os.replace(entry, dest / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tree_manifest(name: str, root: Path, threads: int = 8) -> list[str]:
    """`sha256  relative/path` for every file under the dataset's tree, sorted (sha256sum -c format)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise DataMissingError(f"{name}: {root} holds no files")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        sums = list(pool.map(sha256_file, files))
    return [f"{h}  {p.relative_to(root).as_posix()}" for h, p in zip(sums, files, strict=True)]


def _verify_tree(name: str, spec: dict, raw: Path, lock: dict) -> dict:
    """Hash the unpacked tree; every later result must match the first recorded one file for file."""
    root = raw / spec["tree"]
    for rel, md5 in (spec.get("tree_md5") or {}).items():
        if _md5(raw / rel) != md5:
            raise ChecksumError(f"{name}: {raw / rel} differs from torchvision's md5 {md5}; it was not used")
    lines = _tree_manifest(name, root)
    text = "\n".join(lines) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()
    manifest = raw.parent / "checksums" / f"{raw.name}.manifest.sha256"
    rec = lock.get("tree")
    if rec and rec["sha256"] != digest:
        old = set(manifest.read_text().splitlines()) if manifest.is_file() else set()
        changed = sorted({ln.split("  ", 1)[1] for ln in set(lines) ^ old})
        shown = "\n    ".join(changed[:MAX_LISTED]) + ("\n    ..." if len(changed) > MAX_LISTED else "")
        raise ChecksumError(
            f"{name}: the files under {root} differ from those recorded on first use ({len(changed)} paths "
            f"added, removed or changed; none was used):\n    {shown}\nRestore them, or delete "
            f"{_lock_path(raw)} and {manifest} to accept the new copy."
        )
    return {"sha256": digest, "files": len(lines), "manifest": manifest.name, "_text": None if rec else text}


def fetch_and_verify(
    name: str, spec: dict, raw: Path, *, download: bool | None = None
) -> dict:
    """Make the raw data present and verified (download if allowed, check sums, unpack); returns the checksums.

    Trust-on-first-use records are returned under "_record", for record_trust once the whole prepare succeeded:
    an incomplete hand-placed copy that later checks reject is never recorded as the trusted one.
    """
    pres = presence(spec, raw)
    if pres.missing:
        net = network_allowed(download)
        if not (net and spec["download"] == "auto" and all(s.get("url") for s in pres.missing)):
            raise DataMissingError(missing_message(name, spec, raw, pres, net))
        raw.mkdir(parents=True, exist_ok=True)
        _download(name, spec, raw, pres.missing)
    lock = _read_lock(raw)
    sums = {s["file"]: _verify_source(name, s, raw / s["file"], raw) for s in pres.needed}
    if not pres.unpacked:
        for s in pres.needed:
            if s.get("extract_to"):
                _extract(name, s, raw)
        missing = [p for p in spec["expect"] if not (raw / p).exists()]
        if missing:
            raise DataMissingError(f"{name}: after unpacking, still missing under {raw}: {', '.join(missing)}")
    tree = _verify_tree(name, spec, raw, lock)
    manifest_text = tree.pop("_text")
    pinned = {s["file"] for s in pres.needed if s.get("sha256")}
    return {
        "sources_sha256": sums,
        "pinned": sorted(pinned),
        "trust_on_first_use": sorted(set(sums) - pinned) + [f"tree:{spec['tree']}"],
        "tree": tree,
        "_record": {
            "lock": {"dataset": name, "sources": {**lock["sources"], **sums},
                     "tree": {"sha256": tree["sha256"], "files": tree["files"]}},
            "manifest": manifest_text,
        },
    }


def record_trust(raw: Path, record: dict) -> None:
    """Write the lock (SHA-256 of every source, digest of the tree) and, the first time, the tree's manifest."""
    if record["manifest"] is not None:
        write_text(raw.parent / "checksums" / f"{raw.name}.manifest.sha256", record["manifest"])
    write_json(_lock_path(raw), record["lock"])


# ---------------------------------------------------------------- readers (torchvision, md5 already checked)


class _CIFAR100(tvd.CIFAR100):
    """torchvision's CIFAR100 without re-hashing files this module has verified."""

    train_list = [[f, None] for f, _ in tvd.CIFAR100.train_list]
    test_list = [[f, None] for f, _ in tvd.CIFAR100.test_list]
    meta = {**tvd.CIFAR100.meta, "md5": None}


class _Flowers102(tvd.Flowers102):
    """torchvision's Flowers102 without re-hashing the .mat files this module has verified."""

    _file_dict = {k: (f, None) for k, (f, _) in tvd.Flowers102._file_dict.items()}


class _SUN397Sorted(tvd.SUN397):
    """torchvision's SUN397 with its samples in sorted path order (rglob order is the file system's)."""

    def __init__(self, root: str, **kw):
        super().__init__(root, **kw)
        pairs = sorted(zip(self._image_files, self._labels, strict=True),
                       key=lambda p: p[0].relative_to(self._data_dir).as_posix())
        self._image_files = [p for p, _ in pairs]
        self._labels = [y for _, y in pairs]


class TinyImageNet(Dataset):
    """tiny-imagenet-200: train/<wnid>/images/*.JPEG (ImageFolder order: sorted wnids, sorted files) or the
    labelled val split (val_annotations.txt order)."""

    def __init__(self, root: str, split: str = "train"):
        base = Path(root) / "tiny-imagenet-200"
        self.wnids = sorted(w for w in (base / "wnids.txt").read_text().split() if w)
        words = {}
        for line in (base / "words.txt").read_text().splitlines():
            wnid, _, text = line.partition("\t")
            words[wnid] = text.strip()
        first = [words.get(w, w).split(",")[0].strip() for w in self.wnids]
        dup = {c for c in first if first.count(c) > 1}
        self.classes = [words[w] if c in dup else c for w, c in zip(self.wnids, first, strict=True)]
        idx = {w: i for i, w in enumerate(self.wnids)}
        self.samples: list[tuple[str, int]] = []
        if split == "train":
            for w in self.wnids:
                for p in sorted((base / "train" / w / "images").glob("*.JPEG")):
                    self.samples.append((str(p), idx[w]))
        elif split == "val":
            for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2:
                    self.samples.append((str(base / "val" / "images" / parts[0]), idx[parts[1]]))
        else:
            raise ValueError(f"TinyImageNet split must be train or val, got {split!r}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB"), label


READERS = {
    "FGVCAircraft": tvd.FGVCAircraft,
    "Caltech101": tvd.Caltech101,
    "CIFAR100": _CIFAR100,
    "DTD": tvd.DTD,
    "EuroSAT": tvd.EuroSAT,
    "Flowers102": _Flowers102,
    "Food101": tvd.Food101,
    "MNIST": tvd.MNIST,
    "OxfordIIITPet": tvd.OxfordIIITPet,
    "StanfordCars": tvd.StanfordCars,
    "SUN397": _SUN397Sorted,
    "TinyImageNet": TinyImageNet,
}


@dataclass
class Source:
    """A torchvision dataset (no transform) with its sample paths (None for in-memory arrays), labels, classes."""

    ds: Dataset
    paths: list[str] | None
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def open_source(reader: str, root: str | Path, args: dict) -> Source:
    """Open one split of a dataset with torchvision (download off) and read its paths, labels and classes."""
    ds = READERS[reader](str(root), **args)
    if reader in ("FGVCAircraft", "DTD", "Flowers102", "Food101", "SUN397"):
        paths, labels = [str(p) for p in ds._image_files], list(ds._labels)
    elif reader == "OxfordIIITPet":
        paths, labels = [str(p) for p in ds._images], list(ds._labels)
    elif reader in ("EuroSAT", "TinyImageNet", "StanfordCars"):
        samples = ds._samples if reader == "StanfordCars" else ds.samples
        paths, labels = [str(p) for p, _ in samples], [int(y) for _, y in samples]
    elif reader == "Caltech101":
        base = Path(ds.root) / "101_ObjectCategories"
        paths = [str(base / ds.categories[y] / f"image_{k:04d}.jpg") for k, y in zip(ds.index, ds.y, strict=True)]
        labels = list(ds.y)
    elif reader in ("CIFAR100", "MNIST"):
        paths, labels = None, [int(y) for y in ds.targets]
    else:  # pragma: no cover - READERS and this list are kept together
        raise KeyError(reader)
    classes = list(ds.categories) if reader == "Caltech101" else list(ds.classes)
    return Source(ds, paths, np.asarray(labels, dtype=np.int64), classes)


def _classnames(name: str, spec: dict, src: Source, proto_entry: dict | None) -> list[str]:
    rule = spec["classnames"]
    if rule == "protocol":
        names = list(proto_entry["classnames"])
    elif rule == "dataset":
        names = [c.replace("_", " ") for c in src.classes]
    elif rule == "digits":
        names = [c.split(" - ")[0] for c in src.classes]
    elif rule == "words":
        names = list(src.classes)
    else:
        raise ValueError(f"{name}: unknown class-name rule {rule!r}")
    if spec.get("categories") is not None and list(src.classes) != list(spec["categories"]):
        raise DatasetSizeError(
            f"{name}: the class folders are {src.classes[:5]}... ({len(src.classes)}), not the recorded "
            f"{len(spec['categories'])} categories the protocol's class names follow"
        )
    if len(names) != spec["num_classes"] or len(src.classes) != spec["num_classes"]:
        raise DatasetSizeError(
            f"{name}: {len(src.classes)} classes on disk, {len(names)} names; the protocol has {spec['num_classes']}"
        )
    return names


def _templates(name: str, spec: dict, proto: dict) -> list[str]:
    if spec.get("templates_from") == "cil":
        cil = _read_yaml(str(resources.files("moe_adapters") / "protocol" / "cil.yaml"))
        key = name.lower()
        return sorted({s["prompt_template"] for s in cil["settings"].values() if s["dataset"] == key})
    return list(proto["datasets"][name]["templates"])


# ---------------------------------------------------------------- splits and few-shot


def random_split_indices(n: int, seed: int = 42, fraction: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's split: random_split(range(n), [int(f*n), n-int(f*n)], Generator().manual_seed(seed))."""
    n_train = int(fraction * n)
    a, b = torch.utils.data.random_split(
        range(n), [n_train, n - n_train], generator=torch.Generator().manual_seed(seed)
    )
    return np.asarray(a.indices, dtype=np.int64), np.asarray(b.indices, dtype=np.int64)


def index_digest(train: np.ndarray, test: np.ndarray) -> str:
    """SHA-256 of the index lists (train then test, little-endian int64), as pinned in mtil_data.yaml."""
    return hashlib.sha256(np.concatenate([train, test]).astype("<i8").tobytes()).hexdigest()


def few_shot_indices(labels: np.ndarray, shots: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """Positions in the train split of the first `shots` images per class met in one pass of the training loader.

    The pass is the project's deterministic epoch-0 order (data.TrainBatches with the run's seed), so this is the
    selection train.few_shot_subset makes, grouped by class in order of first appearance. The reference scans a
    DataLoader(shuffle=True) driven by the global RNG: same rule, not the same images bit for bit.
    """
    batches = TrainBatches(range(len(labels)), None, batch_size, seed)
    kept: dict[int, list[int]] = {}
    for it in range(batches.batches_per_epoch):
        for i in batches.indices(it)[0]:
            got = kept.setdefault(int(labels[i]), [])
            if len(got) < shots:
                got.append(i)
    return np.asarray([i for v in kept.values() for i in v], dtype=np.int64)


# ---------------------------------------------------------------- decoding


class _EvalDecode(Dataset):
    """Test samples through the deterministic eval geometry, as uint8 CHW; failures come back as messages."""

    def __init__(self, src: Source, indices: np.ndarray, size: int):
        self.ds, self.paths, self.indices, self.size = src.ds, src.paths, indices, size
        self.geometry = eval_geometry(size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = int(self.indices[k])
        try:
            img, label = self.ds[i]
            arr = np.asarray(self.geometry(img), dtype=np.uint8)
            if arr.shape != (self.size, self.size, 3):
                raise ValueError(f"decoded to shape {arr.shape}")
            return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))), int(label), ""
        except Exception as e:  # reported with the path, all failures together
            where = self.paths[i] if self.paths else f"sample {i}"
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1, f"{where}: {type(e).__name__}: {e}"


class _DecodeCheck(Dataset):
    """Full decode of a train image at reduced JPEG scale (catches truncated or corrupt files cheaply)."""

    def __init__(self, paths: list[str], indices: np.ndarray):
        self.paths, self.indices = paths, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> str:
        path = self.paths[int(self.indices[k])]
        try:
            with Image.open(path) as im:
                im.draft("RGB", (64, 64))
                im.load()
            return ""
        except Exception as e:
            return f"{path}: {type(e).__name__}: {e}"


def _collate(batch):
    return batch


def _raise_decode(name: str, split: str, errors: list[str]) -> None:
    if errors:
        shown = "\n    ".join(errors[:MAX_LISTED]) + ("\n    ..." if len(errors) > MAX_LISTED else "")
        raise DecodeError(
            f"{name}: {len(errors)} {split} image(s) failed to decode; the dataset was not prepared "
            f"(no meta.json), so no training runs on a partial dataset. Re-fetch or remove them:\n    {shown}"
        )


def check_train_decodes(name: str, src: Source, indices: np.ndarray, workers: int) -> None:
    """Every train image of the split decodes, or DecodeError names each bad one."""
    if src.paths is None:
        return
    loader = DataLoader(_DecodeCheck(src.paths, indices), batch_size=256, num_workers=workers,
                        collate_fn=_collate)
    _raise_decode(name, "train", [e for batch in loader for e in batch if e])


def build_eval_cache(name: str, src: Source, indices: np.ndarray, size: int, workers: int, dest: Path) -> np.ndarray:
    """Decode the test split once into a uint8 [N,3,S,S] .npy at `dest`; returns the labels."""
    out = np.lib.format.open_memmap(dest, mode="w+", dtype=np.uint8, shape=(len(indices), 3, size, size))
    labels = np.empty(len(indices), dtype=np.int64)
    errors: list[str] = []
    loader = DataLoader(_EvalDecode(src, indices, size), batch_size=64, num_workers=workers)
    pos = 0
    for x, y, err in loader:
        out[pos : pos + len(y)] = x.numpy()
        labels[pos : pos + len(y)] = y.numpy()
        errors.extend(e for e in err if e)
        pos += len(y)
    out.flush()
    del out
    _raise_decode(name, "test", errors)
    return labels


# ---------------------------------------------------------------- prepare


def _image_size(cfg: dict) -> int:
    from .factory import config_image_size

    return config_image_size(cfg)


def prepare_dataset(
    cfg: dict,
    dataset: str,
    out: str | Path,
    *,
    pins: dict | None = None,
    download: bool | None = None,
    image_size: int | None = None,
) -> Path:
    """Fetch (if allowed), verify, split and cache one dataset into `out` in the prepared format."""
    from .protocol import load_protocol

    pins = pins or load_pins()
    spec = _spec(pins, dataset)
    raw = raw_root(cfg) / dataset
    out = Path(out)
    checks = fetch_and_verify(dataset, spec, raw, download=download)
    record = checks.pop("_record")

    split = spec["split"]
    if split["kind"] == "random_split":
        train_args = test_args = dict(split.get("args") or {})
    else:
        train_args, test_args = dict(split["train"]), dict(split["test"])
    train_src = open_source(spec["reader"], raw, train_args)
    test_src = train_src if test_args == train_args else open_source(spec["reader"], raw, test_args)

    if spec.get("order_sha256"):
        rels = sorted(Path(p).relative_to(raw / spec["tree"]).as_posix() for p in train_src.paths or [])
        have = hashlib.sha256(("\n".join(rels) + "\n").encode()).hexdigest()
        if have != spec["order_sha256"]:
            raise DatasetSizeError(
                f"{dataset}: the image files under {raw / spec['tree']} ({len(rels):,}) are not the recorded "
                f"list (sha256 {have[:16]}…, recorded {spec['order_sha256'][:16]}…); the split would differ"
            )
    if split["kind"] == "random_split":
        n = len(train_src)
        if n != split["n"]:
            raise DatasetSizeError(
                f"{dataset}: {n:,} images on disk, the recorded size is {split['n']:,}; refusing, because the "
                "random split (which depends only on the size and the seed) would differ from the protocol's"
            )
        seed, frac = pins["random_split"]["seed"], pins["random_split"]["fraction"]
        train_idx, test_idx = random_split_indices(n, seed, frac)
        if split.get("perm_sha256") and index_digest(train_idx, test_idx) != split["perm_sha256"]:
            raise DatasetSizeError(
                f"{dataset}: random_split with seed {seed} no longer gives the recorded index lists "
                f"(torch {torch.__version__}); restore them from a previous prepared copy"
            )
    else:
        train_idx = np.arange(len(train_src), dtype=np.int64)
        test_idx = np.arange(len(test_src), dtype=np.int64)
    sizes = {"train": len(train_idx), "test": len(test_idx)}
    if sizes != spec["sizes"]:
        raise DatasetSizeError(f"{dataset}: split sizes {sizes}, recorded {spec['sizes']}; refusing")

    proto = load_protocol("mtil", cfg.get("protocol"))
    classnames = _classnames(dataset, spec, train_src, proto["datasets"].get(dataset))
    templates = _templates(dataset, spec, proto)
    for src in {id(train_src): train_src, id(test_src): test_src}.values():
        if len(src) and (src.labels.min() < 0 or src.labels.max() >= len(classnames)):
            raise DatasetSizeError(f"{dataset}: labels outside 0..{len(classnames) - 1}")

    workers = int(cfg["eval"]["num_workers"])
    check_train_decodes(dataset, train_src, train_idx, workers)
    size = image_size or _image_size(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".test_images.", suffix=".npy.tmp", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        test_labels = build_eval_cache(dataset, test_src, test_idx, size, workers, tmp)
        train_targets = train_src.labels[train_idx]
        seed = int(cfg["train"]["seed"])
        fewshot = {f"fewshot_{k}.npy": few_shot_indices(train_targets, k, seed, cfg["train"]["batch_size"])
                   for k in FEW_SHOTS}
        train_source = {
            "kind": "torchvision",
            "reader": spec["reader"],
            "root": str(raw.resolve()),
            "dataset": dataset,
            "args": train_args,
            "index_file": "train_index.npy",
            "targets_file": "train_targets.npy",
            "full_size": len(train_src),
            "num_train": len(train_idx),
        }
        record_trust(raw, record)  # every check passed: this copy is the trusted one from now on
        write_prepared(
            out,
            name=dataset,
            classnames=classnames,
            templates=templates,
            test_images=tmp,
            test_labels=test_labels,
            train_source=train_source,
            extra_arrays={
                "train_index.npy": train_idx,
                "train_targets.npy": train_targets,
                "test_index.npy": test_idx,
                **fewshot,
            },
            extra={
                "split": {
                    **split,
                    **({"seed": pins["random_split"]["seed"], "fraction": pins["random_split"]["fraction"]}
                       if split["kind"] == "random_split" else {}),
                    "test_args": test_args,
                    "order": spec.get("order", "torchvision"),
                },
                "fewshot": {str(k): f"fewshot_{k}.npy" for k in FEW_SHOTS},
                "fewshot_rule": "first k per class in the epoch-0 order of data.TrainBatches(seed=train.seed)",
                "raw": checks,
            },
        )
    finally:
        tmp.unlink(missing_ok=True)
    log.info("%s: prepared %s (train %d, test %d)", dataset, out, sizes["train"], sizes["test"])
    return out


# ---------------------------------------------------------------- training reads the originals


class TrainSplit(Dataset):
    """The original train images of a split, as (RGB PIL image, label), for the protocol's random crop."""

    def __init__(self, ds: Dataset, indices: np.ndarray):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        img, label = self.ds[int(self.indices[i])]
        return img.convert("RGB"), int(label)


def torchvision_train_split(meta: dict, folder: str | Path | None = None) -> Dataset:
    """Re-open the raw train split recorded in meta["train"], checked against the stored index and label lists."""
    t = meta["train"]
    folder = Path(folder) if folder is not None else Path(t.get("folder", "."))
    root = Path(t["root"])
    if not root.is_dir():  # the data folder moved (another checkout): raw/ beside the prepared folder
        alt = folder.parent / "raw" / t["dataset"]
        if not alt.is_dir():
            raise DataMissingError(f"{meta['name']}: raw data not found at {root} nor {alt}")
        root = alt
    src = open_source(t["reader"], root, t["args"])
    if len(src) != t["full_size"]:
        raise DatasetSizeError(f"{meta['name']}: {len(src)} samples at {root}, prepared with {t['full_size']}")
    idx = np.load(folder / t["index_file"], allow_pickle=False)
    targets = np.load(folder / t["targets_file"], allow_pickle=False)
    if not np.array_equal(src.labels[idx], targets):
        raise DatasetSizeError(f"{meta['name']}: the raw data at {root} no longer matches the prepared split")
    return TrainSplit(src.ds, idx)
