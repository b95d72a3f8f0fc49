"""Checkpoint I/O that never executes code: safetensors for results, weights-only torch.load for resume states.

Every safetensors file written here records its content hash in its metadata (`content_sha256`: SHA-256 over
the metadata less that key, the tensor table and the tensor bytes); every read checks it (see integrity.py).
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from .artifacts import (  # noqa: F401  (re-exported: the torch-free readers of these files)
    FORMAT,
    RULES,
    CheckpointError,
    _meta_from_str,
    _meta_to_str,
    content_digest,
    load_arrays,
    read_metadata,
    verify_tensors,
)
from .fsutil import atomic_path
from .integrity import DIGEST_KEY
from .model.moe import MoESpec


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a safetensors file atomically, with JSON-encoded metadata and its content hash."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    strings = _meta_to_str({"format": FORMAT, **meta})
    # the hash of the same file without it (the tensor table and bytes do not depend on the metadata)
    strings[DIGEST_KEY] = json.dumps(content_digest(io.BytesIO(save(flat, metadata=strings))))
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=strings)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and metadata from .safetensors, or from .pt/.pth with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = _meta_from_str(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
        verify_tensors(path, meta)
        meta.pop(DIGEST_KEY, None)
        return tensors, meta
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return obj, {}


def safe_torch_load(path: str | Path):
    """torch.load restricted to tensors and plain containers; anything that would run code is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects that would execute code when unpickled "
            f"(only tensors and plain containers are accepted). Detail: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {e}") from e


def save_torch(path: str | Path, obj) -> None:
    """torch.save, atomically (for resume states: optimizer state and RNG states)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file of ours: closed even when the write fails
        torch.save(obj, f)


def spec_dict(spec: MoESpec) -> dict:
    return asdict(spec)


def check_identity(meta: dict, *, fingerprint: str, spec: MoESpec, path: str | Path, layers: dict) -> None:
    """Refuse a checkpoint made for another backbone or another adapter shape, naming the difference."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT})")
    saved_spec = meta.get("moe", {})
    for key, want in spec_dict(spec).items():
        have = saved_spec.get(key)
        if key in ("dropout", "noise_epsilon", "scale"):
            continue  # training-time hyper-parameters, not shapes
        if have != want:
            raise CheckpointError(
                f"{path} was made for {key}={have}, this model has {key}={want}; it cannot be loaded here"
            )
    if meta.get("layers") != layers:
        raise CheckpointError(f"{path} has adapter layers {meta.get('layers')}, this model has {layers}")
    bb = meta.get("backbone", {})
    if bb.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path} was trained on another backbone ({bb.get('name')}, weights {bb.get('pretrained')}, "
            f"fingerprint {str(bb.get('fingerprint'))[:12]}...) than this model's (fingerprint {fingerprint[:12]}...)"
        )


def _layers(model) -> dict:
    return {"visual": len(model.visual_moe), "text": len(model.text_moe)}


def _backbone_meta(model) -> dict:
    return {**model.backbone.describe(), "fingerprint": model.fingerprint}


FROZEN_KEYS = ("frozen_visual", "frozen_text")
FROZEN_UNKNOWN = "unknown"  # metadata frozen_set of a checkpoint whose frozen set is not known (imported)


def save_task_checkpoint(
    path: str | Path,
    model,
    *,
    task: int,
    dataset: str,
    counts: dict[str, torch.Tensor] | None,
    extra: dict,
    frozen_known: bool = True,
) -> None:
    """A task's result: adapters, routers, frozen set and selection counts, plus the backbone's identity.

    With `frozen_known=False` (the authors' released files hold no frozen set) the frozen set is left out and the
    metadata says so; such a checkpoint can be evaluated, but no training may continue from it.
    """
    tensors = dict(model.moe_state_dict())
    if not frozen_known:
        tensors = {k: v for k, v in tensors.items() if k not in FROZEN_KEYS}
        extra = {**extra, "frozen_set": FROZEN_UNKNOWN}
    if counts is not None:
        tensors.update({f"counts.{k}": v for k, v in counts.items()})
    meta = {
        "kind": "task",
        "task": task,
        "dataset": dataset,
        "backbone": _backbone_meta(model),
        "moe": spec_dict(model.spec),
        "layers": _layers(model),
        **extra,
    }
    save_tensors(path, tensors, meta)


def load_task_checkpoint(path: str | Path, model) -> dict:
    """Load a task checkpoint into `model` after checking it belongs to it; returns metadata and counts."""
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "task":
        raise CheckpointError(f"{path} is not a task checkpoint (kind={meta.get('kind')!r})")
    check_identity(meta, fingerprint=model.fingerprint, spec=model.spec, path=path, layers=_layers(model))
    counts = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("counts.")}
    state = {k: v for k, v in tensors.items() if not k.startswith("counts.")}
    own = model.moe_state_dict()
    if meta.get("frozen_set") == FROZEN_UNKNOWN:  # imported: evaluation needs no frozen set
        own = {k: v for k, v in own.items() if k not in FROZEN_KEYS}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensors {missing[:3]}, unexpected tensors {unexpected[:3]}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=False)
    meta["counts"] = counts
    return meta


INITIAL = "initial."  # prefix of an autoencoder's initial (untrained) weights, where they are not ours (imported)


def save_autoencoder(path: str | Path, ae, *, index: int, trained: bool, extra: dict, initial=None) -> None:
    """One DDAS autoencoder with its index, input size and what it was trained on.

    `initial`, an autoencoder of the same shape, is stored beside it (keys `initial.*`) when its untrained weights
    are not this project's seeded ones: the reference lets untrained autoencoders compete, so evaluation needs them.
    """
    meta = {
        "kind": "autoencoder",
        "index": index,
        "trained": trained,
        "input_dim": ae.encoder[0].in_features,
        "code_dim": ae.encoder[0].out_features,
        **extra,
    }
    tensors = dict(ae.state_dict())
    if initial is not None:
        tensors.update({INITIAL + k: v for k, v in initial.state_dict().items()})
    save_tensors(path, tensors, meta)


def load_autoencoder(path: str | Path, ae) -> dict:
    """Load weights into `ae` after checking index-independent shape and feature extractor metadata.

    Initial weights stored beside them (imported autoencoders) come back as `meta["initial_state"]`, else None.
    """
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "autoencoder":
        raise CheckpointError(f"{path} is not an autoencoder checkpoint (kind={meta.get('kind')!r})")
    want = (ae.encoder[0].in_features, ae.encoder[0].out_features)
    have = (meta.get("input_dim"), meta.get("code_dim"))
    if have != want:
        raise CheckpointError(
            f"{path} is an autoencoder of shape {have}, expected {want} (other feature extractor?)"
        )
    initial = {k[len(INITIAL):]: v for k, v in tensors.items() if k.startswith(INITIAL)}
    ae.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(INITIAL)})
    meta["initial_state"] = initial or None
    return meta
