"""``course handin``: pack the student's work into one archive with a manifest of hashes.

Takes the files of the allowed folders that differ from (or are missing in) the release manifest
``coursework/release_manifest.json``, plus outputs matched by globs; refuses checkpoints, datasets
and files over the size limit, and says what it left out and why.
"""

from __future__ import annotations

import fnmatch
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .release import sha256_file
from .tasks import MANIFEST_FILE, load_course

ALLOWED_FOLDERS = ("diffusion_lib/", "notebooks/", "homework/", "coursework/answers/")
SKIPPED_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".git", ".venv", ".cache"}
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors", ".bin", ".onnx", ".pkl", ".pickle", ".h5", ".hdf5")
DATA_SUFFIXES = (".npz", ".npy", ".tar", ".gz", ".tgz", ".zip", ".parquet", ".arrow", ".lmdb", ".mat")
DATA_DIRS = {"data", "datasets", "dataset", "data_cache"}   # as a top-level folder or inside outputs
DATA_FILE_LIMIT = 1 * 1024 * 1024
MB = 1024 * 1024
SUBMITTED_NAME = "submission.tar.gz"   # what --submit writes into the hand-in folder (course collect reads it)


class NothingToHandIn(ValueError):
    """Nothing differs from the release: an untouched release would be graded as an empty hand-in."""


@dataclass
class HandinResult:
    archive: Path
    files: dict[str, str] = field(default_factory=dict)       # rel -> sha256
    left_out: dict[str, str] = field(default_factory=dict)    # rel -> reason


def _refusal(rel: str, size: int, max_file_bytes: int) -> str | None:
    name = rel.rsplit("/", 1)[-1].lower()
    parts = rel.split("/")
    if name.endswith(CHECKPOINT_SUFFIXES):
        return "checkpoint or model weights (not handed in)"
    if parts[0] in DATA_DIRS or any(p in DATA_DIRS for p in parts[1:-1] if parts[0] != "diffusion_lib"):
        return "dataset folder (not handed in)"
    if name.endswith(DATA_SUFFIXES) and size > DATA_FILE_LIMIT:
        return f"dataset or archive file over {DATA_FILE_LIMIT // MB} MB ({size / MB:.1f} MB)"
    if size > max_file_bytes:
        return f"over the file size limit ({size / MB:.1f} MB > {max_file_bytes / MB:g} MB)"
    return None


def candidate_files(root: Path, output_globs: tuple[str, ...] = ()) -> list[str]:
    """Files under the allowed folders and files matching ``output_globs`` (relative, posix, sorted)."""
    found: set[str] = set()
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        if any(part in SKIPPED_DIRS for part in rel.split("/")[:-1]) or rel.endswith((".pyc", ".pyo")):
            continue
        if rel.startswith(ALLOWED_FOLDERS) or any(fnmatch.fnmatch(rel, g) for g in output_globs):
            found.add(rel)
    return sorted(found)


def handin(root: str | Path = ".", output: str | Path | None = None, *, include: tuple[str, ...] = (),
           max_file_mb: float = 5.0, max_total_mb: float = 50.0, allow_empty: bool = False,
           verbose: bool = True, named_by_archive: bool = True) -> HandinResult:
    """Pack the changed and new files of the release at ``root`` into ``output`` (.tar.gz or .zip).

    Args:
        output: archive path; its name (without .tar.gz/.zip) is the student id the grader uses
            (default ``<root>/submission.tar.gz``).
        include: extra globs of outputs to hand in (added to ``handin_outputs`` of tasks.yaml), e.g. "runs/*/samples.png".
        max_file_mb, max_total_mb: limits per file and for the whole archive (uncompressed).
        allow_empty: write the archive even when no file differs from the release.
        named_by_archive: the archive's name is the student id (say so); False when it is submitted into a hub's
            hand-in folder, whose name says whose it is.

    Raises:
        NothingToHandIn: no file differs from the release (and not ``allow_empty``); no archive is written.
        ValueError: the archive name does not end in .tar.gz, .tgz or .zip.
    """
    root = Path(root).resolve()
    try:
        globs = load_course(root).handin_outputs + tuple(include)
    except FileNotFoundError:
        globs = tuple(include)
    archive = Path(output).resolve() if output else root / "submission.tar.gz"
    if not archive.name.endswith((".tar.gz", ".tgz", ".zip")):
        raise ValueError(f"archive {archive} must end in .tar.gz, .tgz or .zip")
    manifest_path = root / MANIFEST_FILE
    released: dict[str, str] = {}
    if manifest_path.is_file():
        released = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
    elif verbose:
        print(f"warning: no {MANIFEST_FILE}; every file of the allowed folders counts as changed")
    result = HandinResult(archive)
    total, max_file, max_all = 0, int(max_file_mb * MB), int(max_total_mb * MB)
    for rel in candidate_files(root, globs):
        path = root / rel
        if path == archive:
            continue
        digest = sha256_file(path)
        if released.get(rel) == digest:
            continue
        size = path.stat().st_size
        reason = _refusal(rel, size, max_file)
        if reason is None and total + size > max_all:
            reason = f"the archive would exceed {max_total_mb:g} MB"
        if reason:
            result.left_out[rel] = reason
            continue
        total += size
        result.files[rel] = digest
    if not result.files and not allow_empty:
        unchanged = sorted({rel.split("/")[0] + "/" for rel in released if rel.startswith(ALLOWED_FOLDERS)})
        raise NothingToHandIn(
            f"nothing to hand in: every file of {', '.join(unchanged) or ', '.join(ALLOWED_FOLDERS)} under {root} "
            "is as released (no library function written, no answer cell filled, no output in "
            f"{', '.join(globs) or 'the hand-in outputs'}); no archive written. Hand in the folder you worked in, "
            "or pass --allow-empty to hand in nothing on purpose"
            + (f"; left out: {', '.join(result.left_out)}" if result.left_out else ""))
    manifest = json.dumps({"format": "course-handin", "version": 1, "files": result.files,
                           "left_out": result.left_out}, indent=1, sort_keys=True).encode("utf-8")
    archive.parent.mkdir(parents=True, exist_ok=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in result.files:
                zf.write(root / rel, rel)
            zf.writestr("MANIFEST.json", manifest)
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for rel in result.files:
                info = tf.gettarinfo(str(root / rel), arcname=rel)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                with open(root / rel, "rb") as handle:
                    tf.addfile(info, handle)
            info = tarfile.TarInfo("MANIFEST.json")
            info.size, info.mode = len(manifest), 0o644
            tf.addfile(info, io.BytesIO(manifest))
    if verbose:
        print(f"packed {len(result.files)} files ({total / MB:.2f} MB) into {archive}:")
        width = max((len(rel) for rel in result.files), default=4)
        print(f"  {'file':<{width}}  {'size':>9}  what")
        for rel in result.files:
            what = "changed" if rel in released else "new"
            print(f"  {rel:<{width}}  {(root / rel).stat().st_size / 1024:>7.1f} kB  {what}")
        if result.left_out:
            print(f"left out {len(result.left_out)} files:")
            for rel, reason in result.left_out.items():
                print(f"  - {rel}: {reason}")
        if named_by_archive:
            print("The archive's name is your student id for the grader: rename it to <student-id>"
                  + (".zip" if archive.name.endswith(".zip") else ".tar.gz") + " if needed.")
    return result


def submit(archive: str | Path, handin_dir: str | Path, verbose: bool = True) -> Path:
    """Copy ``archive`` into ``handin_dir`` as SUBMITTED_NAME (atomically: the grader's ``course collect``
    never sees half a file), replacing an earlier hand-in. Under the course's JupyterHub ``handin_dir`` is the
    student's own hand-in folder, ``/handin`` (``$COURSE_HANDIN_DIR``), which only that student can see.

    Returns:
        The path written. Its modification time is the hand-in time the grader records.

    Raises:
        FileNotFoundError: ``handin_dir`` does not exist. ValueError: ``archive`` is not a .tar.gz.
    """
    from ..atomic import atomic_write

    archive, handin_dir = Path(archive), Path(handin_dir)
    if not archive.name.endswith((".tar.gz", ".tgz")):
        raise ValueError(f"archive {archive}: --submit hands in a .tar.gz (got {archive.name})")
    if not handin_dir.is_dir():
        raise FileNotFoundError(f"hand-in folder {handin_dir} does not exist (is this a server of the course's hub?)")
    target = handin_dir / SUBMITTED_NAME
    data = archive.read_bytes()
    atomic_write(target, lambda temporary: Path(temporary).write_bytes(data))
    if verbose:
        import datetime as dt
        print(f"submitted: {target} ({len(data) / 1024:.0f} kB) at "
              f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC; hand in again to replace it")
    return target
