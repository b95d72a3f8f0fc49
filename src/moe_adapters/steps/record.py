"""What every compute step records with its output: its cost (wall time, peak memory, device, trainable
parameters) and its provenance (the step's config slice and its hash, the commit, the deviations)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def peak_memory(device: torch.device) -> int | None:
    """Peak memory of this process so far: the CUDA allocator's peak on a GPU, the maximum resident set on a CPU."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    except Exception:  # pragma: no cover - platform without resource
        return None


@functools.cache
def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name ('model name' in Linux's /proc/cpuinfo, else platform.processor()); '' where unknown."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor().strip()


def device_name(device: torch.device | str) -> str:
    """The kind of device a step ran on: a GPU's name, or 'cpu (MODEL)'. On a CPU the model is part of it because
    the numbers follow that CPU's kernels: runs of one config on two CPU models can differ in their last bits."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model() if device.type == "cpu" else ""
    return f"{device.type} ({model})" if model else device.type


def cost(start: float, device: torch.device | str, trainable: int | None = None, elapsed: float | None = None) -> dict:
    """Wall time since `start` (or `elapsed`, every attempt of a resumed step), peak memory and device of a step."""
    import torch

    device = torch.device(device)
    return {
        "wall_seconds": round(time.time() - start if elapsed is None else elapsed, 3),
        "peak_memory_bytes": peak_memory(device),
        "device": device_name(device),
        **({"trainable_parameters": trainable} if trainable is not None else {}),
    }




def provenance(spec: Any) -> dict:
    """The step's config slice, its hash, and the code's commit: recorded in every output of a compute step."""
    from ..config import code_commit, digest, to_plain

    return {"config_hash": digest(spec), "spec": to_plain(spec), "commit": code_commit()}


def resume_path(out: str | Path) -> Path:
    """Where a step's resume state lives: a hidden folder beside its output (ignored by DVC, see .dvcignore)."""
    out = Path(out)
    return out.parent / ".resume" / f"{out.name}.state"


def resume_identity(spec, inputs: dict[str, str | Path | None]) -> dict:
    """Everything a step depends on: its spec, the content of its input files, and the code."""
    from ..config import code_fingerprint, digest
    from ..integrity import sha256_file

    return {
        "spec": digest(spec),
        "inputs": {k: sha256_file(p) if p else None for k, p in sorted(inputs.items())},
        "code": code_fingerprint(),
    }
