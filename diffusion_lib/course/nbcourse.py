"""nbgrader's course layout in the grading folder, so that formgrader shows every submission.

``course grade`` writes, next to gradebook.db (nbgrader's own layout, one assignment)::

    nbgrader_config.py                        course id, the gradebook's url, sanitized HTML
    source/<assignment>/<notebook>.ipynb      the released notebooks (formgrader needs the folder; the
                                              instructor's, with solutions, stay in the repository, so
                                              the grading folder holds no solution or hidden test)
    release/<assignment>/<notebook>.ipynb     what the students got
    submitted/<student>/<assignment>/         the student's notebooks + timestamp.txt (hand-in time)
    autograded/<student>/<assignment>/        what formgrader renders: library.ipynb (one read-only cell
                                              per autograded task, with the grader's notes) and each
                                              homework notebook, its graded cells laid by the host

Nothing of a submission is trusted as metadata: an autograded notebook is rebuilt from the student's
cells, where a cell's ``grade_id`` only locates the student's text. Every nbgrader cell carries the
instructor's metadata (answer cells with their points from tasks.yaml) and, except for solution cells,
the released source; every other student cell becomes a plain cell without nbgrader metadata, outputs
or attachments, and the student's Markdown and raw cells are escaped (HTML, links and images show as
text). Only the host writes here: each folder is built in a private temporary folder and renamed into
place, and links found in the layout are replaced, never followed.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .nbgrading import nb_cells, nb_meta

LIBRARY_NOTEBOOK = "library"  # the stem of the generated notebook that holds the library tasks' grades
STATUS_CELL = "grader_status"  # the locked cell of library.ipynb whose comment holds the status line
MAX_ANSWER = 4000  # characters of an answer quoted in the feedback
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f %Z"  # nbgrader's Exchange.timestamp_format
NO_ANSWER = "(no answer: this cell is missing from the submission)"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def hand_in_time(archive: Path) -> str:
    """The hand-in time of ``archive`` (its mtime, which ``course collect`` keeps) in nbgrader's timestamp
    format, UTC; "" when it is not a regular file (a link is not followed)."""
    try:
        st = os.lstat(archive)
    except OSError:
        return ""
    if not os.path.stat.S_ISREG(st.st_mode):
        return ""
    return datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime(TIMESTAMP_FORMAT)


def read_notebooks(folder: Path, notebooks) -> dict[str, dict]:
    """stem -> the notebook JSON at ``folder``/<rel> for each relative path ``rel`` of ``notebooks`` (the
    instructor's nbgrader notebooks); a link, a missing file or invalid JSON is left out."""
    found = {}
    for rel in notebooks:
        path = Path(folder) / rel
        if path.is_symlink() or not path.is_file():
            continue
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(nb, dict):
            found[Path(rel).stem] = nb
    return found


def cell_text(cell: dict) -> str:
    """A cell's source as one string ("" when malformed)."""
    source = cell.get("source", "")
    if isinstance(source, list):
        return "".join(s for s in source if isinstance(s, str))
    return source if isinstance(source, str) else ""


def answer_text(nb: dict | None, grade_id: str) -> str | None:
    """The text of the first cell of the student's notebook ``nb`` that claims ``grade_id`` (None if none)."""
    for cell in nb_cells(nb or {}):
        if nb_meta(cell).get("grade_id") == grade_id:
            return cell_text(cell)
    return None


def quote(text: str | None, limit: int = MAX_ANSWER) -> list[str]:
    """Markdown lines showing ``text`` verbatim and inert: a fenced block (fence longer than any run of
    backticks in it), control characters removed, cut at ``limit`` characters with a note."""
    text = NO_ANSWER if text is None else text
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip("\n") or "(empty)"
    if len(text) > limit:
        text = text[:limit] + f"\n... ({len(text) - limit} more characters not shown)"
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + "text", *text.split("\n"), fence]


def inert_markdown(text: str) -> str:
    """Markdown that shows ``text`` as written and runs nothing: HTML is escaped, so are the brackets of
    links and images (the text stays readable; nothing loads or links)."""
    text = html.escape(_CONTROL.sub("", text), quote=False)
    return text.replace("[", "\\[").replace("]", "\\]")


def _meta(src_meta: dict, points: float | None) -> dict:
    meta = {k: src_meta[k] for k in ("grade", "solution", "locked", "task", "grade_id", "points") if k in src_meta}
    meta["schema_version"] = 3
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _cell(cell_type: str, source: str, metadata: dict) -> dict:
    cell = {"cell_type": cell_type, "id": "", "metadata": metadata, "source": source}
    if cell_type == "code":
        cell.update(outputs=[], execution_count=None)
    return cell


def _number(cells: list[dict]) -> None:
    """Give every cell its nbformat 4.5 id (the host's, by position)."""
    for n, cell in enumerate(cells):
        cell["id"] = f"cell-{n}"


def laid_notebook(student_nb: dict | None, source_nb: dict, release_nb: dict,
                  points: dict[str, float]) -> dict:
    """The notebook formgrader renders for one student (nbformat 4 JSON).

    Args:
        student_nb: the student's notebook JSON (None: missing or unreadable).
        source_nb: the instructor's notebook (nbgrader metadata of every graded or locked cell).
        release_nb: the released notebook (the source of non-solution cells: no hidden test, no solution).
        points: grade_id -> points of the answer cells named in tasks.yaml (they override the notebook's).
    """
    source_cells = {nb_meta(c).get("grade_id"): c for c in nb_cells(source_nb) if nb_meta(c).get("grade_id")}
    released = {nb_meta(c).get("grade_id"): c for c in nb_cells(release_nb) if nb_meta(c).get("grade_id")}
    cells, seen = [], set()

    def instructor_cell(grade_id: str, student_source: str | None) -> dict:
        src = source_cells[grade_id]
        meta = _meta(nb_meta(src), points.get(grade_id))
        kind = src.get("cell_type") if src.get("cell_type") in ("code", "markdown") else "markdown"
        if nb_meta(src).get("solution"):
            text = NO_ANSWER if student_source is None else student_source
            return _cell(kind, inert_markdown(text) if kind == "markdown" else text, meta)
        return _cell(kind, cell_text(released.get(grade_id, {"source": ""})), meta)

    for cell in nb_cells(student_nb or {}):
        grade_id = nb_meta(cell).get("grade_id")
        if isinstance(grade_id, str) and grade_id in source_cells:
            if grade_id not in seen:
                seen.add(grade_id)
                cells.append(instructor_cell(grade_id, cell_text(cell)))
            continue  # a second cell claiming a grade_id would shadow the first
        kind = cell.get("cell_type")
        if kind == "code":
            cells.append(_cell("code", cell_text(cell), {}))
        elif kind in ("markdown", "raw"):
            cells.append(_cell("markdown", inert_markdown(cell_text(cell)), {}))
    for grade_id, src in source_cells.items():
        m = nb_meta(src)
        if grade_id not in seen and (m.get("grade") or m.get("solution")):
            cells.append(instructor_cell(grade_id, None))
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    _number(cells)
    return {"cells": cells, "metadata": {"kernelspec": kernelspec, "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def library_notebook(course, sub, status: str) -> dict:
    """One read-only autograded cell per autograded task (grade_id ``task_<id>``, its score and the
    grader's notes as comments) and the status line as a task cell."""
    cells = []
    for task in course.tasks:
        if not task.autograded:
            continue
        notes = sub.task_feedback.get(task.id, []) if sub else []
        score = sub.task_scores.get(task.id, 0.0) if sub else 0.0
        lines = [f"# {task.id}: {task.title}", f"# autograded by `course grade`: {score:.2f} / {task.auto_points:.2f}"]
        lines += ["# " + _CONTROL.sub("", line) for note in notes for line in str(note).splitlines()[:20]]
        meta = {"nbgrader": {"grade": True, "solution": False, "locked": True, "grade_id": f"task_{task.id}",
                             "points": task.auto_points, "schema_version": 3}}
        cells.append(_cell("code", "\n".join(lines) + "\n", meta))
    meta = {"nbgrader": {"grade": False, "solution": False, "task": True, "locked": True, "grade_id": STATUS_CELL,
                         "points": 0.0, "schema_version": 3}}
    cells.append(_cell("markdown", "Grader status: " + inert_markdown(status), meta))
    _number(cells)
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def config_text(course_id: str, db_path: Path) -> str:
    """nbgrader_config.py of the grading folder: formgrader opens on this folder and this gradebook."""
    return ("# Written by `course grade`: nbgrader's formgrader opens on this folder (docs/coursework.md).\n"
            "import os\n\nc = get_config()  # noqa: F821 (nbgrader's config loader defines it)\n"
            f"c.CourseDirectory.course_id = {course_id!r}\n"
            "c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))\n"
            f"c.CourseDirectory.db_url = 'sqlite:///' + os.path.join(c.CourseDirectory.root, {db_path.name!r})\n"
            "# students' Markdown reaches formgrader's pages: nbconvert keeps only safe HTML\n"
            "c.HTMLExporter.sanitize_html = True\n")


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _real_dir(path: Path) -> Path:
    """``path`` as a real folder: a link or file there is removed (never followed), the folder made."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)
    return path


def _swap(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target`` by renames (a link at ``target`` is removed, not followed)."""
    old = None
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_course_layout(out: Path, course, assignment: str, sources: dict[str, dict], released: dict[str, dict],
                        submissions, status_line) -> None:
    """Write nbgrader's course layout for ``submissions`` under the grading folder ``out`` (see the module
    docstring). Other students' folders are kept (a partial re-grade); source/ and release/ are rewritten
    (both from ``released``: the grading folder holds no solution).

    Args:
        sources, released: notebook stem -> the instructor's and the released notebook JSON.
        submissions: gradebook.Submission objects (``notebooks``: stem -> the student's notebook JSON,
            ``timestamp``, scores and notes).
        status_line: Submission -> the status text shown in library.ipynb.
    """
    points = course.answer_points()
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix=".nbgrader-layout-", dir=out))
    try:
        _write(work / "nbgrader_config.py", config_text(course.raw.get("course_id") or assignment,
                                                        out / "gradebook.db"))
        os.replace(work / "nbgrader_config.py", out / "nbgrader_config.py")
        for kind, notebooks in (("source", released), ("release", released)):  # no solution in the output
            for stem, nb in notebooks.items():
                _write(work / kind / assignment / f"{stem}.ipynb", nb)
            _write(work / kind / assignment / f"{LIBRARY_NOTEBOOK}.ipynb", library_notebook(course, None, ""))
            _swap(work / kind, out / kind)
        for kind in ("submitted", "autograded"):
            _real_dir(out / kind)
        for sub in submissions:
            base = work / "students" / sub.student
            for kind in ("submitted", "autograded"):
                _write(base / kind / assignment / "timestamp.txt", (sub.timestamp or "") + "\n")
            for stem, nb in sorted(sub.notebooks.items()):
                _write(base / "submitted" / assignment / f"{stem}.ipynb", nb)
            for stem, source in sources.items():
                laid = laid_notebook(sub.notebooks.get(stem), source, released.get(stem, {}),
                                     {cell: p for (nb, cell), p in points.items() if nb == stem})
                _write(base / "autograded" / assignment / f"{stem}.ipynb", laid)
            _write(base / "autograded" / assignment / f"{LIBRARY_NOTEBOOK}.ipynb",
                   library_notebook(course, sub, status_line(sub)))
            for kind in ("submitted", "autograded"):
                _swap(base / kind, out / kind / sub.student)
    finally:
        shutil.rmtree(work, ignore_errors=True)
