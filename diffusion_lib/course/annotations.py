"""Line annotations of the ``# Start`` / ``# End`` regions (homework part 2b), read from source text.

Works on files that are not imported (a release folder, a student's submission): regions are found
with ``ast`` (the enclosing function names the region) and every region line is split into code and
trailing comment with ``tokenize`` (so a '#' inside a string is code). The reference annotations are
the instructor's trailing comments; the release replaces each by the empty slot ``# TODO(2b): ``;
a student's file is scored line by line against the reference.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path

START, END = "# Start", "# End"
SLOT = "# TODO(2b): "
SLOT_PREFIX = "TODO(2b):"


@dataclass(frozen=True)
class RegionLine:
    line: int          # 1-based line number in the file
    code: str          # the code, indentation kept, trailing spaces removed
    annotation: str    # the trailing comment without '#', stripped ("" when none or an empty slot)


@dataclass(frozen=True)
class AnnotatedRegion:
    key: str           # "<relpath>::<qualname>" (a second region in one function gets "#2", ...)
    start: int         # line of "# Start"
    end: int           # line of "# End"
    lines: tuple[RegionLine, ...]


def _comment_columns(text: str) -> dict[int, int]:
    """line -> column of its trailing comment token (tokenize; '#' in strings is not a comment)."""
    columns: dict[int, int] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT:
                columns[token.start[0]] = token.start[1]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        # fall back to tokenizing line by line (good enough for one-statement lines)
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                for token in tokenize.generate_tokens(io.StringIO(line + "\n").readline):
                    if token.type == tokenize.COMMENT:
                        columns[number] = token.start[1]
            except (tokenize.TokenError, IndentationError, SyntaxError):
                continue
    return columns


def _annotation_text(comment: str) -> str:
    body = comment.lstrip("#").strip()
    if body.startswith(SLOT_PREFIX):
        body = body[len(SLOT_PREFIX):].strip()
    return body


def _function_spans(text: str, path: str) -> list[tuple[int, int, str]]:
    try:
        tree = ast.parse(text, filename=path)
    except SyntaxError:
        return []
    spans: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    spans.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, name + ".")
    visit(tree, "")
    return spans


def find_regions(text: str, path: str = "<text>") -> list[AnnotatedRegion]:
    """The ``# Start``/``# End`` regions of a Python source text.

    Raises:
        ValueError: a ``# Start`` without ``# End`` (or the reverse), or nested starts; names path and line.
    """
    lines = text.splitlines()
    columns = _comment_columns(text)
    spans = _function_spans(text, path)
    regions: list[AnnotatedRegion] = []
    start: int | None = None
    counts: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped == START:
            if start is not None:
                raise ValueError(f"{path}:{number}: '{START}' inside the region opened at line {start}")
            start = number
        elif stripped == END:
            if start is None:
                raise ValueError(f"{path}:{number}: '{END}' without a '{START}' line before it")
            inner = [s for s in spans if s[0] <= start and number <= s[1]]
            name = max(inner, key=lambda s: s[0])[2] if inner else "<module>"
            counts[name] = counts.get(name, 0) + 1
            key = f"{path}::{name}" + (f"#{counts[name]}" if counts[name] > 1 else "")
            region_lines = []
            for n in range(start + 1, number):
                raw = lines[n - 1]
                if not raw.strip():
                    continue
                col = columns.get(n)
                code = (raw[:col] if col is not None else raw).rstrip()
                annotation = _annotation_text(raw[col:]) if col is not None else ""
                region_lines.append(RegionLine(n, code, annotation))
            regions.append(AnnotatedRegion(key, start, number, tuple(region_lines)))
            start = None
    if start is not None:
        raise ValueError(f"{path}:{start}: '{START}' without a matching '{END}'")
    return regions


def reference_annotations(root: str | Path, files: list[str] | tuple[str, ...]) -> dict[str, list[dict]]:
    """{region key: [{"code": ..., "annotation": ...}, ...]} for the regions of ``files`` (paths relative
    to ``root``), the format of the instructor-only reference file."""
    result: dict[str, list[dict]] = {}
    for rel in files:
        text = (Path(root) / rel).read_text(encoding="utf-8")
        for region in find_regions(text, rel):
            result[region.key] = [{"code": l.code.strip(), "annotation": l.annotation} for l in region.lines]
    return result


def write_reference(root: str | Path, files, path: str | Path) -> dict[str, list[dict]]:
    """Write the reference annotations JSON to ``path`` (only when its content changes)."""
    data = reference_annotations(root, files)
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    target = Path(path)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return data


def strip_annotations(text: str, path: str = "<text>") -> str:
    """``text`` with the trailing comment of every region line replaced by the empty slot ``# TODO(2b): ``."""
    regions = find_regions(text, path)
    if not regions:
        return text
    lines = text.splitlines(keepends=True)
    for region in regions:
        for line in region.lines:
            raw = lines[line.line - 1]
            ending = raw[len(raw.rstrip("\r\n")):]
            lines[line.line - 1] = f"{line.code}  {SLOT}{ending}"
    return "".join(lines)


@dataclass(frozen=True)
class LineScore:
    region: str
    index: int              # 0-based line in the region
    reference_code: str
    reference_annotation: str
    student_code: str | None       # None: the line is missing in the student's file
    student_annotation: str
    filled: bool
    code_unchanged: bool

    @property
    def credited(self) -> bool:
        return self.filled and self.code_unchanged


def score_annotations(reference: dict[str, list[dict]], root: str | Path) -> list[LineScore]:
    """Score the student's files under ``root`` against ``reference`` (from :func:`reference_annotations`).

    A line is credited when its annotation is not empty and its code is unchanged (compared without
    surrounding whitespace). A missing file or region counts every line as not filled.
    """
    by_file: dict[str, dict[str, AnnotatedRegion]] = {}
    scores: list[LineScore] = []
    for key in sorted(reference):
        rel = key.split("::", 1)[0]
        if rel not in by_file:
            path = Path(root) / rel
            try:
                by_file[rel] = {r.key: r for r in find_regions(path.read_text(encoding="utf-8"), rel)}
            except (OSError, UnicodeDecodeError, ValueError):
                by_file[rel] = {}
        student = by_file[rel].get(key)
        for index, ref in enumerate(reference[key]):
            line = student.lines[index] if student is not None and index < len(student.lines) else None
            code = line.code.strip() if line else None
            annotation = line.annotation if line else ""
            scores.append(LineScore(key, index, ref["code"], ref["annotation"], code, annotation,
                                    filled=bool(annotation), code_unchanged=code == ref["code"]))
    return scores


def summarize(scores: list[LineScore]) -> dict[str, tuple[int, int]]:
    """region key -> (credited lines, lines)."""
    summary: dict[str, tuple[int, int]] = {}
    for score in scores:
        done, total = summary.get(score.region, (0, 0))
        summary[score.region] = (done + score.credited, total + 1)
    return summary


def as_dicts(scores: list[LineScore]) -> list[dict]:
    return [asdict(s) | {"credited": s.credited} for s in scores]
