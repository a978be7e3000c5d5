"""Atomic writes: a temporary file (or folder) beside the target, then ``os.replace``.

A crash at any point leaves either the old file or the new one, never half a file, and no
temporary file behind. Every checkpoint, cache, grid and export of the library is written here;
folders (diffusers pipeline folders) by :func:`atomic_write_folder`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary file beside ``path``, then rename it over ``path``.

    Parent folders are created. On any exception the temporary file is removed and the
    exception propagates; the previous ``path`` (if any) is untouched.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes private (0600) files; give the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_folder(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary folder beside ``path``, then rename it into place.

    Parent folders are created. An existing folder at ``path`` is first renamed aside (to a
    ``.old`` sibling) and deleted only after the new one is in place: a crash leaves the old
    folder (or, between the two renames, its ``.old`` copy), never a half-written one. On any
    exception from ``write`` the temporary folder is removed and the exception propagates.
    Whether an existing folder may be replaced is the caller's decision.

    Args:
        path: the destination folder.
        write: fills the (empty) temporary folder it is given.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes private (0700) folders; give the usual permissions
        if path.exists():
            old = tmp.with_suffix(".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
