"""Content hashes: recorded by the step that writes an artifact, checked by every step that reads it.

  prepared arrays (*.npy)   SHA-256 of each file, in the dataset's meta.json (rule prepare)
  safetensors files         metadata `content_sha256`: SHA-256 over the metadata (less that key), the tensor table
                            and the tensor bytes (task checkpoints, autoencoders, features, the mini's CLIP)
  evaluation JSONs          `content_sha256`: SHA-256 of the rest of the JSON, canonically encoded

A mismatch raises IntegrityError naming the file, both hashes and the rule that rebuilds it.

Hashing costs one read of the file. The evaluation jobs read the same test sets again and again, so a file's
hash is cached, in memory and in a small file under the cache folder, keyed by (device, inode, size, mtime,
ctime) at nanosecond resolution. Any write to the file, a rename over it, or a `touch` changes the key (ctime
is set by the kernel and cannot be set back), so a cached hash never stands for a changed file; and a hash is
only cached when the file was last changed over 2 s before hashing began, so that two changes within the file
system's timestamp granularity cannot share a key either.

Settings (environment): MOE_ADAPTERS_VERIFY=0 reads everything unchecked (for measuring what checking costs,
or to read files written before hashes were recorded); MOE_ADAPTERS_CACHE sets the cache folder (default
$XDG_CACHE_HOME/moe-adapters, else ~/.cache/moe-adapters).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

DIGEST_KEY = "content_sha256"
RACY_NS = 2_000_000_000
_memo: dict[tuple, str] = {}


class IntegrityError(RuntimeError):
    """An artifact is not what the step that wrote it recorded."""


def enabled() -> bool:
    return os.environ.get("MOE_ADAPTERS_VERIFY", "1").strip().lower() not in ("0", "false", "no", "off")


def _by(rule: str | None) -> str:
    return f"rule {rule}" if rule else "its step"


def _forcerun(target: str | Path) -> str:
    return f"add --forcerun {target} to your snakemake command"


def mismatch(path: str | Path, want: str, have: str, rule: str | None, target: str | Path | None = None) -> IntegrityError:
    return IntegrityError(
        f"{path}: content check failed: recorded sha256 {want}, the file has {have}. It changed after "
        f"{_by(rule)} wrote it; to rebuild it, {_forcerun(target or path)}"
    )


def unrecorded(path: str | Path, rule: str | None, target: str | Path | None = None) -> IntegrityError:
    return IntegrityError(
        f"{path} carries no content hash to check (written before hashes were recorded); rebuild it with "
        f"{_by(rule)} ({_forcerun(target or path)}), or read it unchecked with MOE_ADAPTERS_VERIFY=0"
    )


def unreadable(path: str | Path, why: str, rule: str | None, target: str | Path | None = None) -> IntegrityError:
    return IntegrityError(f"{path} {why}; rebuild it with {_by(rule)}: {_forcerun(target or path)}")


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _cache_dir() -> Path:
    if os.environ.get("MOE_ADAPTERS_CACHE"):
        return Path(os.environ["MOE_ADAPTERS_CACHE"]) / "verified"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "moe-adapters" / "verified"


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | Path, kind: str, compute: Callable[[str], str]) -> str:
    """`compute(path)` (a digest of kind `kind`), or its cached value while the file is unchanged."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = [kind, real, *_stat_key(st)]
    if tuple(key) in _memo:
        return _memo[tuple(key)]
    entry = _cache_dir() / (hashlib.sha256(f"{kind}\0{real}".encode()).hexdigest()[:32] + ".json")
    try:
        cached = json.loads(entry.read_text())
        if cached["key"] == key and isinstance(cached["digest"], str):
            _memo[tuple(key)] = cached["digest"]
            return cached["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    began = time.time_ns()
    digest = compute(real)
    if _stat_key(os.stat(real)) == _stat_key(st) and max(st.st_mtime_ns, st.st_ctime_ns) < began - RACY_NS:
        _memo[tuple(key)] = digest
        try:
            from .fsutil import write_json

            write_json(entry, {"key": key, "digest": digest})
        except OSError:  # no cache where none can be written: every read hashes
            pass
    return digest


def verify_file(path: str | Path, want: str | None, rule: str | None, target: str | Path | None = None) -> None:
    """Check a file against the SHA-256 its step recorded."""
    if not enabled():
        return
    if want is None:
        raise unrecorded(path, rule, target)
    if not Path(path).is_file():
        raise unreadable(path, "is missing", rule, target)
    have = file_digest(path, "sha256", sha256_file)
    if have != want:
        raise mismatch(path, want, have, rule, target)


# ---------------------------------------------------------------- JSON results


def json_digest(obj: dict) -> str:
    body = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(obj: dict) -> dict:
    """`obj` with its content hash, for a JSON result that later steps read."""
    return {**obj, DIGEST_KEY: json_digest(obj)}


def check_sealed(obj: dict, path: str | Path, rule: str | None) -> dict:
    """`obj` (read from `path`) after checking its content hash; returned without it."""
    want = obj.get(DIGEST_KEY) if isinstance(obj, dict) else None
    if enabled():
        if want is None:
            raise unrecorded(path, rule)
        have = json_digest(obj)
        if have != want:
            raise mismatch(path, want, have, rule)
    return {k: v for k, v in obj.items() if k != DIGEST_KEY} if isinstance(obj, dict) else obj


def evaluation_rule(obj: dict) -> str:
    """The rule that writes an evaluation: of zero-shot CLIP (task null), or of a task checkpoint; of a
    class-incremental step (step, no task) or of zero-shot CLIP after every step (step null)."""
    if isinstance(obj, dict) and "task" not in obj and "step" in obj:
        return "cil_zero_shot" if obj["step"] is None else "cil_evaluate"
    return "evaluate_zero_shot" if isinstance(obj, dict) and obj.get("task") is None else "evaluate"


def read_evaluation(path: str | Path) -> dict:
    """An evaluation JSON (`evaluate`), checked against its content hash."""
    from .fsutil import read_json

    try:
        obj = read_json(path)
    except ValueError as e:
        raise unreadable(path, f"is not valid JSON ({e})", "evaluate") from None
    return check_sealed(obj, path, evaluation_rule(obj))
