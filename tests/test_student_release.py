"""The student's path, followed literally: a release, its README's set-up line, the self-check, notebooks 01-04.

The release is written by `course release`, and its README's "Without Docker" command is run verbatim in
the fresh folder (a new venv with the release's requirements.txt and the release's own library, editable).
Everything below then runs with that venv's Python, as a student without Docker would: `course check`
must report real test results for every tested task (last round it ran no test: pytest was missing), and
notebooks 01-04 must run in the smoke profile in the untouched release (part 2 of the homework needs
notebook 04 before part 3, the ConditionalUNet, is written).

The release and its venv are made by conftest's `student_release` (tests/student_setup.py), started
with the session so that its pip install runs beside the CPU-bound tests.
"""

import json
import re
import subprocess

TESTED_TASKS = ("1", "3.2a", "3.2b")


def test_course_check_runs_the_tests_of_every_tested_task(student_release):
    """The README's check command, with the venv's python: every tested task reports test results."""
    result = subprocess.run([str(student_release["python"]), "-m", "diffusion_lib", "course", "check"],
                            cwd=student_release["folder"], capture_output=True, text=True, timeout=1200)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # an untouched release is not done
    assert "no test ran" not in out, out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in TESTED_TASKS}
    assert set(rows) == set(TESTED_TASKS), out
    for task, row in rows.items():
        assert "not started" in row, row  # every test ran and stopped at the task's stub
    assert "NotImplementedError: Homework 3.2a: ConditionalUNet" in out
    assert re.search(r"^\s*2a .* not answered\s*$", out, re.M), out  # hand-graded: not answered yet
    assert "0/8 tasks done" in out


def test_notebooks_01_to_04_run_in_the_untouched_release(student_release):
    out_dir = student_release["folder"] / "outputs" / "notebooks"
    result = subprocess.run(
        [str(student_release["python"]), "-m", "diffusion_lib", "notebooks", "run", "01", "02", "03", "04", "--profile",
         "smoke", "--output", str(out_dir)], cwd=student_release["folder"], capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    executed = sorted(out_dir.glob("0[1-4]_*.ipynb"))
    assert len(executed) == 4, executed
    walkthrough = json.loads(next(p for p in executed if p.name.startswith("04_")).read_text())
    text = json.dumps(walkthrough)
    assert "NotImplementedError" not in text
    assert "dpm_solver_sample" in text or "DPM-Solver++" in text
