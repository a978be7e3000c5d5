"""Resumable grading: one state file per judged submission in ``<output>/state/``.

A run that is interrupted (SIGINT, SIGTERM, a crash) leaves the state of every submission it finished;
the next run reuses a state only when it was made for the same archive (its sha256) and the same course
(:func:`course_fingerprint`: the instructor's released and hidden trees, reference annotations, the
grader's own code and every option that changes a score or a feedback line), so a changed archive, a
changed test or a different ``--timeout`` re-grades that submission. ``--restart`` removes every state.

Each state file is written to a new file and renamed into place (never half-written, a link at its name
replaced, never followed), and read back without following links, size-bounded and parsed strictly: a
state that does not parse or does not match is ignored and the submission is graded again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path

from . import annotations as ann
from .gradebook import Submission

STATE_DIR = "state"
STATE_VERSION = 1
MAX_STATE_BYTES = 16 * 1024 * 1024


def tree_digest(root: Path, digest=None):
    """sha256 over every file of ``root`` (relative path, then bytes; links as their target text), sorted;
    ``__pycache__`` folders are left out.

    Returns the hashlib object (``digest``, or a new one, updated in place)."""
    digest = digest or hashlib.sha256()
    root = Path(root)
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in rel.split("/"):
            continue  # derived from the sources (and naming the folder they were compiled in)
        if path.is_symlink():
            digest.update(f"L {rel}\0{os.readlink(path)}\0".encode())
        elif path.is_file():
            digest.update(f"F {rel}\0".encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest


def course_fingerprint(trees: list[Path], options: dict) -> str:
    """A hex sha256 naming what a submission's grade depends on besides its archive: the files of
    ``trees`` (the student and hidden releases) and ``options`` (JSON-able: limits, reveal, the
    reference annotations, the grader version). The grader's own modules are always included."""
    digest = hashlib.sha256(f"v{STATE_VERSION}\0".encode())
    for tree in trees:
        digest.update(f"tree {Path(tree).name}\0".encode())
        tree_digest(tree, digest)
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def archive_sha256(path: Path) -> str:
    """The sha256 of the entry at ``path`` ("" for one that is not a regular file: a link, a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return ""
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_dict(sub: Submission) -> dict:
    """``sub`` as JSON-able data (cell scores as [notebook, cell, score] triples). The reference annotations
    are left out (a state file is no place for a secret): :func:`from_dict` takes them from the host's."""
    data = dataclasses.asdict(sub)
    data["cell_scores"] = [[nb, cell, score] for (nb, cell), score in sub.cell_scores.items()]
    for line in data["annotation_lines"]:
        line["reference_annotation"] = ""
    return data


def from_dict(data: dict, reference: dict | None = None) -> Submission:
    """The Submission that :func:`to_dict` made, each annotation line's reference annotation filled in from
    ``reference`` (region key -> [{"code", "annotation"}], :func:`annotations.reference_annotations`).

    Raises ValueError/TypeError/KeyError/IndexError on malformed data or a line the reference lacks."""
    data = dict(data)
    cells = {(str(nb), str(cell)): (None if score is None else float(score)) for nb, cell, score in data.pop("cell_scores")}
    lines = [ann.LineScore(**dict(line, reference_annotation=reference[line["region"]][line["index"]]["annotation"]
                                  if reference is not None else "")) for line in data.pop("annotation_lines")]
    sub = Submission(**data)
    sub.cell_scores, sub.annotation_lines = cells, lines
    if not isinstance(sub.student, str) or not isinstance(sub.task_scores, dict):
        raise ValueError("malformed state")
    sub.task_scores = {str(k): float(v) for k, v in sub.task_scores.items()}
    return sub


class StateStore:
    """The state folder of one output folder, for one course fingerprint.

    Args:
        output_dir: the grader's output folder (``state/`` is made inside it, mode 0700).
        fingerprint: :func:`course_fingerprint` of this run.
        restart: remove every state first (a full re-grade).
        reference: the reference annotations, put back into loaded annotation lines (never saved).
    """

    def __init__(self, output_dir: Path, fingerprint: str, restart: bool = False, reference: dict | None = None):
        self.folder = Path(output_dir) / STATE_DIR
        if restart and (self.folder.is_symlink() or self.folder.exists()):
            if self.folder.is_symlink() or not self.folder.is_dir():
                self.folder.unlink()
            else:
                shutil.rmtree(self.folder)
        if self.folder.is_symlink():
            raise ValueError(f"{self.folder} is a link: refusing to keep grading state there")
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.fingerprint, self.reference = fingerprint, reference

    def _path(self, student: str) -> Path:
        return self.folder / f"{student}.json"

    def load(self, student: str, archive_sha: str) -> Submission | None:
        """The saved Submission of ``student`` when it was made for ``archive_sha`` and this course; else None."""
        if not archive_sha:
            return None
        try:
            fd = os.open(self._path(student), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_STATE_BYTES:
                return None
            data = os.read(fd, MAX_STATE_BYTES + 1)
        finally:
            os.close(fd)
        try:
            state = json.loads(data.decode("utf-8"))
            if (state.get("version") != STATE_VERSION or state.get("fingerprint") != self.fingerprint
                    or state.get("archive_sha256") != archive_sha):
                return None
            sub = from_dict(state["submission"], self.reference)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError):
            return None
        return sub if sub.student == student else None

    def save(self, sub: Submission, archive_sha: str) -> None:
        """Record ``sub`` for ``archive_sha`` atomically (a new file renamed over the old state)."""
        if not archive_sha:
            return
        text = json.dumps({"version": STATE_VERSION, "fingerprint": self.fingerprint, "archive_sha256": archive_sha,
                           "submission": to_dict(sub)})
        tmp = self.folder / f".{sub.student}.tmp-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._path(sub.student))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def saved(self) -> list[str]:
        """The students with a state file (whatever it was made for)."""
        return sorted(p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))
