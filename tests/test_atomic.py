"""atomic.py: files and folders are replaced whole or not at all, and no temporary is left behind."""

import os
import re
import stat
from pathlib import Path

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


def test_write_errors_are_one_line_naming_the_path(tmp_path):
    from diffusion_lib.atomic import WriteError, atomic_write_text, check_writable

    (tmp_path / "file").write_text("x")
    cases = {tmp_path / "file" / "a.txt": "file is a file, not a folder",
             tmp_path / "file" / "deeper" / "a.txt": "file is a file, not a folder",
             Path("/sys/diffusion_lib.txt"): "Permission denied"}
    for path, reason in cases.items():
        with pytest.raises(WriteError) as check:
            check_writable(path)
        assert str(check.value).startswith(f"cannot write {path}: ") and reason in str(check.value)
        with pytest.raises(WriteError, match=f"cannot write {re.escape(str(path))}: "):
            atomic_write_text(path, "hello")
    (tmp_path / "folder.txt").mkdir()
    with pytest.raises(WriteError, match=r"folder.txt: it is a folder"):
        check_writable(tmp_path / "folder.txt")
    with pytest.raises(WriteError, match=r"file: it is a file, not a folder"):
        check_writable(tmp_path / "file", folder=True)
    assert check_writable(tmp_path / "new" / "deep" / "a.txt") and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.txt"]  # the probes left nothing


def test_a_full_disk_is_a_write_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    import torch

    import diffusion_lib.atomic as atomic

    target = atomic.atomic_save({"w": torch.zeros(3)}, tmp_path / "a.ckpt")
    old = target.read_bytes()
    real_save = torch.save

    def save_to_full_disk(obj, handle, *args, **kwargs):
        with open("/dev/full", "wb") as full:  # the kernel's ENOSPC
            real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(atomic.torch, "save", save_to_full_disk)
    with pytest.raises(atomic.WriteError, match=rf"^cannot write {re.escape(str(target))}: No space left on device$"):
        atomic.atomic_save({"w": torch.ones(1000)}, target)
    assert target.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_stale_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    import subprocess

    from diffusion_lib.atomic import _host_tag, atomic_write_folder, atomic_write_text

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = _host_tag().rsplit("-", 1)[0]
    names = {
        f".a.txt.{host}-{dead.pid}.k3j2_x.tmp.txt": False,      # a killed writer of a.txt: removed
        f".a.txt.{host}-{os.getpid()}.k3j2_x.tmp.txt": True,    # a live writer (this process): kept
        f".a.txt.elsewhere-{dead.pid}.k3j2_x.tmp.txt": True,    # another host's: kept
        f".b.txt.{host}-{dead.pid}.k3j2_x.tmp.txt": True,       # another target's: kept
        f"a.txt.{host}-{dead.pid}.k3j2_x.tmp.txt": True,        # not our pattern: kept
    }
    for name in names:
        (tmp_path / name).write_text("half")
    atomic_write_text(tmp_path / "a.txt", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt"] + [n for n, keep in names.items() if keep])
    stale_folder = tmp_path / f".pipe.{host}-{dead.pid}.abc.tmp"
    (stale_folder / "sub").mkdir(parents=True)
    atomic_write_folder(tmp_path / "pipe", _fill("one"))
    assert not stale_folder.exists() and (tmp_path / "pipe" / "sub" / "a.txt").read_text() == "one"


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    import diffusion_lib.atomic as atomic

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)),
                                                       real_fsync(fd)))
    atomic.atomic_write_text(tmp_path / "a.txt", "hello")
    assert synced == [False, True]  # the file's bytes, then the folder's entry
