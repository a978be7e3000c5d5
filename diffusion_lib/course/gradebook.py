"""Gradebook and feedback of ``course grade``: only the host writes them, and nothing is lost.

The order matters: every submission is judged before anything is written; then nbgrader's gradebook is
updated in place (a submission is created only when missing, and only ``auto_score`` and the status
comment are set, so hand grades, manual comments and extra credit from formgrader survive a re-grade);
then grades.csv is rewritten with this run's students replaced and every other student's row kept;
last, one feedback file per student, written without following links. Nothing here reads a file the
submission could have written.

Gradebook model (nbgrader's schema): one assignment; a notebook "library" with one autograded cell per
task that has tests or annotations (``task_<id>``, max score = points - manual_points) and a task cell
``grader_status`` whose comment holds the submission's status line; one notebook per nbgrader homework
notebook with its own cells (manual cells are left for hand grading in formgrader).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import annotations as ann
from .nbgrading import is_autograde, nb_cells, nb_meta
from .tasks import Course

LIBRARY_NOTEBOOK = "library"
STATUS_CELL = "grader_status"
MAX_ANNOTATION = 300
BASE_COLUMNS = ["student", "archive", "status", "flagged"]


@dataclass
class Submission:
    """Everything the host decided about one archive (scores in points)."""

    student: str
    archive: str
    status: str = "graded"
    note: str = ""
    flagged: str = ""
    task_scores: dict[str, float] = field(default_factory=dict)
    task_feedback: dict[str, list[str]] = field(default_factory=dict)
    cell_scores: dict[tuple[str, str], float | None] = field(default_factory=dict)  # (notebook, cell) -> score
    notebook_notes: dict[str, str] = field(default_factory=dict)
    annotation_lines: list[ann.LineScore] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def gradebook_layout(course: Course, notebooks: dict[str, dict]) -> dict[str, list[tuple[str, float, str, bool]]]:
    """notebook -> [(cell name, max score, cell type, autograded)] in a fixed order."""
    layout = {LIBRARY_NOTEBOOK: [(f"task_{t.id}", t.auto_points, "code", True)
                                 for t in course.tasks if t.autograded]}
    for name in sorted(notebooks):
        cells = []
        for cell in nb_cells(notebooks[name]):
            m = nb_meta(cell)
            if m.get("grade") and m.get("grade_id"):
                cells.append((m["grade_id"], float(m.get("points", 0) or 0), cell.get("cell_type", "code"),
                              is_autograde(cell)))
        layout[name] = cells
    return layout


def write_gradebook(path: Path, assignment: str, layout, submissions: list[Submission]) -> None:
    """Create or update nbgrader's gradebook at ``path`` in place: auto scores and the status comment of
    each submission; hand grades and manual comments already there are kept."""
    try:
        from nbgrader.api import Gradebook, MissingEntry
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("nbgrader is needed for the gradebook: pip install -r requirements.txt") from error
    if shutil.which("alembic") is None:  # nbgrader runs the `alembic` command on a new gradebook
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with Gradebook(f"sqlite:///{path}") as gb:
        gb.update_or_create_assignment(assignment)
        for notebook, cells in layout.items():
            gb.update_or_create_notebook(notebook, assignment)
            for name, max_score, cell_type, _ in cells:
                gb.update_or_create_grade_cell(name, notebook, assignment, max_score=max_score,
                                               cell_type=cell_type)
                if notebook == LIBRARY_NOTEBOOK:
                    gb.update_or_create_solution_cell(name, notebook, assignment)
        gb.update_or_create_task_cell(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, max_score=0.0,
                                      cell_type="markdown")
        for sub in submissions:
            gb.update_or_create_student(sub.student)
            try:
                gb.find_submission(assignment, sub.student)
            except MissingEntry:
                # nbgrader builds the submission's notebooks and grades from the assignment's relations
                # while the new submission is not yet in the session: with autoflush on, each of those
                # reads flushes the half-built objects (SQLAlchemy's SAWarning "not in session, add
                # operation ... will not proceed"); nothing must be flushed before nbgrader adds it
                with gb.db.no_autoflush:
                    gb.add_submission(assignment, sub.student)
            for notebook, cells in layout.items():
                for name, _, _, autograded in cells:
                    grade = gb.find_grade(name, notebook, assignment, sub.student)
                    if notebook == LIBRARY_NOTEBOOK:
                        score = sub.task_scores.get(name[len("task_"):], 0.0)
                    else:
                        score = sub.cell_scores.get((notebook, name)) if sub.status == "graded" else 0.0
                    if autograded or sub.status != "graded":
                        grade.auto_score = float(score or 0.0)
                        if grade.manual_score is None:
                            grade.needs_manual_grade = False
            comment = gb.find_comment(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, sub.student)
            grade = gb.find_grade(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, sub.student)
            comment.auto_comment = status_line(sub)
            grade.auto_score, grade.needs_manual_grade = 0.0, False
            gb.db.commit()


def status_line(sub: Submission) -> str:
    """"status: note" plus the flag reason, as in the gradebook's status comment."""
    line = f"{sub.status}: {sub.note}" if sub.note else sub.status
    return line + (f" [flagged: {sub.flagged}]" if sub.flagged else "")


def fmt(x: float | None) -> str:
    """A score as text with two decimals ("" for None)."""
    return "" if x is None else f"{x:.2f}"


def grades_columns(course: Course, layout) -> tuple[list[str], list[tuple[str, str]], float]:
    """(grades.csv columns, the (notebook, cell) columns, the autograded maximum)."""
    nb_columns = [(nb, name) for nb, cells in layout.items() if nb != LIBRARY_NOTEBOOK
                  for name, _, _, auto in cells if auto]
    columns = BASE_COLUMNS + [f"task_{t.id}" for t in course.tasks if t.autograded]
    columns += [f"{nb}:{name}" for nb, name in nb_columns] + ["auto_total", "auto_max", "note"]
    auto_max = (sum(t.auto_points for t in course.tasks if t.autograded)
                + sum(m for nb, cells in layout.items() if nb != LIBRARY_NOTEBOOK for _, m, _, a in cells if a))
    return columns, nb_columns, auto_max


def write_grades_csv(path: Path, course: Course, layout, submissions: list[Submission]) -> list[dict]:
    """Rewrite grades.csv: this run's students replaced, every other student's row kept (columns the
    current layout lacks are dropped, new ones left empty); sorted, fixed formatting. Returns the rows."""
    columns, nb_columns, auto_max = grades_columns(course, layout)
    rows = {}
    if path.is_file() and not path.is_symlink():
        with open(path, encoding="utf-8", newline="") as handle:
            for old in csv.DictReader(handle):
                if old.get("student"):
                    rows[old["student"]] = {c: old.get(c) or "" for c in columns}
    for sub in submissions:
        row = {"student": sub.student, "archive": sub.archive, "status": sub.status, "flagged": sub.flagged}
        for t in course.tasks:
            if t.autograded:
                row[f"task_{t.id}"] = fmt(sub.task_scores.get(t.id, 0.0))
        for nb, name in nb_columns:
            row[f"{nb}:{name}"] = fmt(sub.cell_scores.get((nb, name), 0.0) or 0.0)
        row["auto_total"] = fmt(sum(sub.task_scores.values()) + sum(v or 0 for v in sub.cell_scores.values()))
        row["auto_max"] = fmt(auto_max)
        row["note"] = sub.note
        rows[sub.student] = row
    ordered = [rows[k] for k in sorted(rows)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(ordered)
    write_private(path, buffer.getvalue())
    return ordered


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a new file renamed into place (a link at ``path`` is replaced,
    never followed)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _cut(text: str, limit: int = MAX_ANNOTATION) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + " ..."


def feedback(sub: Submission, course: Course, layout, reveal: bool = False) -> str:
    """The student's feedback (Markdown). Reference annotations appear only when ``reveal``; every
    annotation and code cell of the table is cut to MAX_ANNOTATION characters."""
    lines = [f"# Feedback: {sub.student}", "", f"Status: **{sub.status}**" + (f" ({sub.note})" if sub.note else ""), ""]
    if sub.flagged:
        lines += [f"**Flagged for review** (autograded scores are 0 until a person clears it): {sub.flagged}", ""]
    lines += ["## Autograded tasks", "", "| task | title | score | max |", "|---|---|---|---|"]
    for task in course.tasks:
        if task.autograded:
            lines.append(f"| {task.id} | {task.title} | {fmt(sub.task_scores.get(task.id, 0.0))} | "
                         f"{fmt(task.auto_points)} |")
    for task in course.tasks:
        notes = sub.task_feedback.get(task.id)
        if notes:
            lines += ["", f"### {task.id}: {task.title}", ""] + [f"- {n}" for n in notes]
    for notebook, cells in layout.items():
        if notebook == LIBRARY_NOTEBOOK or not cells:
            continue
        lines += ["", f"## Notebook {notebook}", ""]
        if sub.notebook_notes.get(notebook):
            lines += [f"{sub.notebook_notes[notebook]}", ""]
        lines += ["| cell | score | max | graded |", "|---|---|---|---|"]
        for name, max_score, _, autograded in cells:
            score = sub.cell_scores.get((notebook, name))
            lines.append(f"| {name} | {fmt(score) if autograded else ''} | {fmt(max_score)} | "
                         f"{'auto' if autograded else 'by hand'} |")
    if sub.annotation_lines:
        head = "| region | line | code | your annotation |" + (" reference annotation |" if reveal else "") + " credited |"
        lines += ["", "## Annotations (# Start / # End regions)", "", head,
                  "|---|---|---|---|" + ("---|" if reveal else "") + "---|"]
        for s in sub.annotation_lines:
            code = _cut(s.student_code if s.student_code is not None else "(missing)")
            if not s.code_unchanged and s.student_code is not None:
                code += " (code changed)"
            ref = f" {_cut(s.reference_annotation)} |" if reveal else ""
            lines.append(f"| {s.region} | {s.index + 1} | `{code}` | {_cut(s.student_annotation)} |{ref} "
                         f"{'yes' if s.credited else 'no'} |")
    if sub.ignored:
        lines += ["", "## Files not used", ""] + [f"- {_cut(i)}" for i in sub.ignored[:200]]
    return "\n".join(lines) + "\n"
