"""Checks the host decides on data: the sandbox only computes (:mod:`.probe`), the grader judges here.

For each host check of ``coursework/tasks.yaml`` (``host: schedule`` or ``host: guidance``) the host
makes a spec (:func:`make_spec`; the guidance inputs are drawn here from a seed the host picks per run,
so the student never sees them), the sandbox runs the probe on it, and :func:`decide` parses the probe's
raw output strictly (exact keys, lengths, numbers only, finite, bounded size) and compares it with the
host's own computation. A malformed answer fails the check with a note saying what was wrong.

- schedule: betas for T in :data:`SCHEDULE_LENGTHS`: the right length, finite, strictly inside (0, 1),
  non-decreasing, alpha_bar_T <= 0.01; at T = :data:`HORIZON_T` the exact structure horizon
  (:func:`~diffusion_lib.experiments.forward.exact_structure_horizon` on the digits) strictly beyond
  that of every schedule the library registers, computed on the host from the host's library.
- guidance: classifier_free_guidance(u, c, w) against u + w (c - u) (Ho & Salimans 2022, eq. 6 with
  w = w' + 1; the equivalent form (1 + w') c - w' u is accepted the same way) and guided_prediction
  on a stand-in model whose conditional and null-label outputs the host knows, within :data:`TOLERANCE`.
- samples (3.2b): no probe; the task's own measurement hands its guided samples to the host through the
  runner's data channel (``COURSE_DATA_FD``, one JSON line per sampling). The host classifies the samples of
  w = :data:`SAMPLE_W` with its own judge (the SVC of ``benchmarks/judge_digits.py`` on the real 8x8
  digits): at least :data:`MIN_SAMPLE_ACCURACY` right; and at most :data:`MAX_COPY_SHARE` of them may lie
  within :data:`COPY_DISTANCE` (L2, the digits' 0..16 scale) of a training digit (real digits' nearest
  distinct neighbour is at least 5.3 away), so returning training images scores nothing.
"""

from __future__ import annotations

import functools
import json
import math
import random

SCHEDULE_LENGTHS = (10, 250, 1000)
HORIZON_T = 1000
MAX_FINAL_ALPHA_BAR = 0.01
TOLERANCE = 1e-4  # max abs error, relative to max(1, |reference|)
GUIDANCE_SCALES = (0.0, 1.0)  # always probed, plus random ones
NUM_CLASSES = 10


SAMPLE_W = 3.0
MIN_SAMPLE_ACCURACY = 0.8
COPY_DISTANCE = 2.0
MAX_COPY_SHARE = 0.1
MAX_SAMPLES = 1000


class ProbeError(ValueError):
    """The probe's output is malformed (the message says how); the check fails."""


def make_spec(kind: str, seed: int) -> dict:
    """The probe spec of host check ``kind`` ("schedule" or "guidance"); guidance inputs drawn from ``seed``.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "schedule":
        return {"kind": "schedule", "lengths": list(SCHEDULE_LENGTHS)}
    if kind == "samples":
        return {"kind": "samples"}  # no probe: the task's tests hand their samples over
    if kind != "guidance":
        raise ValueError(f"unknown host check {kind!r}; accepted: schedule, guidance, samples")
    rng = random.Random(seed)
    scales = list(GUIDANCE_SCALES) + [round(rng.uniform(0.1, 0.9), 3), round(rng.uniform(1.5, 9.0), 3)]
    mix, guided = [], []
    for w in scales:
        shape = [rng.randint(1, 4), rng.randint(1, 3), rng.randint(2, 5), rng.randint(2, 5)]
        n = math.prod(shape)
        mix.append({"shape": shape, "w": w, "u": [rng.gauss(0, 1) for _ in range(n)],
                    "c": [rng.gauss(0, 1) for _ in range(n)]})
        gshape = [rng.randint(2, 5), 1, rng.randint(2, 4), rng.randint(2, 4)]
        guided.append({"shape": gshape, "w": w, "x": [rng.gauss(0, 1) for _ in range(math.prod(gshape))],
                       "y": [rng.randrange(NUM_CLASSES) for _ in range(gshape[0])]})
    return {"kind": "guidance", "num_classes": NUM_CLASSES, "mix": mix, "guided": guided}


def _parse(raw: str, keys: set[str]) -> dict:
    def no_constants(name):
        raise ValueError(name)
    try:
        data = json.loads(raw, parse_constant=no_constants)
    except ValueError:
        raise ProbeError("the probe's answer is not strict JSON (NaN/Infinity included)") from None
    if not isinstance(data, dict):
        raise ProbeError(f"the probe's answer must be an object; got {type(data).__name__}")
    if set(data) == {"error"} and isinstance(data["error"], str):
        raise ProbeError(f"your code raised before any answer: {data['error'][:300]}")
    if set(data) != keys:
        raise ProbeError(f"the probe's answer has keys {sorted(map(str, data))[:10]}; expected exactly {sorted(keys)}")
    return data


def _numbers(value, length: int, what: str) -> list[float]:
    if isinstance(value, str):
        raise ProbeError(f"{what}: your code raised {value[:300]}")
    if not isinstance(value, list) or len(value) != length:
        got = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise ProbeError(f"{what}: expected {length} numbers, got {got}")
    if not all(type(v) in (int, float) for v in value):
        raise ProbeError(f"{what}: expected numbers only")
    if not all(math.isfinite(v) for v in value):
        raise ProbeError(f"{what}: not every value is finite")
    return [float(v) for v in value]


def library_horizons(length: int = HORIZON_T) -> dict[str, int]:
    """The exact structure horizon of every schedule the host's library registers, at T = ``length``
    (computed once per process and length: the same for every submission of a grade run)."""
    return dict(_library_horizons(length))


@functools.lru_cache(maxsize=None)
def _library_horizons(length: int) -> tuple[tuple[str, int], ...]:
    from ..experiments.forward import data_std, exact_structure_horizon, library_schedules
    from ..schedules import NoiseSchedule

    std = data_std("digits")
    return tuple((name, exact_structure_horizon(NoiseSchedule(name, length).alphas_cumprod.double().numpy(), std))
                 for name in library_schedules())


def judge_schedule(data: dict) -> str:
    """A short success note; raises ProbeError naming the first failed requirement."""
    import numpy as np

    from ..experiments.forward import data_std, exact_structure_horizon

    betas_by_t = data["betas"]
    if not isinstance(betas_by_t, dict) or set(betas_by_t) != {str(t) for t in SCHEDULE_LENGTHS}:
        raise ProbeError(f"betas for T = {list(SCHEDULE_LENGTHS)} expected")
    horizon = None
    for length in SCHEDULE_LENGTHS:
        betas = np.asarray(_numbers(betas_by_t[str(length)], length, f"T = {length}"))
        if not ((betas > 0) & (betas < 1)).all():
            raise ProbeError(f"T = {length}: expected every beta strictly inside (0, 1), got min {betas.min():.3g}, "
                             f"max {betas.max():.3g}")
        if (np.diff(betas) < 0).any():
            at = int(np.nonzero(np.diff(betas) < 0)[0][0])
            raise ProbeError(f"T = {length}: expected non-decreasing betas, got beta[{at + 1}] = {betas[at + 1]:.4g} "
                             f"< beta[{at}] = {betas[at]:.4g}")
        alpha_bar = np.cumprod(1.0 - betas)
        if alpha_bar[-1] > MAX_FINAL_ALPHA_BAR:
            raise ProbeError(f"T = {length}: expected alpha_bar_T <= {MAX_FINAL_ALPHA_BAR}, got {alpha_bar[-1]:.3g}")
        if length == HORIZON_T:
            horizon = exact_structure_horizon(alpha_bar, data_std("digits"))
    others = library_horizons(HORIZON_T)
    best = max(others, key=others.get)
    if horizon <= others[best]:
        raise ProbeError(f"expected the structure horizon at T = {HORIZON_T} to exceed every registered schedule's "
                         f"(best: {best!r} at t = {others[best]}), got t = {horizon}")
    return f"horizon t = {horizon} > {others[best]} ({best})"


def _close(got: list[float], want: list[float]) -> float:
    """Max abs error relative to max(1, |want|)."""
    return max((abs(g - w) / max(1.0, abs(w)) for g, w in zip(got, want)), default=0.0)


def judge_guidance(data: dict, spec: dict) -> str:
    """A short success note; raises ProbeError naming the first wrong case and its error."""
    for name in ("mix", "guided"):
        if not isinstance(data[name], list) or len(data[name]) != len(spec[name]):
            raise ProbeError(f"{name}: expected {len(spec[name])} answers")
    worst = 0.0
    for case, answer in zip(spec["mix"], data["mix"]):
        w = case["w"]
        got = _numbers(answer, len(case["u"]), f"classifier_free_guidance at w = {w}")
        diffusers = [u + w * (c - u) for u, c in zip(case["u"], case["c"])]
        ho_salimans = [(1 + (w - 1)) * c - (w - 1) * u for u, c in zip(case["u"], case["c"])]  # w' = w - 1
        err = min(_close(got, diffusers), _close(got, ho_salimans))
        if err > TOLERANCE:
            raise ProbeError(f"classifier_free_guidance at w = {w}: expected u + w (c - u) (max abs err <= "
                             f"{TOLERANCE:g}), got max abs err {err:.3g}")
        worst = max(worst, err)
    for case, answer in zip(spec["guided"], data["guided"]):
        w, per = case["w"], len(case["x"]) // case["shape"][0]
        got = _numbers(answer, len(case["x"]), f"guided_prediction at w = {w}")
        want = []
        for i, x in enumerate(case["x"]):
            cond, uncond = x * (case["y"][i // per] + 1.0), x * (spec["num_classes"] + 1.0)
            want.append(uncond + w * (cond - uncond))
        err = _close(got, want)
        if err > TOLERANCE:
            raise ProbeError(f"guided_prediction at w = {w}: expected out_uncond + w (out_cond - out_uncond) with the "
                             f"model's null label for out_uncond (max abs err <= {TOLERANCE:g}), got max abs err {err:.3g}")
        worst = max(worst, err)
    return f"{len(spec['mix']) + len(spec['guided'])} cases within {TOLERANCE:g} (worst {worst:.2g})"


def _digits_judge():
    """(classifier, features, training digits (N, 64) in 0..16) of the host's own judge."""
    import importlib.util
    from pathlib import Path

    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "judge_digits.py"
    spec = importlib.util.spec_from_file_location("_host_judge_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data, digits.target), module.to_judge_features, digits.data


def judge_samples(raw: str) -> str:
    """A short success note for the 3.2b samples handed over on the data channel; raises ProbeError."""
    import numpy as np

    found = []
    for number, line in enumerate(raw.splitlines()[:20], start=1):
        if not line.strip():
            continue
        data = _parse(line, {"kind", "w", "labels", "images"})
        if data["kind"] != "samples" or type(data["w"]) not in (int, float):
            raise ProbeError(f"data line {number}: expected kind 'samples' and a number w")
        labels, images = data["labels"], data["images"]
        if not isinstance(labels, list) or not 0 < len(labels) <= MAX_SAMPLES or not isinstance(images, list) \
                or len(images) != len(labels):
            raise ProbeError(f"data line {number}: expected 1-{MAX_SAMPLES} labels and as many images")
        if not all(type(y) is int and 0 <= y < NUM_CLASSES for y in labels):
            raise ProbeError(f"data line {number}: labels must be integers in [0, {NUM_CLASSES})")
        pixels = [_numbers(image, 64, f"data line {number} image {i}") for i, image in enumerate(images)]
        array = np.asarray(pixels)
        if not ((array >= 0) & (array <= 255) & (array == np.round(array))).all():
            raise ProbeError(f"data line {number}: pixels must be integers in [0, 255]")
        found.append((float(data["w"]), np.asarray(labels), array.astype(np.uint8).reshape(-1, 8, 8, 1)))
    guided = [f for f in found if f[0] == SAMPLE_W]
    if len(guided) != 1:
        raise ProbeError(f"expected exactly one set of samples at w = {SAMPLE_W:g}, got {len(guided)}")
    _, labels, images = guided[0]
    judge, features, train = _digits_judge()
    x = features(images)
    accuracy = float((judge.predict(x) == labels).mean())
    if accuracy < MIN_SAMPLE_ACCURACY:
        raise ProbeError(f"expected the grader's classifier to recognise >= {MIN_SAMPLE_ACCURACY:g} of the samples "
                         f"at w = {SAMPLE_W:g}, got {accuracy:.2f}")
    nearest = np.sqrt(((x[:, None, :] - train[None, :, :]) ** 2).sum(-1)).min(1)
    copies = float((nearest < COPY_DISTANCE).mean())
    if copies > MAX_COPY_SHARE:
        raise ProbeError(f"expected at most {MAX_COPY_SHARE:.0%} of the samples within {COPY_DISTANCE:g} of a training "
                         f"digit, got {copies:.0%} (copies of the training data are not samples)")
    return (f"{len(labels)} samples at w = {SAMPLE_W:g}: accuracy {accuracy:.2f}, median distance to the nearest "
            f"training digit {float(np.median(nearest)):.1f}")


def decide(kind: str, spec: dict, result: dict) -> tuple[bool, str]:
    """The host's verdict on a probe ``result`` (the sandbox runner's result dict) for ``spec``:
    (passed, note). Never raises for bad data: a malformed answer is a failed check with its reason."""
    if result.get("timed_out"):
        return False, "the computation did not finish within the time limit"
    if result.get("probe_oversized") or result.get("data_oversized"):
        return False, "the answer was larger than the grader accepts"
    if kind == "samples":
        raw = result.get("data_output")
        if not isinstance(raw, str) or not raw.strip():
            return False, "no samples came back (the measurement did not run to its end)"
        try:
            return True, judge_samples(raw)
        except ProbeError as error:
            return False, str(error)
    raw = result.get("probe_output")
    if not isinstance(raw, str) or not raw.strip():
        return False, "no answer came back (the probe exited before writing one)"
    try:
        if kind == "schedule":
            return True, judge_schedule(_parse(raw, {"betas"}))
        if kind == "guidance":
            return True, judge_guidance(_parse(raw, {"mix", "guided"}), spec)
        return False, f"unknown host check {kind!r}"
    except ProbeError as error:
        return False, str(error)


def run_host_checks(run, sub, task, overlay, test_result: dict) -> tuple[dict, bool, list[str]]:
    """Run each host check of ``task`` for one submission: a fresh copy of its ``overlay`` goes into the
    grade run's sandbox (``run``: :class:`~.grade._Run`) with the probe's spec, and the host decides here;
    a ``samples`` check is decided on the data of the task's test run (``test_result``, {} when none).

    Returns:
        (check id -> (passed, redacted note), whether a probe hit the time limit, outside-write lines).
    """
    import shutil

    from .sandbox import SandboxError

    decided, timed_out, outside = {}, False, []
    for check in task.checks:
        if not check.host:
            continue
        if check.host == "samples":
            ok, note = decide("samples", {}, test_result) if test_result else (False, "no result came back")
            decided[check.id] = (ok, run.redact(note))
            continue
        spec = make_spec(check.host, run.probe_seed)
        copy = run._copy_for(overlay, f"{sub.student}-{task.id}-probe")
        try:
            result = run.sandbox.run({"kind": "probe", "probe": spec, "timeout_s": run.limits.timeout_s},
                                     copy, run.support, run.work / "out", run.limits)
        except SandboxError as error:
            result = {}
            run._log(sub, f"{task.id} probe", error)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        timed_out |= bool(result.get("timed_out"))
        outside += [str(x) for x in result.get("outside", []) if isinstance(x, str)]
        ok, note = decide(check.host, spec, result) if result else (False, "no result came back from the sandbox")
        decided[check.id] = (ok, run.redact(note))
    return decided, timed_out, outside
