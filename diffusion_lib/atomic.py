"""Atomic writes: a temporary file (or folder) beside the target, then ``os.replace``.

A crash at any point leaves either the old file or the new one, never half a file. Every
checkpoint, cache, grid and export of the library is written here; folders (diffusers
pipeline folders) by :func:`atomic_write_folder`.

Durability: the bytes are fsynced before the rename, and the folder after it, so after a power
loss the name points at the complete new file (or still at the old one).

Temporaries are named ``.<target>.<host>-<pid>.<random>.tmp<suffix>``: a process killed mid-write
(``kill -9``) leaves one behind, and the next write of the same target removes it once its
process is gone (only temporaries of that target, from this host, whose process is dead).

A failed write raises :class:`WriteError`, an ``OSError`` whose message reads
``cannot write PATH: reason`` (full disk, permission denied, a file where a folder should be).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

import torch


class WriteError(OSError):
    """A file or folder could not be written; ``str()`` is ``cannot write PATH: reason``.

    ``errno`` and ``filename`` are those of the underlying error (``filename`` is the target).
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _write_error(path: Path, error: BaseException) -> WriteError:
    """``error`` (an OSError, or torch's wrapped one) as a :class:`WriteError` naming ``path``."""
    while not isinstance(error, OSError) and isinstance(error.__context__, BaseException):
        error = error.__context__  # torch.save wraps the OSError of its file object in a RuntimeError
    if isinstance(error, WriteError):
        return error
    code = getattr(error, "errno", None) or errno.EIO
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    return WriteError(code, reason, str(path))


def _host_tag() -> str:
    """``<host>-<pid>`` of this process (host reduced to [A-Za-z0-9_])."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', socket.gethostname())[:32]}-{os.getpid()}"


def _temp_pattern(path: Path, folder: bool) -> re.Pattern:
    suffix = "" if folder else re.escape(path.suffix)
    return re.compile(rf"^\.{re.escape(path.name)}\.([A-Za-z0-9_]+)-(\d+)\.[A-Za-z0-9_]+\.tmp{suffix}(\.old)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(path: str | Path, folder: bool = False) -> list[Path]:
    """Remove the temporaries that writes of ``path`` left behind when their process was killed.

    Only names of this module's pattern for ``path`` are considered, and only those written on
    this host by a process that no longer exists (a write in flight is never touched).

    Args:
        path: the target file (or folder, with ``folder=True``).

    Returns:
        The paths removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern, host = _temp_pattern(path, folder), _host_tag().rsplit("-", 1)[0]
    removed = []
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or match.group(1) != host or _alive(int(match.group(2))):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # another process cleaned it, or we may not: leave it
    return removed


def fsync_folder(path: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not fsync folders
    finally:
        os.close(fd)


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Check, without creating anything, that ``path`` can be written (before spending time computing it).

    The nearest existing ancestor must be a folder in which a file can be created (probed with a
    temporary file that is removed at once); ``path`` itself must not be a folder (a file with
    ``folder=True``).

    Args:
        path: the file (or, with ``folder=True``, the folder) to be written.

    Returns:
        ``path`` as a Path.

    Raises:
        WriteError: ``cannot write PATH: reason``.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise WriteError(errno.EISDIR if path.is_dir() else errno.ENOTDIR,
                         "it is a folder" if path.is_dir() else "it is a file, not a folder", str(path))
    parent = path if folder and path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise WriteError(errno.ENOTDIR, f"{parent} is a file, not a folder", str(path))
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.{_host_tag()}.", suffix=".probe")
    except OSError as error:
        raise _write_error(path, error) from error
    os.close(fd)
    os.unlink(probe)
    return path


def make_folder(path: str | Path, target: str | Path | None = None) -> Path:
    """``mkdir -p path``, raising :class:`WriteError` (``cannot write TARGET: reason``) on failure.

    Args:
        path: the folder.
        target: what is being written there (named in the message; default ``path``).
    """
    path = Path(path)
    target = path if target is None else target
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocker = path
        while not blocker.exists() and blocker != blocker.parent:
            blocker = blocker.parent
        if not blocker.is_dir():
            raise WriteError(errno.ENOTDIR, f"{blocker} is a file, not a folder", str(target)) from error
        raise _write_error(Path(target), error) from error
    return path


def _temporary_beside(path: Path, folder: bool = False) -> str:
    """A fresh temporary file (or folder) beside ``path``, named so :func:`clean_stale_temporaries` finds it.

    The parent folder is created and stale temporaries of ``path`` are removed first.

    Raises:
        WriteError: the file system refused.
    """
    make_folder(path.parent, path)
    clean_stale_temporaries(path, folder=folder)
    prefix = f".{path.name}.{_host_tag()}."
    try:
        if folder:
            return tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp" + path.suffix)
    except OSError as error:
        raise _write_error(path, error) from error
    os.close(fd)
    return tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a fresh temporary file beside ``path``, then rename it over ``path``.

    Parent folders are created; stale temporaries of ``path`` (see :func:`clean_stale_temporaries`)
    are removed first. On any exception the temporary file is removed and the exception propagates
    (an OSError, e.g. a full disk, as :class:`WriteError`); the previous ``path`` (if any) is untouched.

    Returns:
        ``path`` as a Path.

    Raises:
        WriteError: the file system refused (``cannot write PATH: reason``).
    """
    path = Path(path)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes private (0600) files; give the usual permissions
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) or isinstance(error.__context__, OSError):
            raise _write_error(path, error) from error
        raise
    fsync_folder(path.parent)  # ... and the new name itself survives a power loss
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save(obj, path)`` atomically.

    torch writes through a Python file object, so a full disk surfaces as ``OSError(ENOSPC)``
    (a path given to ``torch.save`` reports it as "unexpected pos" instead).
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    return atomic_write(path, write)


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

    Raises:
        WriteError: the file system refused (``cannot write PATH: reason``).
    """
    path = Path(path)
    tmp = Path(_temporary_beside(path, folder=True))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes private (0700) folders; give the usual permissions
        if path.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise _write_error(path, error) from error
        raise
    fsync_folder(path.parent)
    return path
