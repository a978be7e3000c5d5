"""The task table of the coursework: ``coursework/tasks.yaml`` (format: the coursework spec).

Every command (release, check, handin, grade) reads the same table, so points and checks have one home.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

TASKS_FILE = "coursework/tasks.yaml"
ANNOTATIONS_FILE = "coursework/" + "reference_annotations.json"  # instructor-only, never released
MANIFEST_FILE = "coursework/release_manifest.json"
TASK_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,31}$")


@dataclass(frozen=True)
class Task:
    """One graded task. ``points`` is the total; ``manual_points`` of it are graded by hand; the rest is
    earned by the autograded check: all ``tests`` pass, or (``annotation``) the share of region lines annotated."""

    id: str
    title: str
    points: float
    tests: tuple[str, ...] = ()
    notebook: str | None = None
    annotation: bool = False
    files: tuple[str, ...] = ()
    manual_points: float = 0.0
    answer_cells: tuple[str, ...] = ()  # grade_ids of the notebook's answer cells graded by hand

    @property
    def auto_points(self) -> float:
        return round(self.points - self.manual_points, 6)

    @property
    def autograded(self) -> bool:
        return self.auto_points > 0 and (bool(self.tests) or self.annotation)


@dataclass(frozen=True)
class Course:
    title: str
    tasks: tuple[Task, ...]
    instructor_only: tuple[str, ...] = ()
    handin_outputs: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def task(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.id == task_id:
                return task
        raise ValueError(f"unknown task {task_id!r}; tasks: {[t.id for t in self.tasks]}")

    @property
    def annotation_files(self) -> tuple[str, ...]:
        files: list[str] = []
        for task in self.tasks:
            if task.annotation:
                files += [f for f in task.files if f not in files]
        return tuple(files)

    def title_for(self, label: str | None) -> str:
        """The stub message of a solution region whose marker names ``label`` (a task id or a full title)."""
        if not label:
            return "solution missing: complete this function"
        for task in self.tasks:
            if label == task.id:
                return task.title
        return label


def _strings(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a string or a list of strings; got {value!r}")
    return tuple(value)


def load_course(root: str | Path = ".") -> Course:
    """Read and validate ``coursework/tasks.yaml`` under ``root``.

    Raises:
        FileNotFoundError: no task table.
        ValueError: a field is missing or malformed (the message names the task and the field).
    """
    import yaml

    path = Path(root) / TASKS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no task table {path} (the coursework spec describes its format)")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise ValueError(f"{path}: needs a non-empty list 'tasks'")
    known = {"id", "title", "points", "tests", "notebook", "annotation", "files", "manual_points", "description",
             "answer_cells"}
    tasks, seen = [], set()
    for n, item in enumerate(data["tasks"]):
        where = f"{path}: task {n + 1}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a mapping")
        unknown = set(item) - known
        if unknown:
            raise ValueError(f"{where}: unknown fields {sorted(unknown)}; accepted: {sorted(known)}")
        task_id = str(item.get("id", ""))
        if not TASK_ID.match(task_id):
            raise ValueError(f"{where}: id {task_id!r} must be 1-32 characters of letters, digits, '.', '_', '-'")
        if task_id in seen:
            raise ValueError(f"{where}: duplicate id {task_id!r}")
        seen.add(task_id)
        try:
            points = float(item.get("points"))
            manual = float(item.get("manual_points") or 0.0)
        except (TypeError, ValueError):
            raise ValueError(f"{where} ({task_id}): points and manual_points must be numbers") from None
        if points < 0 or not 0 <= manual <= points:
            raise ValueError(f"{where} ({task_id}): need 0 <= manual_points <= points; got {manual}, {points}")
        tasks.append(Task(id=task_id, title=str(item.get("title") or f"Homework {task_id}"), points=points,
                          tests=_strings(item.get("tests"), f"{where} tests"), notebook=item.get("notebook"),
                          annotation=bool(item.get("annotation", False)),
                          files=_strings(item.get("files"), f"{where} files"), manual_points=manual,
                          answer_cells=_strings(item.get("answer_cells"), f"{where} answer_cells")))
        if manual and not tasks[-1].answer_cells:
            raise ValueError(f"{where} ({task_id}): manual_points {manual:g} need answer_cells (the grade_ids of "
                             "the notebook cells graded by hand)")
        if tasks[-1].answer_cells and not tasks[-1].notebook:
            raise ValueError(f"{where} ({task_id}): answer_cells need the task's notebook")
    return Course(title=str(data.get("title", "Coursework")), tasks=tuple(tasks),
                  instructor_only=_strings(data.get("instructor_only"), f"{path}: instructor_only"),
                  handin_outputs=_strings(data.get("handin_outputs"), f"{path}: handin_outputs"), raw=data)
