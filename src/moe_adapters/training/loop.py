"""What every training loop here shares: a quiet progress bar, and resume states that make a killed run end
exactly as an uninterrupted one."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint import CheckpointError, safe_torch_load, save_torch
from ..fsutil import remove_stale_temporaries

log = logging.getLogger(__name__)


def progress_bar(total: int, initial: int, desc: str):
    tty = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        file=sys.stderr,
        mininterval=0.5 if tty else 10,
        ascii=not tty,
    )


class ResumableRun:
    """Saves a run's full state atomically every N steps and restores it, so a killed run ends identically.

    The state holds the step, the trained tensors, the optimizer, the RNG states, any extra tensors and the wall
    time spent so far; it is read back with weights_only=True. Its `identity` names everything the step depends
    on (the step's config slice, the digests of its input files, the code): a state of any other identity is
    discarded, with a log line saying what differs, and the step starts afresh.
    """

    def __init__(self, path: str | Path | None, identity: dict, every: int):
        self.path = Path(path) if path else None
        self.identity = identity
        self.every = every
        self.started = time.time()
        self.elapsed_before = 0.0  # wall seconds of earlier, interrupted attempts
        self.resumed_at: int | None = None

    def _drop(self, why: str) -> None:
        log.warning("discarding resume state %s: %s; starting at step 0", self.path, why)
        self.path.unlink(missing_ok=True)

    def restore(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
        if self.path is None or not self.path.exists():
            return 0, {}
        try:
            state = safe_torch_load(self.path)
        except CheckpointError as e:
            self._drop(f"unreadable ({e})")
            return 0, {}
        theirs = state.get("identity") if isinstance(state, dict) else None
        if theirs != self.identity:
            theirs = theirs if isinstance(theirs, dict) else {}
            diff = sorted(k for k in set(theirs) | set(self.identity) if theirs.get(k) != self.identity.get(k))
            self._drop(f"it was written for another {', '.join(diff) or 'run'}")
            return 0, {}
        module.load_state_dict(state["module"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.resumed_at = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        log.warning("resumed at step %d from %s", self.resumed_at, self.path)
        return self.resumed_at, state.get("extra", {})

    def elapsed(self) -> float:
        """Wall seconds of this step over every attempt, the interrupted ones included."""
        return self.elapsed_before + (time.time() - self.started)

    def maybe_save(self, step: int, total: int, module_state: Callable[[], dict], optimizer, extra: dict) -> None:
        """Save after `step` steps when it is a multiple of `every` (module_state is only called then)."""
        if self.path is None or self.every <= 0 or step % self.every or step >= total:
            return
        save_torch(
            self.path,
            {
                "identity": self.identity,
                "step": step,
                "module": module_state(),
                "optimizer": optimizer.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "extra": extra,
                "elapsed": self.elapsed(),
            },
        )

    def discard(self) -> None:
        """The step is done: its resume state goes, and what an interrupted write of one left behind."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            remove_stale_temporaries(self.path)
