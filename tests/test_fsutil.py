"""Atomic outputs: complete or absent, and readable like any file the user writes."""

import os
import stat

import pytest

from moe_adapters.fsutil import atomic_path, write_text


def test_outputs_get_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "out.txt", "x")
        assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
