"""Atomic file writes: a temporary file beside the target, then ``os.replace``.

A crash at any point leaves either the old file or the new one, never half a file, and no
temporary file behind. Every checkpoint, cache, grid and export of the library is written here.
"""

from __future__ import annotations

import os
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
