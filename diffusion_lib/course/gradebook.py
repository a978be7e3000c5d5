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
notebook with its own cells (manual cells are left for hand grading in formgrader; every solution cell
has a comment row, and answer cells take their points from ``answer_cells`` in tasks.yaml). After the
write, each submission's hand grades and comments are read back (``Submission.hand``), so grades.csv
shows hand and total scores and the feedback quotes the student's answers beside the grader's comment.
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
from .nbcourse import LIBRARY_NOTEBOOK, STATUS_CELL, answer_text, quote
from .nbgrading import is_autograde, nb_cells, nb_meta
from .tasks import Course

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
    notebooks: dict[str, dict] = field(default_factory=dict)  # notebook stem -> the student's notebook (JSON)
    timestamp: str = ""  # the hand-in time (the archive's mtime, UTC), "" when unknown
    hand: dict[tuple[str, str], tuple[float | None, str]] = field(default_factory=dict)  # read back: score, comment
    extra_credit: float = 0.0


class Layout(dict):
    """notebook -> [(cell name, max score, cell type, autograded)], plus ``solutions``: notebook -> the
    grade_ids of its solution cells (each gets a comment row in the gradebook)."""

    def __init__(self, *args, solutions: dict[str, list[str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.solutions = solutions or {}


def gradebook_layout(course: Course, notebooks: dict[str, dict]) -> Layout:
    """notebook -> [(cell name, max score, cell type, autograded)] in a fixed order, from the instructor's
    notebooks (``notebooks``: stem -> notebook JSON); answer cells named in tasks.yaml get its points."""
    layout = Layout({LIBRARY_NOTEBOOK: [(f"task_{t.id}", t.auto_points, "code", True)
                                        for t in course.tasks if t.autograded]},
                    solutions={LIBRARY_NOTEBOOK: [f"task_{t.id}" for t in course.tasks if t.autograded]})
    points = course.answer_points()
    for name in sorted(notebooks):
        cells, solutions = [], []
        for cell in nb_cells(notebooks[name]):
            m = nb_meta(cell)
            if not m.get("grade_id"):
                continue
            if m.get("grade"):
                max_score = points.get((name, m["grade_id"]), float(m.get("points", 0) or 0))
                cells.append((m["grade_id"], max_score, cell.get("cell_type", "code"), is_autograde(cell)))
            if m.get("solution"):
                solutions.append(m["grade_id"])
        layout[name] = cells
        layout.solutions[name] = solutions
    return layout


def write_gradebook(path: Path, assignment: str, layout, submissions: list[Submission]) -> None:
    """Create or update nbgrader's gradebook at ``path`` in place: auto scores and the status comment of
    each submission; hand grades and manual comments already there are kept."""
    try:
        from nbgrader.api import Comment, Gradebook, MissingEntry
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
            for name in getattr(layout, "solutions", {}).get(notebook, []):
                gb.update_or_create_solution_cell(name, notebook, assignment)
        gb.update_or_create_task_cell(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, max_score=0.0,
                                      cell_type="markdown")
        for sub in submissions:
            gb.update_or_create_student(sub.student)
            stamp = {"timestamp": sub.timestamp} if sub.timestamp else {}
            # nbgrader builds a new submission's notebooks and grades from the assignment's relations
            # while the submission is not yet in the session: with autoflush on, each of those reads
            # flushes the half-built objects (SQLAlchemy's SAWarning "not in session, add operation ...
            # will not proceed"); nothing must be flushed before nbgrader adds it
            with gb.db.no_autoflush:
                gb.update_or_create_submission(assignment, sub.student, **stamp)
            _ensure_rows(gb, Comment, MissingEntry, assignment, sub.student, layout)
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
                    elif grade.manual_score is None:
                        grade.needs_manual_grade = True  # formgrader lists it as waiting for a hand grade
            comment = gb.find_comment(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, sub.student)
            grade = gb.find_grade(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, sub.student)
            comment.auto_comment = status_line(sub)
            grade.auto_score, grade.needs_manual_grade = 0.0, False
            gb.db.commit()
        for sub in submissions:
            sub.hand, sub.extra_credit = _read_back(gb, assignment, sub.student, layout)


def _ensure_rows(gb, comment_class, missing, assignment: str, student: str, layout) -> None:
    """Add the comment rows a submission made by an older layout lacks (nbgrader makes them only when the
    submission is created)."""
    for notebook, names in getattr(layout, "solutions", {}).items():
        for name in names:
            try:
                gb.find_comment(name, notebook, assignment, student)
            except missing:
                cell = gb.find_solution_cell(name, notebook, assignment)
                gb.db.add(comment_class(cell_id=cell.id, notebook=gb.find_submission_notebook(notebook, assignment,
                                                                                              student)))
    gb.db.commit()


def _read_back(gb, assignment: str, student: str, layout) -> tuple[dict, float]:
    """(notebook, cell) -> (manual score or None, manual comment) of every graded cell, and the
    submission's extra credit, as formgrader left them."""
    from nbgrader.api import MissingEntry

    hand = {}
    for notebook, cells in layout.items():
        solutions = set(getattr(layout, "solutions", {}).get(notebook, []))
        for name, _, _, _ in cells:
            grade = gb.find_grade(name, notebook, assignment, student)
            comment = ""
            if name in solutions:
                try:
                    comment = gb.find_comment(name, notebook, assignment, student).manual_comment or ""
                except MissingEntry:
                    pass
            hand[(notebook, name)] = (grade.manual_score, comment)
    extra = sum(g.extra_credit or 0.0 for nb in gb.find_submission(assignment, student).notebooks for g in nb.grades)
    return hand, float(extra)


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
    columns += [f"{nb}:{name}" for nb, name in nb_columns]
    columns += ["auto_total", "auto_max", "hand_total", "hand_max", "to_grade", "total", "note"]
    auto_max = (sum(t.auto_points for t in course.tasks if t.autograded)
                + sum(m for nb, cells in layout.items() if nb != LIBRARY_NOTEBOOK for _, m, _, a in cells if a))
    return columns, nb_columns, auto_max


def totals(sub: Submission, layout) -> tuple[float, float, int, float]:
    """(auto total, hand total, hand-graded cells still without a score, total) of one submission: a hand
    score set in formgrader replaces that cell's autograded score; extra credit is added to the total."""
    auto = hand = total = 0.0
    pending = 0
    for notebook, cells in layout.items():
        for name, _, _, autograded in cells:
            if notebook == LIBRARY_NOTEBOOK:
                score = sub.task_scores.get(name[len("task_"):], 0.0) or 0.0
            else:
                score = (sub.cell_scores.get((notebook, name), 0.0) or 0.0) if autograded else 0.0
            manual = sub.hand.get((notebook, name), (None, ""))[0]
            auto += score
            if not autograded:
                hand += manual or 0.0
                pending += manual is None and sub.status == "graded"
            total += score if manual is None else manual
    return auto, hand, pending, total + sub.extra_credit


def write_grades_csv(path: Path, course: Course, layout, submissions: list[Submission]) -> list[dict]:
    """Rewrite grades.csv: this run's students replaced, every other student's row kept (columns the
    current layout lacks are dropped, new ones left empty); sorted, fixed formatting. Returns the rows.
    ``hand_total``/``to_grade``/``total`` come from the hand grades read back from the gradebook
    (:func:`totals`): write the gradebook first."""
    columns, nb_columns, auto_max = grades_columns(course, layout)
    hand_max = sum(m for cells in layout.values() for _, m, _, a in cells if not a)
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
        _, hand, pending, total = totals(sub, layout)
        row["hand_total"], row["hand_max"] = fmt(hand), fmt(hand_max)
        row["to_grade"], row["total"] = str(pending), fmt(total)
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
    annotation and code cell of the table is cut to MAX_ANNOTATION characters. Each written answer
    (``answer_cells``) is quoted under its task in an inert fenced block (:func:`.nbcourse.quote`), with
    its hand score and the grader's comment from ``sub.hand``."""
    lines = [f"# Feedback: {sub.student}", "", f"Status: **{sub.status}**" + (f" ({sub.note})" if sub.note else ""), ""]
    if sub.flagged:
        lines += [f"**Flagged for review** (autograded scores are 0 until a person clears it): {sub.flagged}", ""]
    lines += ["## Autograded tasks", "", "| task | title | score | max |", "|---|---|---|---|"]
    for task in course.tasks:
        if task.autograded:
            lines.append(f"| {task.id} | {task.title} | {fmt(sub.task_scores.get(task.id, 0.0))} | "
                         f"{fmt(task.auto_points)} |")
    maxima = {(nb, name): m for nb, cells in layout.items() for name, m, _, _ in cells}
    for task in course.tasks:
        notes = sub.task_feedback.get(task.id)
        if notes or task.answer_cells:
            lines += ["", f"### {task.id}: {task.title}", ""] + [f"- {n}" for n in notes or []]
        for cell in task.answer_cells:  # the written answers, quoted verbatim in fenced blocks (inert)
            stem = Path(task.notebook).stem
            score, comment = sub.hand.get((stem, cell), (None, ""))
            graded = "not graded yet" if score is None else fmt(score)
            lines += ([""] if lines[-1] else []) + [f"Your answer (`{cell}` in {task.notebook}), graded by hand: "
                      f"{graded} / {fmt(maxima.get((stem, cell), task.manual_points))}", ""]
            lines += quote(answer_text(sub.notebooks.get(stem), cell))
            if comment:
                lines += ["", "Grader's comment:", ""] + quote(comment)
    for notebook, cells in layout.items():
        if notebook == LIBRARY_NOTEBOOK or not cells:
            continue
        lines += ["", f"## Notebook {notebook}", ""]
        if sub.notebook_notes.get(notebook):
            lines += [f"{sub.notebook_notes[notebook]}", ""]
        lines += ["| cell | score | max | graded |", "|---|---|---|---|"]
        for name, max_score, _, autograded in cells:
            score = sub.cell_scores.get((notebook, name)) if autograded else None
            manual = sub.hand.get((notebook, name), (None, ""))[0]
            shown = fmt(manual if manual is not None else score)
            lines.append(f"| {name} | {shown} | {fmt(max_score)} | "
                         f"{'auto' if autograded and manual is None else 'by hand'} |")
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
