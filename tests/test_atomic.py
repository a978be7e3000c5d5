"""atomic.py: files and folders are replaced whole or not at all, and no temporary is left behind."""

import os
import stat

import pytest

from diffusion_lib.atomic import atomic_write_folder


def _fill(text):
    def write(tmp):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text(text)
    return write


def test_atomic_write_folder_creates_replaces_and_survives_a_crash(tmp_path):
    target = tmp_path / "deep" / "pipe"
    assert atomic_write_folder(target, _fill("one")) == target
    assert (target / "sub" / "a.txt").read_text() == "one"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask  # the usual permissions, not mkdtemp's 0700
    atomic_write_folder(target, _fill("two"))
    assert (target / "sub" / "a.txt").read_text() == "two"

    def crash(tmp):
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_folder(target, crash)
    assert (target / "sub" / "a.txt").read_text() == "two" and not (target / "half.txt").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["pipe"]  # no temporary or .old folder left
