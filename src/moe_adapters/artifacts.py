"""Reading this project's safetensors files without torch: their metadata, their content check and their
tensors as NumPy arrays. Reporting steps (costs, figures) read checkpoints this way, so they start in a fraction of
a second instead of importing torch; checkpoint.py writes the files and loads them as torch tensors.

Every safetensors file written here records its content hash in its metadata (`content_sha256`: SHA-256 over
the metadata less that key, the tensor table and the tensor bytes); every read checks it (see integrity.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import integrity
from .integrity import DIGEST_KEY

FORMAT = "moe-adapters/1"
# The rule of the workflow that writes each kind of file (named when a file fails its check).
RULES = {"task": "train_task", "autoencoder": "autoencoder", "features": "features", "backbone": "pretrain"}


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable, unsafe, or does not belong to the model at hand."""


def _meta_to_str(meta: dict) -> dict[str, str]:
    # Strings too are JSON-encoded: a raw commit such as 5826e69 would read back as the number 5.826e+72.
    return {k: json.dumps(v, sort_keys=True) for k, v in meta.items()}


def _meta_from_str(meta: dict[str, str]) -> dict:
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:  # a raw string (files written before every value was JSON)
            out[k] = v
    return out


def content_digest(f) -> str:
    """SHA-256 of a safetensors stream's content: its metadata (less the recorded hash), tensor table and bytes."""
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
    meta = {k: v for k, v in (header.pop("__metadata__", None) or {}).items() if k != DIGEST_KEY}
    h = hashlib.sha256(json.dumps({"metadata": meta, "tensors": header}, sort_keys=True, separators=(",", ":")).encode())
    while block := f.read(1 << 22):
        h.update(block)
    return h.hexdigest()


def _file_content_digest(path: str) -> str:
    with open(path, "rb") as f:
        return content_digest(f)


def verify_tensors(path: str | Path, meta: dict) -> None:
    """Check a safetensors file of this project against the content hash it records (files of others, which
    record none, are not checked: a backbone's identity is its fingerprint)."""
    if not integrity.enabled() or meta.get("format") != FORMAT:
        return
    rule = RULES.get(meta.get("kind"))
    want = meta.get(DIGEST_KEY)
    if want is None:
        raise integrity.unrecorded(path, rule)
    have = integrity.file_digest(path, "safetensors-content", _file_content_digest)
    if have != want:
        raise integrity.mismatch(path, want, have, rule)


def _header(path: Path) -> dict:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= 100_000_000:
            raise ValueError(f"a header of {n} bytes")
        return json.loads(f.read(n))


def read_metadata(path: str | Path) -> dict:
    """The metadata of a safetensors file without loading its tensors (costs and provenance of big files); the
    file is still checked against its content hash (one read, then cached while the file is unchanged)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        meta = _meta_from_str(_header(path).get("__metadata__") or {})
    except Exception as e:  # not a safetensors file, or a truncated one
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    verify_tensors(path, meta)  # its numbers (costs, provenance) are read only from a file as written
    meta.pop(DIGEST_KEY, None)
    return meta


def load_arrays(path: str | Path) -> tuple[dict, dict]:
    """The tensors of a safetensors file as NumPy arrays, and its metadata, after the content check (no torch)."""
    from safetensors import safe_open

    meta = read_metadata(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
