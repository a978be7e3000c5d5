"""Coursework tooling on a tiny synthetic course: release -> check -> handin -> grade.

Marker lines are written through placeholders (@BS@ ...), so this file holds no marker line and
survives a release of the real repository unchanged.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

import re
import pytest

nbformat = pytest.importorskip("nbformat")

H = "### "
PLACEHOLDERS = {"@BS@": H + "BEGIN SOLUTION", "@ES@": H + "END SOLUTION",
                "@BH@": H + "BEGIN HIDDEN TESTS", "@EH@": H + "END HIDDEN TESTS"}
TIMEOUT = 10.0          # per task's tests (the looping submission costs this)
NB_TIMEOUT = 60.0      # per notebook (a kernel start takes seconds on a loaded machine)


def _text(template: str) -> str:
    text = textwrap.dedent(template).lstrip("\n")
    for key, value in PLACEHOLDERS.items():
        text = text.replace(key, value)
    return text


TOY = '''
"""A toy library."""


def schedule(n):
    """Homework 1: betas in (0, 1)."""
    @BS@ [1]
    return [0.5 * (i + 1) / n for i in range(n)]
    @ES@


def add(a, b):
    @BS@ [Homework 3.2a: adder]
    return a + b
    @ES@


def running_sum(xs):
    total = 0
    # Start
    for x in xs:  # visit every element once, in order
        total = total + x  # accumulate the running "#" sum
    # End
    return total
'''

TEST_PART1 = '''
from diffusion_lib.toy import schedule


def test_schedule_length():
    assert len(schedule(5)) == 5

@BH@
def test_schedule_betas_below_one():
    assert all(0 < b < 1 for b in schedule(10))
@EH@
'''

TEST_PART3 = '''
from diffusion_lib.toy import add


def test_add_public():
    assert add(1, 1) == 2

@BH@
def test_add_hidden_order():
    assert add(2, 3) == 5 and add(0, -4) == -4
@EH@
'''

TASKS = '''
title: "Toy course"
tasks:
  - id: "1"
    title: "Homework 1: a schedule"
    points: 1.5
    manual_points: 0.5
    tests: ["coursework/tests/test_part1.py"]
    notebook: "homework/part1.ipynb"
    answer_cells: ["analysis"]
  - id: "2b"
    title: "Homework 2b: annotate every region line"
    points: 0.5
    annotation: true
    files: ["diffusion_lib/toy.py"]
  - id: "3.2a"
    title: "Homework 3.2a: adder"
    points: 1.0
    tests: ["coursework/tests/test_part3.py"]
instructor_only: ["instructor/", "docs/grading.md"]
'''


def _notebook() -> "nbformat.NotebookNode":
    v4 = nbformat.v4

    def meta(**kw):
        return {"nbgrader": {"schema_version": 3, "solution": False, "grade": False, "locked": False, **kw}}
    cells = [
        v4.new_markdown_cell("# Part 1", metadata=meta(grade_id="intro", locked=True)),
        v4.new_code_cell(_text("def square(x):\n    @BS@\n    return x * x\n    @ES@\n"),
                         metadata=meta(grade_id="square", solution=True)),
        v4.new_code_cell(_text("assert square(3) == 9\n@BH@\nassert square(-2) == 4\n@EH@\n"),
                         metadata=meta(grade_id="test_square", grade=True, locked=True, points=1)),
        v4.new_markdown_cell(_text("@BS@\nThe schedule keeps structure because...\n@ES@\n"),
                             metadata=meta(grade_id="analysis", solution=True, grade=True, points=0.5)),
    ]
    nb = v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                            GIT_COMMITTER_EMAIL="t@t"))


def build_course(root: Path) -> Path:
    files = {"diffusion_lib/__init__.py": "", "diffusion_lib/toy.py": _text(TOY),
             "coursework/tasks.yaml": _text(TASKS), "coursework/tests/test_part1.py": _text(TEST_PART1),
             "coursework/tests/test_part3.py": _text(TEST_PART3), "Dockerfile": "FROM python:3.11\n",
             "README.md": "# instructor readme\n", "instructor/notes.md": "secret notes\n",
             "docs/grading.md": "<!-- instructor-only: never released -->\n# Hidden-test thresholds\n",
             ".gitignore": "runs/\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "homework").mkdir()
    nbformat.write(_notebook(), root / "homework/part1.ipynb")
    (root / "runs").mkdir()
    (root / "runs/big.ckpt").write_bytes(b"0" * 10)
    if shutil.which("git"):
        _git(root, "init", "-q")
        _git(root, "add", "-A")
        _git(root, "commit", "-qm", "course")
    return root


def _copy_release(release: Path, target: Path) -> Path:
    shutil.copytree(release, target)
    return target


def _solve_notebook(path: Path, body: str = "    return x * x") -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "square":
            cell.source = f"def square(x):\n{body}\n"
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from diffusion_lib.course.release import release

    pytest.importorskip("nbgrader", reason="nbgrader (requirements.txt) runs the notebooks' generate step")
    base = tmp_path_factory.mktemp("course")
    repo = build_course(base / "repo")
    out = release(repo, base / "release", verbose=False)
    return {"repo": repo, "release": out, "base": base}


def test_markers_errors_name_file_and_line():
    from diffusion_lib.course import markers

    with pytest.raises(ValueError, match=r"f\.py:3: nested"):
        markers.find_regions(_text("x = 1\n@BS@\n@BS@\n@ES@\n"), "f.py")
    with pytest.raises(ValueError, match=r"f\.py:2: .*without a matching begin"):
        markers.find_regions(_text("x = 1\n@ES@\n"), "f.py")
    with pytest.raises(ValueError, match=r"f\.py:1: .*never closed"):
        markers.find_regions(_text("@BH@\nx = 1\n"), "f.py")
    stub = markers.strip_regions(_text("def f():\n    @BS@ [T]\n    return 1\n    @ES@\n"), "f.py")
    assert stub == "def f():\n    raise NotImplementedError('T')\n"


def test_annotations_split_with_tokenize_and_score():
    from diffusion_lib.course import annotations as ann

    text = _text(TOY)
    (region,) = ann.find_regions(text, "toy.py")
    assert region.key == "toy.py::running_sum"
    assert [l.annotation for l in region.lines] == ["visit every element once, in order",
                                                    'accumulate the running "#" sum']
    stripped = ann.strip_annotations('s = "a # b"  # keep the hash in the string\n# Start\ny = s  # note\n# End\n')
    assert stripped.splitlines()[2] == "y = s  # TODO(2b): "
    assert ann.find_regions(stripped)[0].lines[0].annotation == ""


def test_release_is_clean_and_runs(course):
    from diffusion_lib.course.release import find_leaks

    out, repo = course["release"], course["repo"]
    assert not (out / "instructor").exists() and not (out / "runs").exists()
    assert not (out / "docs/grading.md").exists()  # an instructor's page, listed in instructor_only
    assert not (out / "coursework/reference_annotations.json").exists()
    assert (repo / "coursework/reference_annotations.json").is_file()
    assert find_leaks(out, json.loads((repo / "coursework/reference_annotations.json").read_text())) == []
    toy = (out / "diffusion_lib/toy.py").read_text()
    assert "raise NotImplementedError('Homework 1: a schedule')" in toy
    assert "raise NotImplementedError('Homework 3.2a: adder')" in toy
    assert "visit every element" not in toy and toy.count("# TODO(2b): ") == 2
    assert "test_schedule_betas_below_one" not in (out / "coursework/tests/test_part1.py").read_text()
    nb_text = (out / "homework/part1.ipynb").read_text()
    assert "square(-2)" not in nb_text and "return x * x" not in nb_text and "schedule keeps" not in nb_text
    assert "Toy course" in (out / "README.md").read_text()
    run = subprocess.run([sys.executable, "-c", "from diffusion_lib.toy import add; add(1, 2)"], cwd=out,
                         capture_output=True, text=True)
    assert "NotImplementedError: Homework 3.2a: adder" in run.stderr
    with pytest.raises(ValueError, match="not empty"):
        from diffusion_lib.course.release import release
        release(repo, out, verbose=False)


def test_the_leak_check_refuses_an_instructor_page(course, tmp_path):
    """An instructor's page that reached a release (not listed in instructor_only): a leak, named."""
    from diffusion_lib.course.release import find_leaks, release

    out = _copy_release(course["release"], tmp_path / "release")
    (out / "docs").mkdir(exist_ok=True)
    shutil.copyfile(course["repo"] / "docs/grading.md", out / "docs/notes.md")
    assert find_leaks(out) == ["docs/notes.md: an instructor's page (<!-- instructor-only ...)"]
    # The same page unlisted in the instructor's repository makes the release itself fail.
    repo = tmp_path / "repo"
    shutil.copytree(course["repo"], repo)
    tasks = repo / "coursework/tasks.yaml"
    tasks.write_text(tasks.read_text().replace(', "docs/grading.md"]', "]"))
    with pytest.raises(ValueError, match="instructor's page"):
        release(repo, tmp_path / "bad-release", verbose=False)


def test_check_reports_not_started_then_done(course, tmp_path):
    from diffusion_lib.course.check import check

    table = check(course["release"], verbose=False, timeout_s=30).set_index("task")
    assert table.loc["1", "status"] == "not started + not answered" and table.loc["3.2a", "status"] == "not started"
    assert table.loc["1", "answers"] == "not answered"
    assert table.loc["2b", "annotations"] == "0/2"
    work = _copy_release(course["release"], tmp_path / "work")
    shutil.copyfile(course["repo"] / "diffusion_lib/toy.py", work / "diffusion_lib/toy.py")
    table = check(work, verbose=False, timeout_s=30).set_index("task")
    assert table.loc["3.2a", "status"] == "done" and table.loc["2b", "annotations"] == "2/2"
    assert table.loc["1", "answers"] == "not answered"  # the written part is still the placeholder
    nb = nbformat.read(work / "homework/part1.ipynb", as_version=4)
    answer = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "analysis")
    assert answer.source.strip() == "YOUR ANSWER HERE"  # what nbgrader's release leaves
    answer.source = "It keeps structure because alpha_bar falls slowly at first."
    nbformat.write(nb, work / "homework/part1.ipynb")
    table = check(work, verbose=False, timeout_s=30).set_index("task")
    assert table.loc["1", "answers"] == "answered"


def test_check_lists_every_failure_in_full(course, tmp_path, capsys):
    """Every failing test of a task, each message whole (up to the bound), with expected and actual."""
    from diffusion_lib.course.check import MESSAGE_LIMIT, check

    work = _copy_release(course["release"], tmp_path / "work")
    shutil.copyfile(course["repo"] / "diffusion_lib/toy.py", work / "diffusion_lib/toy.py")
    long_detail = "x" * 600
    (work / "coursework/tests/test_part3.py").write_text(
        "from diffusion_lib.toy import add\n\n"
        "def test_first():\n    assert add(1, 1) == 3, f'add(1, 1): expected 3, got {add(1, 1)}'\n\n"
        f"def test_second():\n    assert add(2, 2) == 5, 'add(2, 2): expected 5, got 4; {long_detail}'\n"
        "\ndef test_huge():\n    raise AssertionError('y' * 9000)\n")
    table = check(work, timeout_s=30).set_index("task")
    failures = table.loc["3.2a", "failures"]
    assert len(failures) == 3 and table.loc["3.2a", "tests_failed"] == 3
    assert "expected 3, got 2" in failures[0] and long_detail in failures[1]
    assert len(failures[2]) <= MESSAGE_LIMIT and failures[2].count("y") > 3000
    printed = capsys.readouterr().out
    assert "3.2a: 3 failing check(s)" in printed and long_detail in printed and "expected 3, got 2" in printed


def test_check_without_pytest_says_why_and_what_to_do(course, tmp_path):
    """A Python without pytest: pytest's own words and the fix, instead of a bare "no test ran"."""
    from diffusion_lib.course import check as check_module

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    run = check_module.run_pytest(course["release"], ["coursework/tests/test_part3.py"], timeout_s=30,
                                  python=str(bare / "bin" / "python"))
    assert run.status == "error (no test ran)"
    hint = check_module._no_test_hint(run)
    assert "No module named pytest" in hint and "pip install -r requirements.txt" in hint


def test_handin_refuses_an_untouched_release(course, tmp_path):
    """An untouched release is no hand-in: exit status 2 and a message, no archive; --allow-empty packs it."""
    work = _copy_release(course["release"], tmp_path / "work")
    archive = tmp_path / "s9.tar.gz"
    command = [sys.executable, "-m", "diffusion_lib", "course", "handin", "--root", str(work), "--output", str(archive)]
    refused = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "nothing to hand in" in refused.stderr and "diffusion_lib/" in refused.stderr
    assert not archive.exists()
    allowed = subprocess.run(command + ["--allow-empty"], capture_output=True, text=True, cwd=work, timeout=120)
    assert allowed.returncode == 0 and archive.is_file(), allowed.stderr
    (work / "coursework/answers").mkdir(parents=True, exist_ok=True)
    (work / "coursework/answers/part2a.md").write_text("my answer\n")
    packed = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=120)
    assert packed.returncode == 0, packed.stderr
    assert re.search(r"coursework/answers/part2a\.md\s+0\.0 kB\s+new", packed.stdout), packed.stdout


def test_handin_refuses_checkpoint_and_oversized_file(course, tmp_path, capsys):
    from diffusion_lib.course.handin import handin

    work = _copy_release(course["release"], tmp_path / "work")
    (work / "diffusion_lib/model.ckpt").write_bytes(b"x" * 100)
    (work / "coursework/answers").mkdir(parents=True)
    (work / "coursework/answers/part2a.md").write_text("my answer\n")
    (work / "coursework/answers/huge.txt").write_bytes(b"y" * (2 * 1024 * 1024))
    result = handin(work, tmp_path / "s1.tar.gz", max_file_mb=1)
    assert set(result.files) == {"coursework/answers/part2a.md"}
    assert "checkpoint" in result.left_out["diffusion_lib/model.ckpt"]
    assert "size limit" in result.left_out["coursework/answers/huge.txt"]
    printed = capsys.readouterr().out
    assert "diffusion_lib/model.ckpt: checkpoint" in printed and "huge.txt: over the file size limit" in printed
    with tarfile.open(result.archive) as tf:
        names = tf.getnames()
        manifest = json.loads(tf.extractfile("MANIFEST.json").read())
    assert sorted(names) == ["MANIFEST.json", "coursework/answers/part2a.md"]
    assert set(manifest["files"]) == {"coursework/answers/part2a.md"}


def _submission(course, tmp_path: Path, name: str, edit) -> Path:
    from diffusion_lib.course.handin import handin

    work = _copy_release(course["release"], tmp_path / f"work-{name}")
    edit(work)
    return handin(work, tmp_path / "subs" / f"{name}.tar.gz", allow_empty=True, verbose=False).archive


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    """One grade run over six submissions: untouched, solved, wrong, looping, malicious, not an archive."""
    from diffusion_lib.course.grade import grade, sandbox_available

    tmp_path = tmp_path_factory.mktemp("grading")

    repo = course["repo"]
    (tmp_path / "subs").mkdir()
    sentinel_dir = Path(tempfile.mkdtemp(prefix="course-sentinel-"))
    os.chmod(sentinel_dir, 0o755)
    sentinel = sentinel_dir / "instructor_file.txt"
    sentinel.write_text("keep me")
    os.chmod(sentinel, 0o644)

    def solved(work):
        shutil.copyfile(repo / "diffusion_lib/toy.py", work / "diffusion_lib/toy.py")
        _solve_notebook(work / "homework/part1.ipynb")

    def wrong(work):
        solved(work)
        _replace(work / "diffusion_lib/toy.py", "return a + b", "return a + b if b > 0 else a - b")

    def looping(work):
        solved(work)
        _replace(work / "diffusion_lib/toy.py", "return [0.5", "while True:\n        pass\n    return [0.5")

    def malicious(work):
        solved(work)
        _replace(work / "diffusion_lib/toy.py", "return a + b",
                 f"import os\n    try:\n        os.remove({str(sentinel)!r})\n    except OSError:\n        pass\n"
                 f"    return a + b")

    _submission(course, tmp_path, "untouched", lambda work: None)
    _submission(course, tmp_path, "solved", solved)
    _submission(course, tmp_path, "wrong", wrong)
    _submission(course, tmp_path, "looping", looping)
    _submission(course, tmp_path, "malicious", malicious)
    (tmp_path / "subs" / "notarchive.txt").write_text("hello")

    out = tmp_path / "grading"
    grade(tmp_path / "subs", out, repo, timeout_s=TIMEOUT, notebook_timeout_s=NB_TIMEOUT, jobs=2, verbose=False)
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    yield {"rows": rows, "out": out, "subs": tmp_path / "subs", "sentinel": sentinel,
           "sandbox": sandbox_available(), "tmp": tmp_path}
    shutil.rmtree(sentinel_dir, ignore_errors=True)


FULL = {"task_1": "1.00", "task_2b": "0.50", "task_3.2a": "1.00", "part1:test_square": "1.00"}


def test_grade_scores_and_feedback(graded):
    rows, out, full = graded["rows"], graded["out"], FULL
    assert sorted(rows) == ["looping", "malicious", "notarchive", "solved", "untouched", "wrong"]
    assert {k: rows["solved"][k] for k in full} == full
    assert rows["solved"]["auto_total"] == rows["solved"]["auto_max"] == "3.50"
    assert {k: rows["untouched"][k] for k in full} == dict.fromkeys(full, "0.00")
    assert {k: rows["wrong"][k] for k in full} == full | {"task_3.2a": "0.00"}
    feedback = (out / "feedback/wrong.md").read_text()
    # a hidden check is counted but not named before the deadline (course grade --reveal names it)
    assert "1 hidden check(s) failed" in feedback and "test_add_hidden_order" not in feedback
    assert "| `for x in xs:` | visit every element once, in order | yes |" in feedback
    assert "reference annotation" not in feedback
    assert {k: rows["looping"][k] for k in full} == full | {"task_1": "0.00"}
    assert "time limit" in rows["looping"]["note"]
    assert "timed out" in (out / "feedback/looping.md").read_text()
    assert rows["notarchive"]["status"] == "rejected" and "not a .tar.gz/.zip archive" in rows["notarchive"]["note"]
    assert rows["notarchive"]["auto_total"] == "0.00"

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert gb.find_submission("coursework", "solved").score == pytest.approx(3.5)
        assert gb.find_submission("coursework", "untouched").score == 0
        assert gb.find_comment("grader_status", "library", "coursework", "notarchive").auto_comment.startswith(
            "rejected: not a .tar.gz/.zip archive")
        assert gb.find_grade("task_3.2a", "library", "coursework", "wrong").score == 0
        assert gb.find_grade("analysis", "part1", "coursework", "solved").max_score == 0.5


def test_grade_twice_gives_the_same_lines(graded, course):
    from diffusion_lib.course.grade import grade

    first = (graded["out"] / "grades.csv").read_text()
    keep = graded["tmp"] / "subs2"
    keep.mkdir()
    for name in ("wrong.tar.gz", "notarchive.txt"):  # the two cheapest submissions, graded again
        shutil.copyfile(graded["subs"] / name, keep / name)
    again_dir = graded["tmp"] / "again"
    grade(keep, again_dir, course["repo"], timeout_s=TIMEOUT, notebook_timeout_s=NB_TIMEOUT, verbose=False)
    again = (again_dir / "grades.csv").read_text().splitlines()
    assert again[0] == first.splitlines()[0]
    assert again[1:] == [line for line in first.splitlines()[1:] if line.startswith(("notarchive,", "wrong,"))]


def test_grade_sandbox_keeps_instructor_files(graded):
    sandboxed, why_not = graded["sandbox"]
    if not sandboxed:
        pytest.skip(f"sandbox not available here (grade as root with util-linux's unshare): {why_not}")
    assert graded["sentinel"].read_text() == "keep me"
    malicious = graded["rows"]["malicious"]
    assert {k: malicious[k] for k in FULL} == FULL  # its code works; its attempt is reported, not scored
    assert malicious["status"] == "graded"
    assert "tried to change 1 file(s) outside its folder" in malicious["note"]
    assert f"os.remove {graded['sentinel']}" in malicious["note"] and "blocked" in malicious["note"]
    assert "outside its folder" in (graded["out"] / "feedback/malicious.md").read_text()
    assert all("outside its folder" not in row["note"] for name, row in graded["rows"].items() if name != "malicious")

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{graded['out'] / 'gradebook.db'}") as gb:
        line = gb.find_comment("grader_status", "library", "coursework", "malicious").auto_comment
    assert line.startswith("graded: ") and "outside its folder" in line

def test_course_cli_help_is_light():
    # the course commands add no heavy import of their own (torch only if the package itself loads it)
    code = ("import argparse, sys\nimport diffusion_lib\nbefore = set(sys.modules)\n"
            "from diffusion_lib.course.cli import add_course_command\n"
            "p = argparse.ArgumentParser(); add_course_command(p.add_subparsers())\n"
            "try:\n    p.parse_args(['course', 'grade', '--help'])\nexcept SystemExit:\n    pass\n"
            "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
            "assert not new & {'torch', 'nbgrader', 'pandas', 'nbformat', 'yaml'}, new\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    assert "--notebook-timeout" in run.stdout
