"""Interrupted and repeated `course grade` runs: states kept atomically, resumed, nothing half-written.

The end-to-end test sends a real SIGINT to a real ``python -m diffusion_lib course grade`` (bubblewrap)
while it grades the toy course of test_course_tools.py, then runs it again: the finished submissions
are kept, the others graded, and the gradebook written a second time without SQLAlchemy warnings.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

from test_course_tools import _solve_notebook, _submission, build_course

pytest.importorskip("nbgrader")
ROOT = Path(__file__).resolve().parents[1]


def _sub(student="s1", **kw):
    from diffusion_lib.course import annotations as ann
    from diffusion_lib.course.gradebook import Submission

    line = ann.LineScore("toy.py::r", 0, "x = 1", "REF-SECRET", "x = 1", "mine", True, True)
    return Submission(student, f"{student}.tar.gz", task_scores={"1": 1.0, "2b": 0.25},
                      task_feedback={"1": ["ok"]}, cell_scores={("part1", "test_square"): 1.0, ("part1", "x"): None},
                      annotation_lines=[line], **kw)


def test_state_round_trip_and_keys(tmp_path):
    from diffusion_lib.course.resume import StateStore

    store = StateStore(tmp_path, "f" * 64, reference={"toy.py::r": [{"code": "x = 1", "annotation": "REF-SECRET"}]})
    sub = _sub(flagged="ctypes")
    store.save(sub, "a" * 64)
    assert "REF-SECRET" not in (tmp_path / "state/s1.json").read_text()  # no reference annotation in a state file
    assert store.load("s1", "a" * 64) == sub
    assert StateStore(tmp_path, "f" * 64, reference={}).load("s1", "a" * 64) is None  # the reference changed
    assert store.load("s1", "b" * 64) is None  # a changed archive re-grades
    assert StateStore(tmp_path, "e" * 64).load("s1", "a" * 64) is None  # a changed course re-grades
    assert store.load("s1", "") is None and store.load("s2", "a" * 64) is None
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["s1.json"]  # no temporary file left
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"
    assert StateStore(tmp_path, "f" * 64, restart=True).load("s1", "a" * 64) is None


@pytest.mark.parametrize("damage", ["truncate", "link", "other_student", "nan_version", "huge"])
def test_a_damaged_state_is_ignored(tmp_path, damage):
    from diffusion_lib.course import resume

    store = resume.StateStore(tmp_path, "f" * 64, reference={"toy.py::r": [{"code": "x = 1", "annotation": "REF-SECRET"}]})
    store.save(_sub(), "a" * 64)
    path = tmp_path / "state/s1.json"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:50])
    elif damage == "link":
        target = tmp_path / "elsewhere.json"
        path.rename(target)
        path.symlink_to(target)
    elif damage == "other_student":
        state = json.loads(path.read_text())
        state["submission"]["student"] = "s2"
        path.write_text(json.dumps(state))
    elif damage == "nan_version":
        path.write_text(path.read_text().replace('"version": 1', '"version": NaN'))
    else:
        path.write_bytes(b" " * (resume.MAX_STATE_BYTES + 10))
    assert store.load("s1", "a" * 64) is None


def test_state_folder_as_a_link_is_refused(tmp_path):
    from diffusion_lib.course.resume import StateStore

    (tmp_path / "real").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out/state").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="is a link"):
        StateStore(tmp_path / "out", "f" * 64)


def test_fingerprint_follows_the_course_and_options(tmp_path):
    from diffusion_lib.course.resume import course_fingerprint

    tree = tmp_path / "hidden"
    (tree / "tests").mkdir(parents=True)
    (tree / "tests/test_a.py").write_text("def test_a(): pass\n")
    first = course_fingerprint([tree], {"timeout_s": 10})
    assert course_fingerprint([tree], {"timeout_s": 10}) == first
    assert course_fingerprint([tree], {"timeout_s": 11}) != first
    (tree / "tests/__pycache__").mkdir()  # bytecode names the folder it was compiled in: not part of the course
    (tree / "tests/__pycache__/test_a.cpython-311.pyc").write_bytes(b"compiled in /tmp/course-grade-x")
    assert course_fingerprint([tree], {"timeout_s": 10}) == first
    (tree / "tests/test_a.py").write_text("def test_a(): assert 0\n")
    assert course_fingerprint([tree], {"timeout_s": 10}) != first


def test_the_gradebook_written_twice_warns_nothing(tmp_path):
    from sqlalchemy.exc import SAWarning

    from diffusion_lib.course.gradebook import LIBRARY_NOTEBOOK, write_gradebook

    layout = {LIBRARY_NOTEBOOK: [("task_1", 1.0, "code", True)],
              "part1": [("test_square", 1.0, "code", True), ("analysis", 0.5, "markdown", False)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SAWarning)
        for _ in range(2):
            write_gradebook(tmp_path / "gradebook.db", "coursework", layout, [_sub("a"), _sub("b")])


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from diffusion_lib.course.release import release

    base = tmp_path_factory.mktemp("resume")
    repo = build_course(base / "repo")
    course = {"repo": repo, "release": release(repo, base / "release", verbose=False)}
    for name in ("a1", "a2"):
        _submission(course, base, name, lambda work: None)

    def solved(work):
        shutil.copyfile(repo / "diffusion_lib/toy.py", work / "diffusion_lib/toy.py")
        _solve_notebook(work / "homework/part1.ipynb")
    _submission(course, base, "b_solved", solved)
    return {"repo": repo, "subs": base / "subs", "base": base}


def _grade_cli(toy, out, tmp, *extra):
    # SAWarning raised as an error in the grader (-W cannot name it: sqlalchemy is not imported yet)
    code = ("import sys, warnings\nimport sqlalchemy.exc\nwarnings.simplefilter('error', sqlalchemy.exc.SAWarning)\n"
            "from diffusion_lib.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    command = [sys.executable, "-c", code, "course", "grade", str(toy["subs"]), "--output", str(out), "--repo",
               str(toy["repo"]), "--sandbox", "bwrap", "--timeout", "30", "--notebook-timeout", "60", *extra]
    return subprocess.Popen(command, cwd=ROOT, env=dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _bwrap_or_skip():
    from diffusion_lib.course.sandbox import bwrap_available

    ok, why = bwrap_available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"bubblewrap cannot run in CI: {why}")
        pytest.skip(f"bubblewrap cannot run here: {why}")


@pytest.fixture()
def private_tmp():
    """A TMPDIR of the grader's own that an unprivileged sandbox uid can pass through (pytest's is 0700)."""
    from diffusion_lib.course.sandbox import sandbox_tempdir

    folder = Path(tempfile.mkdtemp(prefix="course-test-tmp-", dir=sandbox_tempdir()))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_sigint_then_resume_then_restart(toy, tmp_path, private_tmp):
    _bwrap_or_skip()
    out, tmp = tmp_path / "out", private_tmp
    process = _grade_cli(toy, out, tmp)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list((out / "state").glob("*.json")) and process.poll() is None:
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    # Python's own report of a handler exception it dropped (the race the grader survives) is not the grader's
    ours = re.sub(r"Exception ignored in: .*?Stopped: stopped by signal \d+\n", "", stderr, flags=re.S)
    assert "next run resumes" in stderr and "Traceback" not in ours, stderr[-2000:]
    assert list(tmp.iterdir()) == []  # the temporary folder (hidden tests) is gone
    assert not (out / "grades.csv").exists() and not (out / "gradebook.db").exists()
    assert [p.name for p in (out / "state").iterdir() if p.name.startswith(".")] == []
    kept = sorted(p.stem for p in (out / "state").glob("*.json"))
    assert 1 <= len(kept) < 3
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    assert str(out) not in ps and "sandbox_runner" not in ps

    process = _grade_cli(toy, out, tmp, "--jobs", "2")  # the later runs grade two at a time
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    assert "SAWarning" not in stderr
    resumed = sorted(line.split(":")[0] for line in stdout.splitlines() if "kept from an earlier run" in line)
    assert resumed == kept
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert sorted(rows) == ["a1", "a2", "b_solved"]
    assert rows["b_solved"]["auto_total"] == rows["b_solved"]["auto_max"] == "3.50"
    assert {rows[s]["auto_total"] for s in ("a1", "a2")} == {"0.00"}
    first_csv = (out / "grades.csv").read_text()

    # a changed archive is graded again, the others kept; --restart grades everything again
    shutil.copyfile(toy["subs"] / "b_solved.tar.gz", toy["subs"] / "a1.tar.gz")
    try:
        process = _grade_cli(toy, out, tmp, "--jobs", "2")
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0 and "SAWarning" not in stderr, stderr[-2000:]
        assert sorted(l.split(":")[0] for l in stdout.splitlines() if "kept from" in l) == ["a2", "b_solved"]
        assert {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}["a1"]["auto_total"] == "3.50"
    finally:
        shutil.copyfile(toy["subs"] / "a2.tar.gz", toy["subs"] / "a1.tar.gz")
    process = _grade_cli(toy, out, tmp, "--restart", "--jobs", "2")
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0 and "SAWarning" not in stderr, stderr[-2000:]
    assert "kept from" not in stdout
    assert (out / "grades.csv").read_text() == first_csv
    assert list(tmp.iterdir()) == []


class _SwallowsASignal:
    """Sends this process SIGINT from a finalizer: the handler's exception is printed and dropped there."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100_000):  # the handler runs at one of these bytecodes, inside __del__
            pass


def test_a_signal_whose_exception_python_dropped_still_stops_grading(toy, tmp_path, monkeypatch):
    """The race of a real SIGINT landing where Python ignores exceptions, made certain: the first submission's
    grading loses the exception, and the run stops at that submission's end, keeping nothing of it."""
    from diffusion_lib.course import grade as grading

    graded = []

    def grade_one(self, sub, archive):
        graded.append(sub.student)
        sub.status = "graded"
        if len(graded) == 1:
            _SwallowsASignal()  # collected at once (no reference kept): its __del__ runs here
        return sub

    monkeypatch.setattr(grading._Run, "grade_one", grade_one)
    dropped = []  # what Python reports as "Exception ignored in ..."
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_type))
    out = tmp_path / "out"
    with pytest.raises(grading.Stopped) as stopped:
        grading.grade(toy["subs"], out, toy["repo"], timeout_s=30, notebook_timeout_s=60, jobs=1, verbose=False,
                      unsafe=True)  # no sandbox runs: grade_one is replaced
    assert dropped == [grading.Stopped]  # Python did drop the handler's exception
    assert stopped.value.signum == signal.SIGINT
    assert graded == ["a1"]  # stopped at the first submission's end, not after grading the others
    assert list((out / "state").glob("*.json")) == []  # the interrupted submission's result is not kept
    assert not (out / "grades.csv").exists() and not (out / "gradebook.db").exists()
