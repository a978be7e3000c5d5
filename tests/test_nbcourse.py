"""nbgrader's course layout (diffusion_lib.course.nbcourse) and the quoted answers of the feedback.

Fast: no grading run. A student's notebook is hostile here: forged nbgrader metadata (points, extra
graded cells, an edited locked cell, duplicate ids), HTML outputs, attachments, raw HTML cells, and
answers made of HTML, script, javascript: links and remote images. Everything must come out laid by
the host and inert, both in the autograded notebook (rendered by nbconvert as formgrader does) and in
the Markdown feedback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffusion_lib.course import nbcourse
from diffusion_lib.course.gradebook import Submission, feedback, gradebook_layout
from diffusion_lib.course.tasks import Course, Task

H = "### "  # marker lines are built, so this file survives a release's leak check
HOSTILE = ("<script>alert(1)</script><img src=x onerror=alert(2)>\n"
           "[click](javascript:alert(3)) ![t](http://evil.example/t.png)\n"
           "````\n</pre><script>alert(4)</script>\n")


def _meta(**kw):
    return {"nbgrader": {"schema_version": 3, "grade": False, "solution": False, "locked": False, **kw}}


def _nb(cells):
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _md(source, **meta):
    return {"cell_type": "markdown", "metadata": _meta(**meta) if meta else {}, "source": source}


def _code(source, outputs=(), **meta):
    return {"cell_type": "code", "metadata": _meta(**meta) if meta else {}, "source": source,
            "outputs": list(outputs), "execution_count": None}


SOURCE = _nb([_md("# Part 1", grade_id="intro", locked=True),
              _code(f"assert square(3) == 9\n{H}BEGIN HIDDEN TESTS\nassert square(-2) == 4\n{H}END HIDDEN TESTS\n",
                    grade_id="test_square", grade=True, locked=True, points=1),
              _md(f"{H}BEGIN SOLUTION\nmodel answer\n{H}END SOLUTION\n", grade_id="analysis", grade=True,
                  solution=True, points=0.5)])
RELEASE = _nb([_md("# Part 1", grade_id="intro", locked=True),
               _code("assert square(3) == 9\n", grade_id="test_square", grade=True, locked=True, points=1),
               _md("YOUR ANSWER HERE", grade_id="analysis", grade=True, solution=True, points=0.5)])
COURSE = Course(title="Toy", tasks=(Task(id="1", title="Homework 1: a schedule", points=1.5, manual_points=0.5,
                                         tests=("t.py",), notebook="homework/part1.ipynb",
                                         answer_cells=("analysis",)),))


def _hostile_student():
    html_out = {"output_type": "display_data", "data": {"text/html": "<script>alert(5)</script>"}, "metadata": {}}
    attached = _md("![a](attachment:a.png)")
    attached["attachments"] = {"a.png": {"image/png": "iVBORw0KGgo="}}
    return _nb([
        _md("# Part 1 (edited)", grade_id="intro", locked=True),
        _code("assert True  # tests removed\n", [html_out], grade_id="test_square", grade=True, locked=True, points=9),
        _md(HOSTILE, grade_id="analysis", grade=True, solution=True, points=100),
        _md("second claim", grade_id="analysis", grade=True, solution=True, points=100),
        _code("print('mine')", [html_out], grade_id="fake", grade=True, points=50),
        {"cell_type": "raw", "metadata": {"format": "text/html"}, "source": "<script>alert(6)</script>"},
        attached,
    ])


def _html(nb: dict) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(sanitize_html=True)
    return exporter.from_notebook_node(nbformat.from_dict(nb))[0]


def test_laid_notebook_takes_nothing_from_the_students_metadata():
    laid = nbcourse.laid_notebook(_hostile_student(), SOURCE, RELEASE, {"analysis": 0.5})
    graded = [c for c in laid["cells"] if c["metadata"].get("nbgrader")]
    assert [c["metadata"]["nbgrader"]["grade_id"] for c in graded] == ["intro", "test_square", "analysis"]
    by_id = {c["metadata"]["nbgrader"]["grade_id"]: c for c in graded}
    assert by_id["analysis"]["metadata"]["nbgrader"]["points"] == 0.5
    assert by_id["test_square"]["metadata"]["nbgrader"]["points"] == 1
    assert by_id["test_square"]["source"] == "assert square(3) == 9\n"  # the released cell: no hidden test
    assert by_id["intro"]["source"] == "# Part 1"
    assert "second claim" not in json.dumps(laid)  # a second cell claiming an answer's id is dropped
    assert all(not c.get("outputs") and "attachments" not in c for c in laid["cells"])
    plain = [c for c in laid["cells"] if not c["metadata"]]
    assert [c["cell_type"] for c in plain] == ["code", "markdown", "markdown"]  # raw HTML becomes text
    assert len({c["id"] for c in laid["cells"]}) == len(laid["cells"])
    import nbformat
    nbformat.validate(nbformat.from_dict(laid))


def test_laid_notebook_renders_the_hostile_answer_as_text():
    html = _html(nbcourse.laid_notebook(_hostile_student(), SOURCE, RELEASE, {"analysis": 0.5}))
    for bad in ("<script>alert", "<img src=x", "<img src=\"x\"", 'href="javascript:', 'src="http://evil',
                'src="attachment:'):
        assert bad not in html, bad
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # shown, not run


def test_missing_answer_is_said_and_the_model_answer_never_shown():
    laid = nbcourse.laid_notebook(_nb([]), SOURCE, RELEASE, {"analysis": 0.5})
    text = json.dumps(laid)
    assert nbcourse.NO_ANSWER.replace("(", "").split(":")[0] in text and "model answer" not in text
    assert "HIDDEN TESTS" not in text


def test_quote_is_a_fence_nothing_escapes():
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    lines = nbcourse.quote(HOSTILE)
    assert lines[0].startswith("`````") and lines[-1] == lines[0][: -len("text")]  # longer than the text's ````
    html = markdown2html_mistune("\n".join(lines))
    assert "<script" not in html and "<img" not in html and "<a " not in html and "&lt;script&gt;" in html
    cut = nbcourse.quote("x" * 5000, limit=100)
    assert "(4900 more characters not shown)" in cut[-2] and nbcourse.quote(None)[1] == nbcourse.NO_ANSWER


def test_feedback_quotes_the_answer_inert_with_the_graders_comment():
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    layout = gradebook_layout(COURSE, {"part1": SOURCE})
    sub = Submission("s1", "s1.tar.gz", notebooks={"part1": _hostile_student()},
                     hand={("part1", "analysis"): (0.25, "Look at <b>this</b>")})
    text = feedback(sub, COURSE, layout)
    assert "graded by hand: 0.25 / 0.50" in text and "```" in text
    html = markdown2html_mistune(text)
    assert "<script" not in html and "<img" not in html and "javascript:" not in html.replace("javascript:alert(3)", "")
    assert "<b>this</b>" not in html and "&lt;script&gt;alert(1)" in html
    untouched = feedback(Submission("s2", "s2.tar.gz"), COURSE, layout)
    assert "not graded yet / 0.50" in untouched and nbcourse.NO_ANSWER in untouched


def test_layout_replaces_planted_links_and_keeps_other_students(tmp_path):
    out = tmp_path / "grading"
    out.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "autograded").symlink_to(outside)
    sub = Submission("s1", "s1.tar.gz", timestamp="2026-09-21 14:13:20.000000 UTC",
                     notebooks={"part1": _hostile_student()})
    nbcourse.write_course_layout(out, COURSE, "coursework", {"part1": SOURCE}, {"part1": RELEASE}, [sub],
                                 lambda s: "graded")
    assert not (out / "autograded").is_symlink() and list(outside.iterdir()) == []
    (out / "submitted" / "s2").mkdir()
    (out / "submitted" / "s2" / "keep").write_text("other student")
    os.symlink(outside, out / "submitted" / "s1-link")
    nbcourse.write_course_layout(out, COURSE, "coursework", {"part1": SOURCE}, {"part1": RELEASE}, [sub],
                                 lambda s: "graded")
    assert (out / "submitted" / "s2" / "keep").read_text() == "other student"
    stamp = (out / "autograded" / "s1" / "coursework" / "timestamp.txt").read_text()
    assert stamp == "2026-09-21 14:13:20.000000 UTC\n"
    library = json.loads((out / "autograded" / "s1" / "coursework" / "library.ipynb").read_text())
    assert library["cells"][0]["metadata"]["nbgrader"]["grade_id"] == "task_1"
    assert "c.HTMLExporter.sanitize_html = True" in (out / "nbgrader_config.py").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert "model answer" not in (out / "source" / "coursework" / "part1.ipynb").read_text()  # the release's


def test_hand_in_time_follows_no_link(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(b"x")
    os.utime(archive, (1_790_000_000, 1_790_000_000))
    assert nbcourse.hand_in_time(archive) == "2026-09-21 14:13:20.000000 UTC"
    (tmp_path / "link.tar.gz").symlink_to(archive)
    assert nbcourse.hand_in_time(tmp_path / "link.tar.gz") == ""
    assert nbcourse.hand_in_time(tmp_path / "missing") == ""


def test_an_older_gradebook_gets_its_comment_rows_and_keeps_hand_grades(tmp_path):
    from nbgrader.api import Gradebook

    from diffusion_lib.course.gradebook import write_gradebook

    db = tmp_path / "gradebook.db"
    layout = gradebook_layout(COURSE, {"part1": SOURCE})
    old = type(layout)(layout)  # as the grader wrote it before: no solution cells, so no comment rows
    write_gradebook(db, "coursework", old, [Submission("s1", "s1.tar.gz")])
    with Gradebook(f"sqlite:///{db}") as gb:
        gb.find_grade("analysis", "part1", "coursework", "s1").manual_score = 0.3
        gb.db.commit()
    sub = Submission("s1", "s1.tar.gz", timestamp="2026-09-21 14:13:20.000000 UTC")
    write_gradebook(db, "coursework", layout, [sub])
    with Gradebook(f"sqlite:///{db}") as gb:
        assert gb.find_comment("analysis", "part1", "coursework", "s1").manual_comment is None
        assert gb.find_grade("analysis", "part1", "coursework", "s1").manual_score == pytest.approx(0.3)
        assert gb.find_submission("coursework", "s1").timestamp.isoformat().startswith("2026-09-21T14:13:20")
    assert sub.hand[("part1", "analysis")] == (pytest.approx(0.3), "")
    from diffusion_lib.course.gradebook import totals
    assert totals(sub, layout)[1:3] == (pytest.approx(0.3), 0)
