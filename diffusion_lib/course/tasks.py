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
HOST_CHECKS = ("schedule", "guidance", "samples")  # checks the host decides on data (see host_checks.py)
MAX_DESCRIPTION = 200


@dataclass(frozen=True)
class Check:
    """One scored check of a task: ``points`` earned when every test of it passes (public ``tests`` by
    function or class name; a ``hidden`` check's tests are the hidden-test region labelled with its id)
    and, with ``host``, the host's own decision on the data the sandbox computed also passes.
    ``description`` (required for hidden and host checks) is public: what is checked, not how."""

    id: str
    points: float
    tests: tuple[str, ...] = ()
    hidden: bool = False
    host: str | None = None
    description: str = ""


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
    checks: tuple[Check, ...] = ()  # the autograded points split per check (empty: all tests or nothing)
    gate: str | None = None  # a check that must pass before any check of the task scores (the task's point)

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

    def answer_points(self) -> dict[tuple[str, str], float]:
        """(notebook stem, grade_id) -> points of every answer cell named here (a task's manual points split
        evenly over its answer cells)."""
        return {(Path(task.notebook).stem, cell): round(task.manual_points / len(task.answer_cells), 6)
                for task in self.tasks for cell in task.answer_cells}

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


def _entry_id(item, known: set[str], where: str, seen: set[str], what: str) -> str:
    """The ``id`` of one task or check mapping, after checking it has only ``known`` fields and an id that
    matches TASK_ID and is not in ``seen`` (then added). ValueError names the entry and the bad value."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: must be a mapping with {sorted(known)}; got {item!r}")
    unknown = set(item) - known
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; accepted: {sorted(known)}")
    entry_id = str(item.get("id", ""))
    if not TASK_ID.match(entry_id):
        raise ValueError(f"{where}: id {entry_id!r} must be 1-32 characters of letters, digits, '.', '_', '-'")
    if entry_id in seen:
        raise ValueError(f"{where}: duplicate {what} {entry_id!r}")
    seen.add(entry_id)
    return entry_id


def _checks(value, where: str) -> tuple[Check, ...]:
    """The validated ``checks`` list of one task (see :class:`Check`); ValueError names the bad entry."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: checks must be a non-empty list of mappings; got {value!r}")
    known = {"id", "points", "tests", "hidden", "host", "description"}
    checks, seen = [], set()
    for n, item in enumerate(value):
        here = f"{where} check {n + 1}"
        check_id = _entry_id(item, known, here, seen, "check id")
        points = item.get("points")
        if isinstance(points, bool) or not isinstance(points, (int, float)) or not 0 <= points < float("inf"):
            raise ValueError(f"{here} ({check_id}): points must be a number >= 0; got {points!r}")
        hidden = item.get("hidden", False)
        if not isinstance(hidden, bool):
            raise ValueError(f"{here} ({check_id}): hidden must be true or false; got {hidden!r}")
        host = item.get("host")
        if host is not None and host not in HOST_CHECKS:
            raise ValueError(f"{here} ({check_id}): host {host!r} is not a host check; accepted: {list(HOST_CHECKS)}")
        tests = _strings(item.get("tests"), f"{here} ({check_id}) tests")
        if hidden and tests:
            raise ValueError(f"{here} ({check_id}): a hidden check names no tests (its tests are the hidden-test "
                             f"region labelled [{check_id}]); got tests {list(tests)}")
        if not (tests or hidden or host):
            raise ValueError(f"{here} ({check_id}): needs tests, hidden: true or a host check")
        description = item.get("description", "")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION or "\n" in description:
            raise ValueError(f"{here} ({check_id}): description must be one line of at most {MAX_DESCRIPTION} "
                             f"characters; got {description!r}")
        if (hidden or host) and not description.strip():
            raise ValueError(f"{here} ({check_id}): a hidden or host check needs a public one-line description "
                             "(what it checks, not how)")
        checks.append(Check(check_id, float(points), tests, hidden, host, description.strip()))
    return tuple(checks)


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
             "answer_cells", "checks", "gate"}
    tasks, seen = [], set()
    for n, item in enumerate(data["tasks"]):
        where = f"{path}: task {n + 1}"
        task_id = _entry_id(item, known, where, seen, "id")
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
                          answer_cells=_strings(item.get("answer_cells"), f"{where} answer_cells"),
                          checks=_checks(item.get("checks"), f"{where} ({task_id})"),
                          gate=item.get("gate")))
        task = tasks[-1]
        if task.gate is not None and task.gate not in {c.id for c in task.checks}:
            raise ValueError(f"{where} ({task_id}): gate {task.gate!r} must name one of the task's checks; "
                             f"accepted: {[c.id for c in task.checks]}")
        if task.checks:
            total = round(sum(c.points for c in task.checks), 6)
            if abs(total - task.auto_points) > 1e-6:
                raise ValueError(f"{where} ({task_id}): the checks' points add up to {total:g}; they must add up "
                                 f"to the autograded points {task.auto_points:g} (points - manual_points)")
            if not task.tests:
                raise ValueError(f"{where} ({task_id}): checks need the task's tests")
        if manual and not tasks[-1].answer_cells:
            raise ValueError(f"{where} ({task_id}): manual_points {manual:g} need answer_cells (the grade_ids of "
                             "the notebook cells graded by hand)")
        if tasks[-1].answer_cells and not tasks[-1].notebook:
            raise ValueError(f"{where} ({task_id}): answer_cells need the task's notebook")
    return Course(title=str(data.get("title", "Coursework")), tasks=tuple(tasks),
                  instructor_only=_strings(data.get("instructor_only"), f"{path}: instructor_only"),
                  handin_outputs=_strings(data.get("handin_outputs"), f"{path}: handin_outputs"), raw=data)
