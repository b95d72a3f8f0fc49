"""Raw data on disk: what is present, what is missing and where to put it, downloads (only when asked), and the
checks every file passes before it is read (pinned size and SHA-256, torchvision's md5, trust on first use),
atomic unpacking, and the file-by-file manifest of the unpacked tree."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ...fsutil import read_json, write_json, write_text
from ..prepared import DataMissingError, sha256_file
from .pins import MAX_LISTED, ChecksumError, _spec, dataset_names, load_pins, network_allowed, raw_root

log = logging.getLogger(__name__)





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
    data_root: str | Path, datasets: list[str] | None = None, *, pins: dict | None = None, download: bool | None = None
) -> dict[str, str]:
    """Check every dataset at once (stat only, no network): one DataMissingError listing everything missing.

    Returns {dataset: "prepared" | "raw data present" | "will download"} when nothing is missing.
    """
    pins = pins or load_pins()
    names = datasets or dataset_names(pins)
    net = network_allowed(download)
    status, problems = {}, []
    for name in names:
        if (Path(data_root) / name / "meta.json").is_file():
            status[name] = "prepared"
            continue
        spec = _spec(pins, name)
        pres = presence(spec, raw_root(data_root) / name)
        if pres.ready:
            status[name] = "raw data present"
        elif net and spec["download"] == "auto" and all(s.get("url") for s in pres.missing):
            status[name] = "will download"
        else:
            problems.append(missing_message(name, spec, raw_root(data_root) / name, pres, net))
    if problems:
        raise DataMissingError(
            f"{len(problems)} of {len(names)} datasets cannot be prepared:\n" + "\n".join(problems)
            + "\nWhat each dataset needs and where to get it: README, section Data."
        )
    return status





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
