"""The # Start / # End regions students annotate: short, one statement per line, each line citing its equation."""

import ast
import inspect
import io
import re
import textwrap
import tokenize

import pytest

from pathlib import Path

from diffusion_lib import sampling
from diffusion_lib.course import annotations
from diffusion_lib.course.regions import region_source
from diffusion_lib.diffusion import training_loss
from diffusion_lib.sampling import ddim_sample, ddpm_sample, dpm_solver_sample, predict_x0_and_eps

MAX_LINES, MAX_CHARS = 15, 100
CITATION = re.compile(r"(eq\.|Alg\.)")
SAMPLERS = [ddpm_sample, ddim_sample, dpm_solver_sample]
REGIONS = [training_loss, predict_x0_and_eps, *SAMPLERS]
# the calls of the shared prediction step: they belong in predict_x0_and_eps' region, once
SHARED_STEP = ("guided_prediction", "prediction_to_x0_eps", "classifier_log_prob_grad", "classifier_guided_eps",
               "x0_from_eps", "eps_from_x0", "predict_x0_and_eps", "clamp")


def _lines(func):
    return region_source(func, dedent=False).splitlines()


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> text of the trailing comment that follows code on that line."""
    comments, code_lines = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return {line: text for line, text in comments.items() if line in code_lines}


@pytest.mark.parametrize("func", REGIONS, ids=lambda f: f.__name__)
def test_region_is_short_with_short_lines(func):
    lines = _lines(func)
    assert 0 < len(lines) <= MAX_LINES, f"{func.__name__}: {len(lines)} lines"
    too_long = [line for line in lines if len(line) > MAX_CHARS]
    assert not too_long, f"{func.__name__}: lines over {MAX_CHARS} characters: {too_long}"


@pytest.mark.parametrize("func", REGIONS, ids=lambda f: f.__name__)
def test_region_has_one_statement_per_line(func):
    source = region_source(func)  # dedented: must parse on its own
    tree = ast.parse(source)
    starts: dict[int, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            starts[node.lineno] = starts.get(node.lineno, 0) + 1
            if not isinstance(node, (ast.For, ast.While, ast.If, ast.With)):
                span = f"{node.lineno}-{node.end_lineno}"
                assert node.end_lineno == node.lineno, f"{func.__name__}: a statement spans lines {span}"
    for number, line in enumerate(source.splitlines(), start=1):
        count = starts.get(number, 0)
        assert count == 1, f"{func.__name__} line {number} holds {count} statements: {line!r}"


@pytest.mark.parametrize("func", REGIONS, ids=lambda f: f.__name__)
def test_every_region_line_cites_its_equation_in_a_trailing_comment(func):
    source = region_source(func)
    comments = _comments(source)
    for number, line in enumerate(source.splitlines(), start=1):
        assert comments.get(number), f"{func.__name__} line {number} has no trailing comment: {line!r}"
        assert CITATION.search(comments[number]), f"{func.__name__} line {number} cites no eq./Alg.: {line!r}"


def _called(source: str) -> list[str]:
    """Names of the functions and methods called in ``source`` (``f(...)`` -> "f", ``x.f(...)`` -> "f")."""
    calls = [node.func for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    return [getattr(func, "id", getattr(func, "attr", "")) for func in calls]


def _if_tests(source: str) -> list[str]:
    return [ast.unparse(node.test) for node in ast.walk(ast.parse(source)) if isinstance(node, ast.If)]


def test_the_shared_prediction_step_is_one_region_in_order_with_real_branches():
    source = region_source(predict_x0_and_eps)
    order = ["guided_prediction(", "prediction_to_x0_eps(", "if s != 0:", "classifier_log_prob_grad(",
             "classifier_guided_eps(", "x0_from_eps(", "if clip_sample:", ".clamp(-1, 1)", "eps_from_x0("]
    positions = [source.find(marker) for marker in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))
    assert _if_tests(source) == ["s != 0", "clip_sample"]  # branches, not `if s else 0` expressions
    assert not any(isinstance(node, ast.IfExp) for node in ast.walk(ast.parse(source)))
    classifier_branch, clip_branch = [node for node in ast.parse(source).body if isinstance(node, ast.If)]
    classifier_calls = ["classifier_log_prob_grad", "classifier_guided_eps", "x0_from_eps"]
    assert _called(ast.unparse(classifier_branch)) == classifier_calls  # s != 0 only: not run at scale 0
    assert _called(ast.unparse(clip_branch)) == ["clamp", "eps_from_x0"]
    for hidden in ("recorder", "tqdm", "predict(", ".to(", "device="):
        assert hidden not in source, f"predict_x0_and_eps: {hidden!r} belongs outside the region"


def test_the_shared_step_exists_once_in_the_graded_files():
    """Every call of the prediction step's parts, in every region of sampling.py, is in predict_x0_and_eps'."""
    path = Path(sampling.__file__)
    regions = annotations.find_regions(path.read_text(), "diffusion_lib/sampling.py")
    keys = [region.key.split("::")[1] for region in regions]
    assert sorted(keys) == sorted(f.__name__ for f in [predict_x0_and_eps, *SAMPLERS]), keys
    for region in regions:
        calls = set(_called(textwrap.dedent("\n".join(line.code for line in region.lines))))
        shared = calls & set(SHARED_STEP)
        if region.key.endswith("::predict_x0_and_eps"):
            assert shared == set(SHARED_STEP) - {"predict_x0_and_eps"}, shared
        else:
            assert not shared, f"{region.key} repeats the shared prediction step: {sorted(shared)}"


@pytest.mark.parametrize("func", SAMPLERS, ids=lambda f: f.__name__)
def test_each_sampler_region_holds_only_its_update(func):
    source = region_source(func)
    repeated = set(_called(source)) & set(SHARED_STEP)
    assert not repeated, f"{func.__name__} repeats the shared prediction step: {sorted(repeated)}"
    assert source.rstrip().splitlines()[-1].lstrip().startswith(("x = ", "x0_last, h_last = ")), source
    assigned = {target.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Assign)
                for target in ast.walk(node.targets[0]) if isinstance(target, ast.Name)}
    assert "x" in assigned and not {"x0", "eps"} & assigned, f"{func.__name__} changes the prediction: {assigned}"
    for hidden in ("recorder", "tqdm", "predict(", ".to(", "device="):
        assert hidden not in source, f"{func.__name__}: {hidden!r} belongs outside the region"
    # and the sampler calls the one home, once in its loop (outside its region)
    full = ast.parse(textwrap.dedent(inspect.getsource(func)))
    assert _called(ast.unparse(full)).count("predict_x0_and_eps") == 1


def test_sampler_regions_are_the_sizes_of_their_updates():
    """DDPM's update is 5 lines (eq. 6-7, Alg. 2 lines 3-4), DDIM's 4 (eq. 12, 16), DPM-Solver++'s 7 (Alg. 2)."""
    sizes = {f.__name__: len(region_source(f).splitlines()) for f in REGIONS}
    assert sizes == {"training_loss": 7, "predict_x0_and_eps": 9, "ddpm_sample": 5, "ddim_sample": 4,
                     "dpm_solver_sample": 7}


def test_training_region_draws_no_eager_target_table_and_no_device_plumbing():
    tree = ast.parse(region_source(training_loss))
    assert not any(isinstance(node, ast.Dict) for node in ast.walk(tree))  # the target is chosen, not built for all
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert "v_target" not in names
    assert not any(isinstance(node, ast.Attribute) and node.attr == "to" for node in ast.walk(tree))
    assert not any(isinstance(node, ast.keyword) and node.arg == "device" for node in ast.walk(tree))


def test_checker_rejects_what_the_rules_forbid():
    bad = textwrap.dedent("""\
        a = 1; b = 2  # eq. 1
        c = (a +
             b)  # eq. 2
        d = 3  # no citation
        e = 4
    """)
    tree = ast.parse(bad)
    per_line = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            per_line[node.lineno] = per_line.get(node.lineno, 0) + 1
    assert per_line[1] == 2 and 3 not in per_line  # two statements on a line; a continuation line
    comments = _comments(bad)
    assert CITATION.search(comments[1]) and not CITATION.search(comments[4]) and 5 not in comments
