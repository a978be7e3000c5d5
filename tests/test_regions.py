"""The # Start / # End regions students annotate: short, one statement per line, each line citing its equation."""

import ast
import io
import re
import textwrap
import tokenize

import pytest

from diffusion_lib.diffusion import training_loss
from diffusion_lib.sampling import ddim_sample, ddpm_sample, dpm_solver_sample
from diffusion_lib.course.regions import region_source

MAX_LINES, MAX_CHARS = 15, 100
CITATION = re.compile(r"(eq\.|Alg\.)")
REGIONS = [training_loss, ddpm_sample, ddim_sample, dpm_solver_sample]


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


@pytest.mark.parametrize("func", [ddpm_sample, ddim_sample, dpm_solver_sample], ids=lambda f: f.__name__)
def test_sampling_regions_show_guidance_prediction_clipping_update_in_order_and_no_instrumentation(func):
    source = region_source(func)
    order = ["guided_prediction(", "prediction_to_x0_eps(", ".clamp(-1, 1)", "eps_from_x0(", "x = "]
    positions = [source.find(marker) for marker in order]
    assert -1 not in positions and positions == sorted(positions), dict(zip(order, positions))
    for hidden in ("recorder", "tqdm", "predict(", ".to(", "device="):
        assert hidden not in source, f"{func.__name__}: {hidden!r} belongs outside the region"


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
