"""Archive intake of ``course grade``: name every file in the submissions folder and extract it safely.

The order matters: every entry of the folder gets its own line first (a student id from its name, or a
rejection with the reason and a unique id made from the name), so no archive can vanish from grades.csv;
only then is an archive opened, and it is extracted into a host-only folder as regular files (no absolute
paths, no '..', no links, no devices; member and size limits); only files from the hand-in folders are
laid over the release afterwards (never tests, conftest.py, packaging files or the course tooling).
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from .handin import ALLOWED_FOLDERS
from .tasks import Course

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
MAX_MEMBERS = 5000
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
NEVER_FROM_SUBMISSION = ("diffusion_lib/course/",)
NEVER_NAMES = {"conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "sitecustomize.py",
               "usercustomize.py", "_course_test_report.py", "pytest.py", "__editable__.pth"}


def student_id(archive: Path) -> tuple[str, str | None]:
    """(student id, error) from the archive's file name; on error the id is a sanitized form of the name."""
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if not STUDENT_ID.match(stem):
                return sanitize(name), (f"archive name {name!r}: the student id must be 1-64 letters, digits, "
                                        f"'.', '_', '-' starting with a letter or digit")
            return stem, None
    return sanitize(name.split(".")[0] or name), "not a .tar.gz/.zip archive"


def sanitize(text: str) -> str:
    """``text`` reduced to a safe id: letters, digits, '.', '_', '-', not starting with '.', at most 64."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:64]
    return clean or "unnamed"


def list_submissions(folder: Path) -> list[tuple[str, Path, str | None]]:
    """Every entry of ``folder`` as (unique id, path, error or None), sorted by name; hidden names, links
    and folders included (as rejections), so each one gets its own line."""
    seen: set[str] = set()
    entries = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        sid, error = student_id(path)
        if error is None and (path.is_symlink() or not path.is_file()):
            error = "not a regular file (a link or a folder)"
        if sid in seen:
            base, n = sanitize(path.name), 2
            sid = base
            while sid in seen:
                sid, n = f"{base}-{n}", n + 1
            error = error or f"duplicate student id (archive {path.name})"
        seen.add(sid)
        entries.append((sid, path, error))
    return entries


def _safe_rel(name: str) -> str | None:
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def extract_archive(archive: Path, target: Path) -> list[str]:
    """Extract the regular files of ``archive`` under ``target``; returns their relative paths.

    Raises:
        ValueError: not a readable .tar.gz/.zip, an unsafe member (absolute, '..', link, device), more than
            MAX_MEMBERS members or more than MAX_UNPACKED_BYTES unpacked (the message names the limit).
    """
    target.mkdir(parents=True, exist_ok=True)
    extracted: list[str] = []
    total = 0
    if archive.name.endswith(".zip"):
        if not zipfile.is_zipfile(archive):
            raise ValueError("not a .tar.gz/.zip archive (the .zip file cannot be read)")
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise ValueError(f"archive has {len(members)} members (limit {MAX_MEMBERS})")
            for info in members:
                if info.is_dir():
                    continue
                rel = _safe_rel(info.filename)
                mode = info.external_attr >> 16
                if rel is None or (mode and not stat.S_ISREG(mode)):
                    raise ValueError(f"unsafe archive member {info.filename!r} (absolute, '..' or a link)")
                total += info.file_size
                if total > MAX_UNPACKED_BYTES:
                    raise ValueError(f"archive unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB")
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                extracted.append(rel)
        return extracted
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError):
        raise ValueError("not a .tar.gz/.zip archive (the tar file cannot be read)") from None
    with tf:
        members = tf.getmembers()
        if len(members) > MAX_MEMBERS:
            raise ValueError(f"archive has {len(members)} members (limit {MAX_MEMBERS})")
        for member in members:
            if member.isdir():
                continue
            rel = _safe_rel(member.name)
            if rel is None or not member.isfile():
                raise ValueError(f"unsafe archive member {member.name!r} (absolute, '..', a link or a device)")
            total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise ValueError(f"archive unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB")
            member.name = rel
            tf.extract(member, target, filter="data")
            extracted.append(rel)
    return extracted


def accepted(rel: str, course: Course) -> bool:
    """Whether a submitted file (relative path) may be laid over the release: inside the hand-in folders or
    the course's hand-in outputs, and not a test, a protected name or the course tooling."""
    if rel.startswith(NEVER_FROM_SUBMISSION) or rel.rsplit("/", 1)[-1] in NEVER_NAMES:
        return False
    if rel.endswith((".pth", ".pyc", ".pyo")) or "/." in "/" + rel or "__pycache__" in rel.split("/"):
        return False  # bytecode would run code the static scan never read
    test_files = {t for task in course.tasks for t in task.tests}
    if rel in test_files or any(rel.startswith(t.rstrip("/") + "/") for t in test_files):
        return False
    return rel.startswith(ALLOWED_FOLDERS) or any(fnmatch.fnmatch(rel, g) for g in course.handin_outputs)
