"""``course check``: the student's self-check (also a library call for a notebook cell).

Per task: the public tests (pytest in a subprocess, so edited modules are re-imported), the
annotation slots filled, optionally the homework notebooks executed in the smoke profile; a summary
table of what is done. A stub's ``NotImplementedError`` reads as "not started".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import annotations as ann
from .tasks import Course, Task, load_course

MESSAGE_LIMIT = 4000  # characters of one failure message kept (test report, self-check table)


@dataclass
class TestRun:
    """The outcome of one task's tests."""

    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (nodeid, message)
    timed_out: bool = False
    returncode: int | None = None
    output: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.passed) and not self.failed and not self.timed_out and self.returncode == 0

    @property
    def status(self) -> str:
        if self.timed_out:
            return "timed out"
        if self.ok:
            return "done"
        if self.failed and all("NotImplementedError" in message for _, message in self.failed):
            return "not started"
        if not self.passed and not self.failed:
            return "error (no test ran)"
        return "failing"


PLUGIN_MODULE = "_course_test_report"


def write_plugin(folder: Path) -> Path:
    """Copy the report plugin into ``folder`` as its own module (never the copy inside a student's tree)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{PLUGIN_MODULE}.py"
    target.write_text(Path(__file__).with_name("pytest_report.py").read_text(encoding="utf-8"), encoding="utf-8")
    return target


def run_pytest(root: Path, targets: list[str], *, timeout_s: float, env: dict | None = None,
               report_path: Path | None = None, python: str = sys.executable, preexec_fn=None) -> TestRun:
    """Run pytest on ``targets`` in ``root`` in its own process group; kill the group after ``timeout_s``.

    ``env`` must put a folder holding the plugin (see :func:`write_plugin`) on PYTHONPATH; without
    ``env`` and ``report_path`` a temporary folder is used.
    """
    run_env = dict(os.environ if env is None else env)
    scratch = None
    if report_path is None:
        scratch = tempfile.mkdtemp(prefix="course-check-")
        write_plugin(Path(scratch))
        report_path = Path(scratch) / "report.jsonl"
        run_env["PYTHONPATH"] = os.pathsep.join([scratch, str(root)] + [
            p for p in run_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        return _run_pytest(root, targets, timeout_s, run_env, report_path, python, preexec_fn)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_pytest(root, targets, timeout_s, run_env, report_path, python, preexec_fn) -> TestRun:
    plugin = PLUGIN_MODULE
    report_path.write_text("")
    run_env["COURSE_TEST_REPORT"] = str(report_path)
    run_env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", plugin, "--rootdir", str(root),
               "-o", "addopts=", "--color=no", *targets]
    result = TestRun()
    process = subprocess.Popen(command, cwd=root, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=preexec_fn)
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        result.timed_out = True
        _kill_group(process)
        out, _ = process.communicate()
    else:
        _kill_group(process)  # leftovers of the group (background children)
    result.returncode = process.returncode
    result.output = out.decode("utf-8", "replace")[-20000:]
    try:
        lines = report_path.read_text(encoding="utf-8", errors="replace").splitlines()[:10000]
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
            nodeid, outcome = str(record["nodeid"]), record["outcome"]
        except (ValueError, KeyError, TypeError):
            continue
        if outcome == "passed":
            result.passed.append(nodeid)
        elif outcome == "failed":
            result.failed.append((nodeid, str(record.get("message", ""))[:MESSAGE_LIMIT]))
    if result.timed_out:
        result.failed.append(("(time limit)", f"the tests did not finish within {timeout_s:g} s"))
    elif result.returncode not in (0, 1) and not result.failed:
        tail = result.output.strip().splitlines()[-3:]
        result.failed.append(("(pytest)", f"pytest exited with status {result.returncode}: " + " | ".join(tail)))
    return result


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def annotation_progress(root: Path, task: Task) -> tuple[int, int]:
    """(filled, total) annotation slots of the task's regions in the student's files."""
    filled = total = 0
    for rel in task.files:
        path = Path(root) / rel
        try:
            regions = ann.find_regions(path.read_text(encoding="utf-8"), rel)
        except (OSError, ValueError):
            continue
        for region in regions:
            total += len(region.lines)
            filled += sum(1 for line in region.lines if line.annotation)
    return filled, total


PLACEHOLDER_ANSWERS = {"", "YOUR ANSWER HERE"}  # what an answer cell of the release holds until answered


def run_notebook(path: Path, *, timeout_s: float, parameters: dict | None = None, cwd: Path | None = None,
                 library_root: Path | None = None) -> str:
    """Execute a notebook with papermill into a temporary copy; returns "ok" or the first error line.

    Args:
        library_root: a folder whose ``diffusion_lib`` the kernel imports (put first on its PYTHONPATH),
            so that a check of a folder runs that folder's library, not the one installed in the venv.
    """
    import papermill

    saved = os.environ.get("PYTHONPATH")
    if library_root is not None:  # the kernel inherits this process's environment
        os.environ["PYTHONPATH"] = os.pathsep.join([str(library_root)] + ([saved] if saved else []))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                papermill.execute_notebook(str(path), str(Path(tmp) / path.name), parameters=parameters or {},
                                           cwd=str(cwd or path.parent), progress_bar=False,
                                           execution_timeout=timeout_s, kernel_name="python3")
            except Exception as error:  # noqa: BLE001 - report any failure as the notebook's status
                lines = [l for l in str(error).strip().splitlines() if l.strip()]
                return "error: " + (lines[-1] if lines else type(error).__name__)[:MESSAGE_LIMIT]
    finally:
        if library_root is not None:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
    return "ok"


def answered_cells(root: Path, task: Task) -> tuple[int, int]:
    """(answered, total) of the task's hand-graded answer cells (``answer_cells`` in tasks.yaml).

    A cell counts as answered when it holds more than the release's placeholder ("YOUR ANSWER HERE").
    A missing notebook or cell counts as not answered.
    """
    try:
        cells = json.loads((Path(root) / task.notebook).read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, TypeError):
        cells = []
    sources = {}
    for cell in cells:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        source = cell.get("source", "")
        sources[grade_id] = "".join(source) if isinstance(source, list) else str(source)
    answered = sum(1 for cell_id in task.answer_cells
                   if sources.get(cell_id, "").strip() not in PLACEHOLDER_ANSWERS)
    return answered, len(task.answer_cells)


def _no_test_hint(run: TestRun) -> str:
    """Why no test ran, in pytest's own last lines, and what to do."""
    tail = "\n    ".join(run.output.strip().splitlines()[-8:]) or "(no output)"
    hint = ("pytest is not installed in this Python: install the course environment "
            "(.venv/bin/pip install -r requirements.txt) and run the check with .venv/bin/python"
            if "No module named pytest" in run.output else
            "the test files could not be collected; the lines above say why")
    return f"no test ran (pytest exit status {run.returncode}); pytest said:\n    {tail}\n  What to do: {hint}"


def check(root: str | Path = ".", run_notebooks: bool = False, *, timeout_s: float = 600,
          verbose: bool = True):
    """The self-check table: one row per task (public tests, annotation slots, notebook, status).

    Hand-graded parts (``answer_cells``) read "answered" / "not answered": the check cannot grade them.
    Every failing test of every task is listed, each message up to MESSAGE_LIMIT characters; a task
    whose tests did not run at all shows pytest's own last lines and what to do.

    Returns:
        pandas.DataFrame with columns task, title, points, tests_passed, tests_failed, annotations,
        notebook, answers, status, failures (list of "nodeid: message"), first_failure.
    """
    import pandas as pd

    root = Path(root).resolve()
    course: Course = load_course(root)
    rows = []
    notebook_status: dict[str, str] = {}
    for task in course.tasks:
        row = {"task": task.id, "title": task.title, "points": task.points, "tests_passed": 0, "tests_failed": 0,
               "annotations": "", "notebook": "", "answers": "", "status": "", "failures": []}
        statuses = []
        if task.tests:
            run = run_pytest(root, list(task.tests), timeout_s=timeout_s)
            row["tests_passed"], row["tests_failed"] = len(run.passed), len(run.failed)
            row["failures"] = [f"{nodeid}: {message}"[:MESSAGE_LIMIT] for nodeid, message in run.failed]
            if run.status == "error (no test ran)":
                row["failures"].append(_no_test_hint(run))
            statuses.append(run.status)
        if task.annotation:
            filled, total = annotation_progress(root, task)
            row["annotations"] = f"{filled}/{total}"
            statuses.append("done" if total and filled == total else "not started" if filled == 0 else "in progress")
        if task.notebook and run_notebooks:
            if task.notebook not in notebook_status:
                nb_path = root / task.notebook
                notebook_status[task.notebook] = (run_notebook(nb_path, timeout_s=timeout_s,
                                                               parameters=_smoke_parameters(nb_path),
                                                               library_root=root)
                                                  if nb_path.is_file() else "missing")
            row["notebook"] = notebook_status[task.notebook]
            statuses.append("done" if row["notebook"] == "ok" else "failing")
        if statuses:
            row["status"] = ("done" if all(s == "done" for s in statuses)
                             else "not started" if all(s == "not started" for s in statuses)
                             else next(s for s in statuses if s != "done" and s != "not started")
                             if any(s not in ("done", "not started") for s in statuses) else "in progress")
        if task.answer_cells:
            answered, total = answered_cells(root, task)
            row["answers"] = "answered" if answered == total else (
                "not answered" if answered == 0 else f"{answered}/{total} answered")
            # The written part is graded by hand: the check can only say whether it is there.
            row["status"] = f"{row['status']} + {row['answers']}" if row["status"] else row["answers"]
        row["first_failure"] = row["failures"][0] if row["failures"] else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if verbose:
        print(table.drop(columns=["failures", "first_failure"]).to_string(index=False))
        done = sum(1 for r in rows if _is_done(r["status"]))
        print(f"\n{done}/{len(rows)} tasks done (a written answer counts once it is there; it is graded by hand).")
        for r in rows:
            if r["failures"] and not _is_done(r["status"]):
                print(f"\n{r['task']}: {len(r['failures'])} failing check(s)")
                for failure in r["failures"]:
                    print("  - " + failure.replace("\n", "\n    "))
    return table


def _is_done(status: str) -> bool:
    """Done: every part of the status is done or answered (e.g. "done + answered", "answered")."""
    return all(part in ("done", "answered") for part in status.split(" + "))


def _smoke_parameters(path: Path) -> dict:
    """{"PROFILE": "smoke"} when the notebook has a papermill ``parameters`` cell, else {}."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    tagged = any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.get("cells", []))
    return {"PROFILE": "smoke"} if tagged else {}
