"""Per-check points (tasks.yaml ``checks``) and the checks the host decides on data (host_checks.py).

Instructor-only (it names hidden tests; listed in tasks.yaml instructor_only). Fast: no sandbox. The probe
runs as a plain subprocess on this repository's instructor solutions (and on a copy with wrong answers);
grading with a real sandbox is proven in test_coursework.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from diffusion_lib.course import host_checks
from diffusion_lib.course.judge import TaskVerdict
from diffusion_lib.course.scoring import assign_checks, hidden_tests_by_check, score_task
from diffusion_lib.course.tasks import load_course

REPO = Path(__file__).resolve().parents[1]


def _course_with(tmp_path: Path, checks, points=1.0, manual=0.0) -> None:
    (tmp_path / "coursework").mkdir(exist_ok=True)
    task = {"id": "1", "points": points, "tests": ["coursework/tests/test_x.py"], "checks": checks}
    if manual:
        task |= {"manual_points": manual, "notebook": "n.ipynb", "answer_cells": ["a"]}
    (tmp_path / "coursework/tasks.yaml").write_text(yaml.safe_dump({"tasks": [task]}))


GOOD = {"id": "a", "tests": ["test_a"], "points": 1.0}


@pytest.mark.parametrize("checks, message", [
    ([GOOD | {"points": 0.5}], "add up to 0.5"),
    ([GOOD | {"points": -1}], "points must be a number >= 0; got -1"),
    ([GOOD | {"points": True}], "points must be a number"),
    ([GOOD | {"host": "magic"}], "host 'magic' is not a host check; accepted: ['schedule', 'guidance', 'samples']"),
    ([GOOD | {"hidden": True}], "a hidden check names no tests"),
    ([{"id": "a", "hidden": True, "points": 1.0}], "needs a public one-line description"),
    ([{"id": "a", "points": 1.0}], "needs tests, hidden: true or a host check"),
    ([GOOD | {"colour": "red"}], "unknown fields ['colour']"),
    ([GOOD, GOOD | {"points": 0}], "duplicate check id 'a'"),
    ([GOOD | {"id": "bad id!"}], "id 'bad id!'"),
    ([GOOD | {"description": "two\nlines"}], "description must be one line"),
    ("everything", "checks must be a non-empty list"),
])
def test_bad_checks_are_refused_with_the_bad_value(tmp_path, checks, message):
    _course_with(tmp_path, checks)
    with pytest.raises(ValueError) as error:
        load_course(tmp_path)
    assert message in str(error.value)


def test_the_coursework_table_has_points_per_check():
    course = load_course(REPO)
    for task in course.tasks:
        if task.tests:
            assert task.checks, task.id
            assert sum(c.points for c in task.checks) == pytest.approx(task.auto_points)
            hidden = [c for c in task.checks if c.hidden]
            assert hidden and all(c.description for c in hidden), task.id
    assert course.task("1").checks[-1].host == "schedule" and course.task("3.2b").checks[0].host == "guidance"


def _collected(rel: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", rel],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return [line for line in out.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def owners():
    course = load_course(REPO)
    return {task.id: (task, assign_checks(task, _collected(task.tests[0]), hidden_tests_by_check(REPO, task.tests)))
            for task in course.tasks if task.tests}


def test_every_instructor_test_belongs_to_one_check(owners):
    task, owned = owners["1"]
    assert owned["lengths"] and all("test_valid_for_every_length" in i or "buffers" in i for i in owned["lengths"])
    assert owned["horizon"] == ["coursework/tests/test_part1.py::test_keeps_structure_longer_than_every_registered_schedule"]
    _, owned = owners["3.2a"]
    assert owned["config"] == ["coursework/tests/test_part3a.py::test_config_records_num_classes"]
    assert set(owned) == {"class", "config", "null-label", "parameters", "rebuild"}


def test_a_test_in_no_check_stops_grading(owners):
    task, owned = owners["3.2a"]
    with pytest.raises(RuntimeError, match="test_part3a.py::test_new belongs to 0 checks"):
        assign_checks(task, [*sum(owned.values(), []), "coursework/tests/test_part3a.py::test_new"],
                      hidden_tests_by_check(REPO, task.tests))


def _verdict(owned, failing=(), sound=True) -> TaskVerdict:
    ids = set(sum(owned.values(), []))
    failed = {i for i in ids if any(f in i for f in failing)}
    return TaskVerdict(not failed, [], sound=sound, passed=ids - failed, failed=failed)


def test_one_failed_hidden_check_costs_only_its_points(owners):
    task, owned = owners["3.2a"]
    score, lines = score_task(task, owned, _verdict(owned, failing=["test_rebuilds_from_its_config"]), {})
    assert score == pytest.approx(0.4)
    rebuild = next(line for line in lines if "`rebuild`" in line)
    assert rebuild.startswith("hidden check `rebuild` (0 of 0.1 points): build_unet(model.config) rebuilds it")
    assert "test_rebuilds" not in "\n".join(lines)  # the hidden test's name is not shown
    assert any(line.startswith("check `config` (0.05 of 0.05 points)") for line in lines)


def test_an_unsound_session_scores_no_test_check(owners):
    task, owned = owners["3.2a"]
    assert score_task(task, owned, _verdict(owned, sound=False), {})[0] == 0
    assert score_task(task, owned, None, {})[0] == 0


def test_a_forged_pass_does_not_earn_a_host_check(owners):
    """pytest reports every test passed (say the student's module patched the test machinery in-process):
    the host's own decision on the data still fails the horizon check, and with it Task 1 (its gate)."""
    task, owned = owners["1"]
    score, lines = score_task(task, owned, _verdict(owned), {"horizon": (False, "horizon t = 914 <= 982")})
    assert score == 0
    assert any("`horizon` (0 of 0.7 points)" in line and "grader's check: horizon t = 914" in line for line in lines)
    assert lines[-1] == "no points for this task: its check `horizon` must pass before the others count " \
                        "(0.3 points withheld)"


def test_the_gate_withholds_only_while_it_fails(owners):
    """Task 1's gate is the horizon: valid betas that do not beat the registered schedules earn nothing; with
    the horizon passed, a failed validity check still costs only its own points."""
    task, owned = owners["1"]
    assert task.gate == "horizon"
    assert score_task(task, owned, _verdict(owned), {"horizon": (True, "")})[0] == pytest.approx(1.0)
    score, lines = score_task(task, owned, _verdict(owned, failing=["test_registered_as_homework"]),
                              {"horizon": (True, "")})
    assert score == pytest.approx(0.8) and not any("withheld" in line for line in lines)


def test_a_gate_must_name_one_of_the_tasks_checks(tmp_path):
    _course_with(tmp_path, [GOOD])
    path = tmp_path / "coursework/tasks.yaml"
    data = yaml.safe_load(path.read_text())
    data["tasks"][0]["gate"] = "horizon"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"gate 'horizon' must name one of the task's checks; accepted: \['a'\]"):
        load_course(tmp_path)


# ---- the host's decisions on data ----

def _betas_answer(fn) -> str:
    return json.dumps({"betas": {str(t): [float(b) for b in fn(t)] for t in host_checks.SCHEDULE_LENGTHS}})


def _decide_schedule(raw: str, **extra):
    return host_checks.decide("schedule", host_checks.make_spec("schedule", 0), {"probe_output": raw, **extra})


def test_the_reference_schedule_passes_with_a_margin():
    from diffusion_lib.homework_schedules import homework_schedule

    ok, note = _decide_schedule(_betas_answer(homework_schedule))
    assert ok, note
    horizons = host_checks.library_horizons()
    assert set(horizons) >= {"linear", "cosine", "sigmoid", "sqrt", "jsd", "quadratic"} and "homework" not in horizons
    ours = int(note.split("t = ")[1].split()[0])
    assert ours - max(horizons.values()) >= 5, (ours, horizons)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "jsd"])
def test_a_registered_schedule_verbatim_scores_nothing(name):
    from diffusion_lib.schedules import get_betas

    ok, note = _decide_schedule(_betas_answer(lambda t: get_betas(name, t).numpy()))
    assert not ok and "to exceed every registered schedule's" in note, note


def test_a_trivial_reparametrisation_of_the_best_scores_nothing():
    from diffusion_lib.schedules import jsd

    ok, note = _decide_schedule(_betas_answer(lambda t: np.clip(jsd(t) * 1.0000001, 0, 0.999)))
    assert not ok, note


@pytest.mark.parametrize("raw, expected", [
    ("not json", "not strict JSON"),
    ('{"betas": {"10": [NaN]}}', "not strict JSON"),
    ("[1, 2]", "must be an object"),
    ('{"betas": {}, "extra": 1}', "expected exactly ['betas']"),
    ('{"error": "ImportError: no module"}', "your code raised before any answer: ImportError"),
    ('{"betas": {"10": [0.1]}}', "betas for T = [10, 250, 1000] expected"),
    (json.dumps({"betas": {"10": [0.5] * 9, "250": [0.5] * 250, "1000": [0.5] * 1000}}), "T = 10: expected 10 numbers, got 9 values"),
    (json.dumps({"betas": {"10": ["0.5"] * 10, "250": [0.5] * 250, "1000": [0.5] * 1000}}), "expected numbers only"),
    (json.dumps({"betas": {"10": [True] * 10, "250": [0.5] * 250, "1000": [0.5] * 1000}}), "expected numbers only"),
    (json.dumps({"betas": {"10": [1.0] * 10, "250": [0.5] * 250, "1000": [0.5] * 1000}}), "strictly inside (0, 1)"),
    (json.dumps({"betas": {"10": [0.9] + [0.5] * 9, "250": [0.5] * 250, "1000": [0.5] * 1000}}), "non-decreasing"),
    (json.dumps({"betas": {"10": [1e-4] * 10, "250": [0.5] * 250, "1000": [0.5] * 1000}}), "alpha_bar_T <= 0.01"),
    (json.dumps({"betas": {"10": "ValueError: T too small", "250": [], "1000": []}}), "T = 10: your code raised ValueError"),
    ("", "no answer came back"),
])
def test_malformed_schedule_answers_fail_with_a_clear_note(raw, expected):
    ok, note = _decide_schedule(raw)
    assert not ok and expected in note, note


def test_oversized_or_late_answers_fail():
    assert _decide_schedule("{}", probe_oversized=True) == (False, "the answer was larger than the grader accepts")
    assert not _decide_schedule("{}", timed_out=True)[0]


def _run_probe(root: Path, spec: dict) -> dict:
    """The sandbox's probe, run here as a plain subprocess in ``root`` (its raw output, as the runner returns it)."""
    read, write = os.pipe()
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'diffusion_lib/course'}{os.pathsep}{root}", COURSE_PROBE_FD=str(write))
    probe = subprocess.run([sys.executable, "-P", "-c", "import runpy; runpy.run_module('probe', run_name='__main__')"],
                           input=json.dumps(spec).encode(), env=env, cwd=root, pass_fds=(write,), capture_output=True,
                           timeout=120)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        raw = handle.read().decode()
    assert probe.returncode == 0, probe.stderr.decode()[-2000:]
    return {"probe_output": raw}


@pytest.fixture(scope="module")
def wrong_copy(tmp_path_factory) -> Path:
    """The library with wrong answers: cosine for the schedule, w used as Ho & Salimans' w' in the mix."""
    root = tmp_path_factory.mktemp("wrong")
    shutil.copytree(REPO / "diffusion_lib", root / "diffusion_lib", ignore=shutil.ignore_patterns("__pycache__"))
    path = root / "diffusion_lib/homework_schedules.py"
    text = path.read_text()
    path.write_text(text.replace("    return betas_from_alphas_cumprod(lambda s: 1.0 - s ** 2",
                                 "    from .schedules import cosine\n    return cosine(num_train_timesteps)\n"
                                 "    return betas_from_alphas_cumprod(lambda s: 1.0 - s ** 2"))
    path = root / "diffusion_lib/guidance.py"
    path.write_text(path.read_text().replace("return out_uncond + guidance_scale * (out_cond - out_uncond)",
                                             "return (1 + guidance_scale) * out_cond - guidance_scale * out_uncond"))
    return root


def test_probe_on_the_reference_solutions_passes():
    for kind in ("schedule", "guidance"):
        spec = host_checks.make_spec(kind, 7)
        ok, note = host_checks.decide(kind, spec, _run_probe(REPO, spec))
        assert ok, (kind, note)


def test_probe_on_wrong_answers_fails_with_expected_and_got(wrong_copy):
    spec = host_checks.make_spec("schedule", 7)
    ok, note = host_checks.decide("schedule", spec, _run_probe(wrong_copy, spec))
    assert not ok and "got t = 914" in note, note
    spec = host_checks.make_spec("guidance", 7)
    ok, note = host_checks.decide("guidance", spec, _run_probe(wrong_copy, spec))
    assert not ok and note.startswith("classifier_free_guidance at w = 0.0: expected u + w (c - u)"), note
    assert "got max abs err" in note


def test_guidance_inputs_are_new_each_seed_and_the_same_for_one():
    a, b = host_checks.make_spec("guidance", 1), host_checks.make_spec("guidance", 2)
    assert a == host_checks.make_spec("guidance", 1) and a["mix"][2]["u"] != b["mix"][2]["u"]
    assert [c["w"] for c in a["mix"]][:2] == [0.0, 1.0]


def test_guidance_answers_of_the_wrong_shape_fail():
    spec = host_checks.make_spec("guidance", 3)
    good = {"mix": [[0.0] * len(c["u"]) for c in spec["mix"]], "guided": [[0.0] * len(c["x"]) for c in spec["guided"]]}
    for bad, expected in ((dict(good, mix=good["mix"][:1]), "mix: expected 4 answers"),
                          (dict(good, mix=[[0.0]] + good["mix"][1:]), "expected"),
                          (dict(good, extra=[]), "expected exactly")):
        ok, note = host_checks.decide("guidance", spec, {"probe_output": json.dumps(bad)})
        assert not ok and expected in note, note


def test_public_failures_say_what_was_expected_and_what_came_out(wrong_copy):
    """The public tests on wrong answers: every failure message holds 'expected' and 'got'."""
    from diffusion_lib.course.markers import strip_regions

    tests = wrong_copy / "coursework/tests"
    tests.mkdir(parents=True, exist_ok=True)
    for name in ("test_part1.py", "test_part3b.py"):
        (tests / name).write_text(strip_regions((REPO / "coursework/tests" / name).read_text(), solutions=False))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", "--tb=no",
                          "-k", "structure or formula or guided_prediction", "coursework/tests"],
                         cwd=wrong_copy, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(wrong_copy), COLUMNS="4000"))
    failures = [line for line in run.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failures) == 3, run.stdout[-3000:]
    for line in failures:
        assert "expected" in line and "got" in line, line
    assert any("w = 0.0: expected eps_u (the unconditional output), max abs err <= 1e-6, got" in l for l in failures)
    assert any("after t = 982 (the best registered one, 'jsd'); got t = 914 with yours" in l for l in failures)


# ---- 3.2b's samples, handed over by the task's measurement and judged by the host ----

def _digits_uint8(noise: float = 0.0, seed: int = 0):
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.nonzero(digits.target == k)[0][:10] for k in range(10)])
    images = digits.data[pick] * 255.0 / 16.0 + rng.uniform(-noise, noise, (len(pick), 64))
    return digits.target[pick].tolist(), np.clip(np.round(images), 0, 255).astype(int)


def _samples_line(labels, images, w=3.0, **extra) -> str:
    return json.dumps({"kind": "samples", "w": w, "labels": list(labels), "images": np.asarray(images).tolist(),
                       **extra})


def _decide_samples(raw: str):
    return host_checks.decide("samples", {}, {"data_output": raw})


def test_recognisable_new_samples_pass():
    labels, images = _digits_uint8(noise=40)
    ok, note = _decide_samples(_samples_line(labels, images) + "\n" + _samples_line(labels, images, w=0.0))
    assert ok, note


def test_copies_of_training_digits_fail():
    labels, images = _digits_uint8()
    ok, note = _decide_samples(_samples_line(labels, images))
    assert not ok and "within 2 of a training digit, got 100%" in note, note


def test_unrecognisable_samples_fail():
    labels, _ = _digits_uint8()
    noise = np.random.default_rng(0).integers(0, 256, (len(labels), 64))
    ok, note = _decide_samples(_samples_line(labels, noise))
    assert not ok and "expected the grader's classifier to recognise >= 0.8" in note, note


@pytest.mark.parametrize("edit, expected", [
    (lambda l, i: _samples_line(l, i, extra=1), "expected exactly"),
    (lambda l, i: _samples_line(l, i) + "\n" + _samples_line(l, i), "exactly one set of samples at w = 3, got 2"),
    (lambda l, i: _samples_line(l, i, w=2.0), "got 0"),
    (lambda l, i: _samples_line(l, np.asarray(i) + 300), "pixels must be integers in [0, 255]"),
    (lambda l, i: _samples_line([10] * len(l), i), "labels must be integers in [0, 10)"),
    (lambda l, i: _samples_line(l, np.asarray(i)[:, :63]), "expected 64 numbers, got 63 values"),
    (lambda l, i: _samples_line(l[:5], i), "as many images"),
    (lambda l, i: _samples_line(l, i).replace("[", "[NaN, ", 1), "not strict JSON"),
    (lambda l, i: "", "no samples came back"),
])
def test_malformed_samples_fail_with_a_clear_note(edit, expected):
    labels, images = _digits_uint8(noise=40)
    ok, note = _decide_samples(edit(labels, images))
    assert not ok and expected in note, note
