"""The real coursework, end to end: release the repository, grade three hand-ins in one grade run.

(a) the untouched release scores 0 on every autograded task; (b) the release refilled with the instructor's
solutions (taken from this repository) and annotated scores full marks; (c) one known wrong answer per task
(guidance written as (1 + w) eps_c - w eps_u with our w, a ConditionalUNet that ignores its labels, a schedule
whose betas reach 1) loses exactly those tasks, with feedback naming the failed check; (d) nothing instructor-only
survives in the release; (e) Task 1 answered with the library's cosine schedule verbatim earns nothing (the
horizon check is Task 1's gate); (f) a submission that forges pytest's outcome in-process (it patches pytest's
test call so every test "passes"; its static-scan flag is cleared for this run) still fails the checks the host
decides on data.
Instructor-only (tasks.yaml); marker lines are written through placeholders here.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("nbgrader", reason="nbgrader (requirements.txt) runs the notebooks' generate step")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
H = "### "
SOLUTION_MARKER = re.compile(rf"^\s*{H}(BEGIN|END) SOLUTION\b.*\n", re.MULTILINE)
AUTOGRADED = ("task_1", "task_2b", "task_3.2a", "task_3.2b")
FULL = {"task_1": "1.00", "task_2b": "0.50", "task_3.2a": "0.50", "task_3.2b": "0.75"}
WRONG = {
    "diffusion_lib/guidance.py": ("return out_uncond + guidance_scale * (out_cond - out_uncond)",
                                  "return (1 + guidance_scale) * out_cond - guidance_scale * out_uncond"),
    "diffusion_lib/models/unet.py": ("return self.time_embedding(t) + self.class_embedding(y)",
                                     "return self.time_embedding(t)  # labels ignored"),
    "diffusion_lib/homework_schedules.py": ("return betas_from_alphas_cumprod(",
                                            "return np.linspace(1e-4, 1.0, num_train_timesteps)  # reaches 1\n    return betas_from_alphas_cumprod("),
}


COSINE = ("diffusion_lib/homework_schedules.py", "    return betas_from_alphas_cumprod(",
          "    from .schedules import cosine\n    return cosine(num_train_timesteps)\n    return betas_from_alphas_cumprod(")
# module-level code that makes every test of the session pass without running it (pytest's own call patched)
FORGE = ("\n\ndef _forge():\n    import sys\n    python = sys.modules.get('_pytest.python')\n"
         "    if python is not None:\n        python.Function.runtest = lambda self: None\n\n\n_forge()\n")


def _solved_text(rel: str) -> str:
    """The instructor's file with its solution marker lines removed (the solutions stay)."""
    return SOLUTION_MARKER.sub("", (REPO / rel).read_text(encoding="utf-8"))


def _fill_annotations(path: Path) -> int:
    """Write a student's note after every empty annotation slot; returns how many were filled."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    filled = 0
    for i, line in enumerate(lines):
        if line.rstrip().endswith("# TODO(2b):"):
            filled += 1
            lines[i] = line.rstrip() + f" my explanation of line {filled}\n"
    path.write_text("".join(lines), encoding="utf-8")
    return filled


@pytest.fixture(scope="session")
def course(tmp_path_factory):
    from diffusion_lib.course import annotations as ann
    from diffusion_lib.course import markers
    from diffusion_lib.course.handin import handin
    from diffusion_lib.course.release import release
    from diffusion_lib.course.tasks import load_course

    base = tmp_path_factory.mktemp("coursework")
    out = release(REPO, base / "release", verbose=False)
    course = load_course(REPO)
    solution_files = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "diffusion_lib").rglob("*.py")
                            if any(r.kind == "solution" for r in markers.find_regions(p.read_text(), str(p))))

    def solved(work: Path) -> None:
        for rel in solution_files:  # annotations stay the student's: slots first, filled below
            text = _solved_text(rel)
            if rel in course.annotation_files:
                text = ann.strip_annotations(text, rel)
            (work / rel).write_text(text, encoding="utf-8")
        for rel in course.annotation_files:
            assert _fill_annotations(work / rel) > 0

    def wrong(work: Path) -> None:
        solved(work)
        for rel, (old, new) in WRONG.items():
            text = (work / rel).read_text(encoding="utf-8")
            assert text.count(old) == 1, (rel, old)
            (work / rel).write_text(text.replace(old, new), encoding="utf-8")

    def cosine(work: Path) -> None:
        solved(work)
        rel, old, new = COSINE
        (work / rel).write_text((work / rel).read_text(encoding="utf-8").replace(old, new), encoding="utf-8")

    def forged(work: Path) -> None:  # cosine for Task 1, the Ho & Salimans w misread in 3.2b, pytest forged
        cosine(work)
        rel, (old, new) = "diffusion_lib/guidance.py", WRONG["diffusion_lib/guidance.py"]
        (work / rel).write_text((work / rel).read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
        for rel in ("diffusion_lib/homework_schedules.py", "diffusion_lib/guidance.py"):
            (work / rel).write_text((work / rel).read_text(encoding="utf-8") + FORGE, encoding="utf-8")

    subs = base / "subs"
    for name, edit in (("untouched", None), ("solved", solved), ("wrong", wrong), ("cosine", cosine),
                       ("forged", forged)):
        work = base / f"work-{name}"
        shutil.copytree(out, work)
        if edit:
            edit(work)
        handin(work, subs / f"{name}.tar.gz", allow_empty=edit is None, verbose=False)
    return {"release": out, "subs": subs, "base": base, "solution_files": solution_files, "course": course}


@pytest.fixture(scope="session")
def graded(course):
    from diffusion_lib.course.grade import grade

    out = course["base"] / "grading"
    start = time.perf_counter()
    grade(course["subs"], out, REPO, timeout_s=300, notebook_timeout_s=300, jobs=2, verbose=True,
          clear_flags={"forged"})
    seconds = time.perf_counter() - start
    print(f"graded {len(list(course['subs'].iterdir()))} submissions in {seconds:.0f} s")
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    return {"rows": rows, "out": out, "seconds": seconds}


def test_release_is_clean(course):
    from diffusion_lib.course import annotations as ann
    from diffusion_lib.course.release import find_leaks

    out = course["release"]
    reference = ann.reference_annotations(REPO, sorted(course["course"].annotation_files))
    assert sum(len(lines) for lines in reference.values()) >= 20
    assert find_leaks(out, reference) == []
    assert not (out / "coursework/reference_annotations.json").exists()
    assert not (out / "tests/test_coursework.py").exists()
    texts = {p.relative_to(out).as_posix(): p.read_text(encoding="utf-8", errors="replace")
             for p in out.rglob("*") if p.is_file() and p.suffix in (".py", ".ipynb", ".md", ".yaml", ".yml")}
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        # not even mid-line in code or notebooks (docs may name the markers inline; find_leaks checks lines)
        assert not [rel for rel, text in texts.items() if H + marker in text and rel.endswith((".py", ".ipynb"))], marker
    for hidden in ("test_each_sample_sees_its_own_label", "_ReferenceConditionalUNet", "test_valid_for_every_length"):
        assert not [rel for rel, text in texts.items() if hidden in text], hidden
    for rel in course["solution_files"]:
        solution = _solved_text(rel)
        released = texts[rel]
        assert "raise NotImplementedError('Homework " in released
        assert released != solution
    answers = [c for nb in ("part1_forward_process", "part2_reverse_process", "part3_guidance")
               for c in json.loads(texts[f"homework/{nb}.ipynb"])["cells"]
               if c["metadata"].get("nbgrader", {}).get("solution")]
    assert answers and all("YOUR ANSWER HERE" in "".join(c["source"]) for c in answers)
    assert "1 - s^2" not in texts["homework/part1_forward_process.ipynb"]


def test_release_stops_at_the_stub_messages(course):
    code = ("import torch\n"
            "from diffusion_lib.models import ConditionalUNet\n"
            "from diffusion_lib.guidance import classifier_free_guidance\n"
            "from diffusion_lib.diffusion import drop_labels\n"
            "import diffusion_lib.homework_schedules as h\n"
            "for call in (lambda: ConditionalUNet(10, in_channels=1, base_channels=8, channel_mults=(1,), attention_levels=()),\n"
            "             lambda: classifier_free_guidance(torch.zeros(1), torch.ones(1), 3.0),\n"
            "             lambda: h.homework_schedule(10)):\n"
            "    try:\n        call()\n    except NotImplementedError as e:\n        print(e)\n"
            "print(drop_labels(None, None, 0.5, None))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=course["release"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["Homework 3.2a: ConditionalUNet",
                                       "Homework 3.2b: labels, p_uncond and classifier-free guidance",
                                       "Homework 1: a schedule that keeps structure", "None"]


def test_untouched_release_scores_zero(graded):
    row = graded["rows"]["untouched"]
    assert row["status"] == "graded"
    assert {k: row[k] for k in AUTOGRADED} == dict.fromkeys(AUTOGRADED, "0.00")
    feedback = (graded["out"] / "feedback/untouched.md").read_text()
    assert "NotImplementedError" in feedback and "annotations: 0/" in feedback


def test_solutions_score_full_marks(graded):
    row = graded["rows"]["solved"]
    assert {k: row[k] for k in AUTOGRADED} == FULL, (graded["out"] / "feedback/solved.md").read_text()
    assert row["auto_total"] == row["auto_max"] == "2.75"
    feedback = (graded["out"] / "feedback/solved.md").read_text()
    annotated = re.search(r"annotations: (\d+)/(\d+) region lines", feedback)
    assert annotated and annotated.group(1) == annotated.group(2)
    assert "| p1_analysis |  | 0.50 | by hand |" in feedback  # manual cells listed for hand grading
    assert "outside its folder" not in row["note"]
    assert "check (decided by the grader) `samples` (0.2 of 0.2 points)" in feedback


def test_wrong_answers_lose_exactly_their_checks(graded):
    row = graded["rows"]["wrong"]
    # 3.2a ignores its labels: it keeps only the config and rebuild checks; 3.2b's wrong w keeps the dropout,
    # samples and unconditional checks (w = 0 and w = 3 still sample as they should); the schedule that
    # reaches 1 fails every check of Task 1
    assert {k: row[k] for k in AUTOGRADED} == FULL | {"task_1": "0.00", "task_3.2a": "0.15", "task_3.2b": "0.40"}
    feedback = (graded["out"] / "feedback/wrong.md").read_text()
    for check in ("test_part1.py::test_betas_strictly_inside_0_1",
                  "test_part3a.py::test_labels_change_the_output",
                  "test_part3b.py::test_guidance_formula_follows_diffusers"):
        assert f"failed check `coursework/tests/{check}`" in feedback, check
    # the label-ignoring ConditionalUNet does not cost 3.2b: its measurement uses the reference network
    assert "test_part3b.py::test_guided_samples_show_their_class" not in feedback


def test_cosine_verbatim_earns_nothing_on_the_horizon(graded):
    row = graded["rows"]["cosine"]
    assert {k: row[k] for k in AUTOGRADED} == FULL | {"task_1": "0.00"}
    feedback = (graded["out"] / "feedback/cosine.md").read_text()
    assert "`horizon` (0 of 0.7 points)" in feedback and "got t = 914" in feedback, feedback
    assert "check `valid` (0.2 of 0.2 points)" in feedback   # reported as passed, withheld by the gate
    assert "no points for this task: its check `horizon` must pass before the others count" in feedback


def test_forged_pytest_passes_do_not_earn_the_host_checks(graded):
    row = graded["rows"]["forged"]
    assert row["flagged"].startswith("cleared by the instructor"), row["flagged"]
    # every test "passed"; the horizon (0.7), guidance (0.25) and samples (0.2) checks are decided on data
    # (the forged measurement never sampled, so no samples reached the host)
    assert {k: row[k] for k in ("task_1", "task_3.2b")} == {"task_1": "0.00", "task_3.2b": "0.30"}
    feedback = (graded["out"] / "feedback/forged.md").read_text()
    assert "grader's check: no samples came back" in feedback
    assert "grader's check: expected the structure horizon" in feedback
    assert "grader's check: classifier_free_guidance at w = 0.0: expected u + w (c - u)" in feedback


def test_gradebook_holds_the_scores(graded):
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{graded['out'] / 'gradebook.db'}") as gb:
        assert gb.find_submission("coursework", "solved").score == pytest.approx(2.75)
        assert gb.find_submission("coursework", "untouched").score == 0
        assert gb.find_grade("task_1", "library", "coursework", "wrong").score == 0
        assert gb.find_grade("task_3.2b", "library", "coursework", "wrong").score == pytest.approx(0.4)
        assert gb.find_grade("p3d_compare", "part3_guidance", "coursework", "solved").max_score == 0.5
