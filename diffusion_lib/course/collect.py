"""``course collect``: gather the hub's hand-in folders into one folder of archives for ``course grade``.

Under JupyterHub (deploy/hub, deploy/kubernetes) every student's server mounts only that student's own
folder ``<handins>/<user>/`` at ``/handin``, and ``course handin --submit`` writes ``submission.tar.gz``
there. Run by the instructor (often as root), this step trusts nothing a student wrote: the student id is the
folder's name (the hub user), never the archive's; a folder or archive that is a link, not a regular file,
or over the size limit is refused with a line saying why; files are opened with ``O_NOFOLLOW`` and copied
(never moved) to ``<submissions>/<user>.tar.gz`` with their hand-in time kept as the copy's mtime.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from .handin import SUBMITTED_NAME
from .intake import STUDENT_ID

MAX_ARCHIVE_BYTES = 60 * 1024 * 1024   # handin's 50 MB uncompressed limit, compressed, plus slack


@dataclass(frozen=True)
class Collected:
    """One hand-in folder: ``student`` (the folder's name), the copy written or None, when, and why not."""

    student: str
    archive: Path | None
    handed_in_at: dt.datetime | None
    late: bool
    problem: str = ""


def _read_regular(path: Path, limit: int) -> tuple[bytes, float]:
    """The bytes and mtime of ``path``, a regular file opened without following links, at most ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{info.st_size / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB limit")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"grew over the {limit / 2**20:.0f} MB limit while read")
            chunks.append(chunk)
        return b"".join(chunks), info.st_mtime
    finally:
        os.close(fd)


def collect(handins_dir: str | Path, submissions_dir: str | Path, deadline: dt.datetime | None = None,
            verbose: bool = True) -> list[Collected]:
    """Copy every ``<handins_dir>/<user>/submission.tar.gz`` to ``<submissions_dir>/<user>.tar.gz``.

    Args:
        handins_dir: the hub's hand-in folder (one sub-folder per hub user).
        submissions_dir: the folder ``course grade`` reads (created; existing archives of the same students
            are replaced, others kept).
        deadline: timezone-aware; hand-ins whose time (the archive's mtime) is after it are marked late.

    Returns:
        One Collected per sub-folder, sorted by name (students without a hand-in included, with a problem).

    Raises:
        FileNotFoundError: no ``handins_dir``. ValueError: a naive ``deadline``.
    """
    handins_dir, submissions_dir = Path(handins_dir), Path(submissions_dir)
    if not handins_dir.is_dir():
        raise FileNotFoundError(f"no hand-in folder {handins_dir}")
    if deadline is not None and deadline.tzinfo is None:
        raise ValueError(f"deadline {deadline.isoformat()} must carry a timezone (e.g. 2026-12-15T23:59:00+01:00)")
    submissions_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for entry in sorted(handins_dir.iterdir(), key=lambda p: p.name):
        name = entry.name
        if not STUDENT_ID.match(name):
            results.append(Collected(name, None, None, False, "folder name is not a valid student id"))
            continue
        if entry.is_symlink() or not entry.is_dir():
            results.append(Collected(name, None, None, False, "not a plain folder (a link or a file)"))
            continue
        try:
            data, mtime = _read_regular(entry / SUBMITTED_NAME, MAX_ARCHIVE_BYTES)
        except FileNotFoundError:
            results.append(Collected(name, None, None, False, "nothing handed in"))
            continue
        except (OSError, ValueError) as error:
            reason = "a link" if isinstance(error, OSError) and error.errno == errno.ELOOP else str(error)
            results.append(Collected(name, None, None, False, f"{SUBMITTED_NAME} refused: {reason}"))
            continue
        target = submissions_dir / f"{name}.tar.gz"
        atomic_write(target, lambda temporary: Path(temporary).write_bytes(data))
        os.utime(target, (mtime, mtime))
        when = dt.datetime.fromtimestamp(mtime, dt.timezone.utc)
        results.append(Collected(name, target, when, deadline is not None and when > deadline))
    if verbose:
        for item in results:
            state = (f"handed in {item.handed_in_at:%Y-%m-%d %H:%M:%S} UTC" + (" (LATE)" if item.late else "")
                     if item.archive else item.problem)
            print(f"{item.student}: {state}")
        print(f"collected {sum(1 for r in results if r.archive)} of {len(results)} folders into {submissions_dir}")
    return results
