"""Atomic file output: everything is written to a temporary name and renamed when complete.

A temporary name carries its writer (`.NAME.HOST-PID.XXXXXXXX.tmp`), so the next write of NAME removes what a
killed writer left behind (its process is gone), and never the file of a writer still at work. A write that
fails because the file system is full raises DiskFullError, naming the path and the space left there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
# A temporary of another machine (a shared file system) or of an older version, whose writer cannot be asked
# whether it still runs, counts as stale once it has not been written to for this long.
FOREIGN_STALE_SECONDS = 24 * 3600


class DiskFullError(OSError):
    """A write failed because its file system is full (or the user's quota is used up)."""


def _file_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's is 0600, which made every result private)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def make_temp(folder: str | Path, prefix: str, suffix: str) -> Path:
    """A new empty file `<prefix>HOST-PID.XXXXXXXX<suffix>` in `folder`: a temporary that names its writer."""
    fd, tmp = tempfile.mkstemp(prefix=f"{prefix}{HOST}-{os.getpid()}.", suffix=suffix, dir=folder)
    os.close(fd)
    return Path(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: str | Path, prefix: str, suffix: str) -> list[Path]:
    """Remove the temporaries `<prefix>...<suffix>` in `folder` whose writer is gone: a process of this machine
    that no longer runs, or (another machine's, or a name without its writer) one untouched for a day."""
    folder = Path(folder)
    own = re.compile(re.escape(prefix) + r"(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)\.[A-Za-z0-9_]+" + re.escape(suffix))
    removed = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
    except OSError:
        return removed
    for p in candidates:
        m = own.fullmatch(p.name)
        try:
            if m and m["host"] == HOST:
                stale = not _alive(int(m["pid"]))
            else:
                stale = time.time() - p.stat().st_mtime > FOREIGN_STALE_SECONDS
            if stale and p.is_file():
                p.unlink()
                removed.append(p)
        except OSError:  # removed meanwhile, or not ours to remove
            continue
    return removed


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """What interrupted atomic writes of `path` left beside it."""
    path = Path(path)
    return remove_stale_temps(path.parent, f".{path.name}.", ".tmp")


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


_FULL = ("No space left", "os error 28", "StorageFull", "Disk quota exceeded", "os error 122")


def disk_full_error(e: BaseException, path: Path, tmp: Path | None) -> DiskFullError | None:
    """The DiskFullError a failed write of `path` (through `tmp`) stands for, or None when it is another error.

    Writers rarely say so: numpy reports "65536 requested and 5104 written", torch "unexpected pos 576 vs 534".
    A failed write counts as a full disk when the error says so or when the file system has (almost) no space
    left while the partial temporary is still there.
    """
    writer_error = isinstance(e, (OSError, RuntimeError)) or "Safetensor" in type(e).__name__
    if isinstance(e, DiskFullError) or not writer_error:
        return None
    said = (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or any(s in str(e) for s in _FULL)
    try:
        usage = shutil.disk_usage(path.parent)
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
    except OSError:
        return None
    if not said and usage.free >= 1 << 20:
        return None
    free = usage.free + written  # what is left once the partial temporary is removed
    err = DiskFullError(
        f"no space left on the device of {path.parent}: writing {path} failed after {format_size(written)} "
        f"({format_size(free)} free there, of {format_size(usage.total)}); free some space, or move the "
        f"folder elsewhere (data_root, results_dir), and rerun. Nothing was written to {path.name}"
    )
    err.errno = errno.ENOSPC
    return err


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        tmp_path = make_temp(path.parent, f".{path.name}.", ".tmp")
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    except Exception as e:
        full = disk_full_error(e, path, tmp_path)
        if full is not None:
            raise full from e
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())
