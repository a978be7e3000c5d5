"""Hand grading in nbgrader's formgrader, proven in a real browser (headless Debian Chromium).

One session fixture grades two tiny submissions of the synthetic course of test_course_tools.py (an
honest one and a hostile one whose answer is HTML, script, a javascript: link and a remote image), then
starts JupyterLab with nbgrader's formgrader on the grading folder, as the instructor page says. The
test opens ``<server>/formgrader`` in its own tab (nbgrader#1870: no iframe), goes through Manual
Grading to one student's answer cell, types a score and a comment, and checks through nbgrader's
Gradebook API that both were saved; then ``course grade`` runs again and the score and the comment are
still there, grades.csv shows the new total and the student's feedback quotes the answer beside the
comment. The hostile answer renders as text (no script runs, nothing is fetched). Screenshots go to
/tmp/formgrader-shots/. Needs Chromium and playwright (.ci/system-deps.sh): when missing, the test fails
in CI (CI=true) and is skipped elsewhere.
"""

from __future__ import annotations

import csv
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

from test_course_tools import _copy_release, _solve_notebook, build_course  # noqa: E402 (same tests folder)
from test_jupyterlab_browser import (CHROMIUM_ARGS, UI_TIMEOUT_MS, _chromium, _free_port, _missing,  # noqa: E402
                                     _stop, _wait_until_up)

SHOTS = Path("/tmp/formgrader-shots")
ASSIGNMENT = "coursework"
HONEST = "The schedule keeps structure because alpha-bar falls slowly at first."
HOSTILE = ("<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>\n\n"
           "[click me](javascript:document.title='pwned') ![tracker](http://127.0.0.1:9/track.png)")
SCORE, COMMENT = "0.4", "Good point on alpha-bar; say why the end matters too."


def _with_answer(path: Path, text: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "analysis":
            cell.source = text
            cell.metadata["nbgrader"]["points"] = 100  # a student's metadata is never trusted
    nbformat.write(nb, path)


@pytest.fixture(scope="session")
def formgrader(tmp_path_factory):
    """Two graded submissions and a JupyterLab serving the grading folder: yields a dict of paths, the
    server's base url and token and a function that grades again."""
    from diffusion_lib.course.grade import grade
    from diffusion_lib.course.handin import handin
    from diffusion_lib.course.release import release

    chromium = _chromium()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("the playwright Python package")
    base = tmp_path_factory.mktemp("formgrader")
    repo = build_course(base / "repo")
    released = release(repo, base / "release", verbose=False)
    subs = base / "subs"
    for student, answer in (("alice", HONEST), ("mallory", HOSTILE)):
        work = _copy_release(released, base / f"work-{student}")
        shutil.copyfile(repo / "diffusion_lib/toy.py", work / "diffusion_lib/toy.py")
        _solve_notebook(work / "homework/part1.ipynb")
        _with_answer(work / "homework/part1.ipynb", answer)
        archive = handin(work, subs / f"{student}.tar.gz", allow_empty=True, verbose=False).archive
        os.utime(archive, (1_790_000_000, 1_790_000_000))  # the hand-in time formgrader shows
    out = base / "grading"

    def regrade():
        grade(subs, out, repo, timeout_s=10.0, notebook_timeout_s=60.0, jobs=2, verbose=False)

    regrade()
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"), IPYTHONDIR=str(base / "ipython"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log_path = base / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, url, log_path)
        SHOTS.mkdir(parents=True, exist_ok=True)
        yield {"out": out, "url": url, "token": token, "regrade": regrade, "chromium": chromium, "log": log_path}
    finally:
        _stop(proc)


def _gradebook(out: Path):
    from nbgrader.api import Gradebook
    return Gradebook(f"sqlite:///{out / 'gradebook.db'}")


def _saved(out: Path, student: str):
    with _gradebook(out) as gb:
        return (gb.find_grade("analysis", "part1", ASSIGNMENT, student).manual_score,
                gb.find_comment("analysis", "part1", ASSIGNMENT, student).manual_comment)


def _wait_saved(out: Path, student: str, timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while _saved(out, student) != (float(SCORE), COMMENT):
        if time.monotonic() > end:
            pytest.fail(f"formgrader did not save the hand grade: gradebook has {_saved(out, student)}")
        time.sleep(0.3)


def test_layout_is_nbgraders(formgrader):
    out = formgrader["out"]
    assert "c.CourseDirectory.db_url" in (out / "nbgrader_config.py").read_text()
    for student in ("alice", "mallory"):
        assert (out / "submitted" / student / ASSIGNMENT / "timestamp.txt").read_text().startswith("2026-09-21")
        laid = nbformat.read(out / "autograded" / student / ASSIGNMENT / "part1.ipynb", as_version=4)
        cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in laid.cells}
        assert cells["analysis"].metadata.nbgrader["points"] == 0.5  # tasks.yaml's, not the student's 100
        assert (out / "autograded" / student / ASSIGNMENT / "library.ipynb").is_file()
    assert (out / "source" / ASSIGNMENT / "part1.ipynb").is_file() and (out / "release" / ASSIGNMENT).is_dir()
    with _gradebook(out) as gb:
        assert gb.find_submission(ASSIGNMENT, "alice").timestamp.year == 2026
        assert gb.find_grade("analysis", "part1", ASSIGNMENT, "alice").needs_manual_grade
        gb.find_comment("analysis", "part1", ASSIGNMENT, "alice")  # a comment row for formgrader


def test_hand_grade_in_formgrader_survives_a_regrade(formgrader):
    from playwright.sync_api import expect, sync_playwright

    out, url, token = formgrader["out"], formgrader["url"], formgrader["token"]
    with _gradebook(out) as gb:
        alice = gb.find_submission_notebook("part1", ASSIGNMENT, "alice").id
        mallory = gb.find_submission_notebook("part1", ASSIGNMENT, "mallory").id
    requests = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=formgrader["chromium"], args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(f"{url}/formgrader?token={token}", timeout=UI_TIMEOUT_MS)  # its own tab, no iframe
            page.get_by_role("link", name="Manual Grading").click()
            expect(page.get_by_role("link", name=ASSIGNMENT)).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.screenshot(path=str(SHOTS / "1-manual-grading.png"))
            page.get_by_role("link", name=ASSIGNMENT).click()
            page.get_by_role("link", name="part1").click()
            link = page.locator(f"a[href$='/formgrader/submissions/{alice}']")
            expect(link.first).to_be_visible(timeout=UI_TIMEOUT_MS)
            page.screenshot(path=str(SHOTS / "2-submissions.png"))
            link.first.click()
            score = page.locator("input.score#analysis")
            expect(score).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.locator("body")).to_contain_text(HONEST)
            # formgrader loads the grades after the page: wait until they are rendered, then type
            expect(page.locator("input.extra-credit#analysis_extra_credit")).to_have_attribute(
                "placeholder", "0", timeout=UI_TIMEOUT_MS)
            page.wait_for_load_state("networkidle")
            score.fill(SCORE)
            score.press("Tab")
            comment = page.locator("textarea#analysis-comment")
            comment.fill(COMMENT)
            comment.press("Tab")
            _wait_saved(out, "alice")  # formgrader's PUTs reached gradebook.db
            page.reload()  # what the instructor sees when coming back
            expect(page.locator("input.score#analysis")).to_have_value(SCORE, timeout=UI_TIMEOUT_MS)
            expect(page.locator("textarea#analysis-comment")).to_have_value(COMMENT, timeout=UI_TIMEOUT_MS)
            page.screenshot(path=str(SHOTS / "3-hand-grade-entered.png"), full_page=True)

            page.goto(f"{url}/formgrader/submissions/{mallory}/", timeout=UI_TIMEOUT_MS)
            expect(page.locator("input.score#analysis")).to_be_visible(timeout=UI_TIMEOUT_MS)
            expect(page.locator("body")).to_contain_text("<script>document.title='pwned'</script>")
            page.wait_for_timeout(500)
            assert page.title() != "pwned" and page.evaluate("document.title") != "pwned"
            assert not any("track.png" in r for r in requests), "the hostile answer's image was fetched"
            assert page.locator("a[href^='javascript:']").count() == 0
            page.screenshot(path=str(SHOTS / "4-hostile-answer.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(SHOTS / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()

    with _gradebook(out) as gb:
        assert gb.find_grade("analysis", "part1", ASSIGNMENT, "alice").manual_score == pytest.approx(0.4)
        assert gb.find_comment("analysis", "part1", ASSIGNMENT, "alice").manual_comment == COMMENT
    formgrader["regrade"]()
    with _gradebook(out) as gb:
        assert gb.find_grade("analysis", "part1", ASSIGNMENT, "alice").manual_score == pytest.approx(0.4)
        assert gb.find_comment("analysis", "part1", ASSIGNMENT, "alice").manual_comment == COMMENT
        assert gb.find_submission(ASSIGNMENT, "alice").score == pytest.approx(3.9)
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    assert rows["alice"]["hand_total"] == "0.40" and rows["alice"]["to_grade"] == "0"
    assert rows["alice"]["total"] == "3.90" and rows["mallory"]["total"] == "3.50"
    assert rows["mallory"]["to_grade"] == "1"
    feedback = (out / "feedback" / "alice.md").read_text()
    assert HONEST in feedback and COMMENT in feedback and "graded by hand: 0.40 / 0.50" in feedback
