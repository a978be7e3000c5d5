"""Solution regions and hidden tests in Python text (nbgrader's markers, used in .py files too).

A region is a run of lines between a marker line and its end marker line; a marker line is a comment
that holds only the marker (indentation allowed). Solution regions may name their task in brackets
after the begin marker; the release replaces the region, markers included, by
``raise NotImplementedError("<task title>")`` at the marker's indentation. Hidden-test regions are
removed, markers included. Regions do not nest.

The marker strings are assembled below so that this file itself holds no marker line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_H = "### "
SOLUTION_BEGIN = _H + "BEGIN SOLUTION"
SOLUTION_END = _H + "END SOLUTION"
HIDDEN_BEGIN = _H + "BEGIN HIDDEN TESTS"
HIDDEN_END = _H + "END HIDDEN TESTS"

_BEGIN = re.compile(r"^(?P<indent>[ \t]*)" + re.escape(_H) + r"BEGIN (?P<kind>SOLUTION|HIDDEN TESTS)"
                    r"(?:[ \t]*\[(?P<label>[^\]\n]*)\])?[ \t]*$")
_END = re.compile(r"^[ \t]*" + re.escape(_H) + r"END (?P<kind>SOLUTION|HIDDEN TESTS)[ \t]*$")
# any line that starts like a marker (used by the leak check; catches malformed markers too)
MARKER_LINE = re.compile(r"^[ \t]*#+[ \t]*(BEGIN|END)[ \t]+(SOLUTION|HIDDEN TESTS)\b")


@dataclass(frozen=True)
class Region:
    kind: str          # "solution" or "hidden"
    begin: int         # 1-based line of the begin marker
    end: int           # 1-based line of the end marker
    indent: str
    label: str | None  # text in brackets after the begin marker


def find_regions(text: str, path: str = "<text>") -> list[Region]:
    """Every marker region in ``text``, in order.

    Raises:
        ValueError: an end marker without a begin, a begin inside an open region (nesting), a region
            left open at the end of the file, or a begin/end kind mismatch; the message names path and line.
    """
    regions: list[Region] = []
    open_: tuple[int, str, str, str | None] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        begin, end = _BEGIN.match(line), _END.match(line)
        if begin:
            kind = "solution" if begin["kind"] == "SOLUTION" else "hidden"
            if open_ is not None:
                raise ValueError(f"{path}:{number}: nested marker {line.strip()!r} inside the region opened at "
                                 f"line {open_[0]}; regions do not nest")
            open_ = (number, kind, begin["indent"], (begin["label"] or "").strip() or None)
        elif end:
            kind = "solution" if end["kind"] == "SOLUTION" else "hidden"
            if open_ is None:
                raise ValueError(f"{path}:{number}: {line.strip()!r} without a matching begin marker")
            if open_[1] != kind:
                raise ValueError(f"{path}:{number}: {line.strip()!r} closes the {open_[1]} region opened at "
                                 f"line {open_[0]}")
            regions.append(Region(kind, open_[0], number, open_[2], open_[3]))
            open_ = None
        elif MARKER_LINE.match(line):
            raise ValueError(f"{path}:{number}: malformed marker line {line.strip()!r}; expected "
                             f"'{SOLUTION_BEGIN} [task]', '{SOLUTION_END}', '{HIDDEN_BEGIN}' or '{HIDDEN_END}'")
    if open_ is not None:
        raise ValueError(f"{path}:{open_[0]}: {open_[1]} region opened here is never closed")
    return regions


def has_markers(text: str) -> bool:
    """True when any line of ``text`` looks like a solution or hidden-test marker."""
    return any(MARKER_LINE.match(line) for line in text.splitlines())


def strip_regions(text: str, path: str = "<text>", *, solutions: bool = True, hidden: bool = True,
                  title_for=lambda label: label or "solution missing") -> str:
    """``text`` with solution regions replaced by stubs and/or hidden-test regions removed.

    Args:
        solutions: replace each solution region by ``raise NotImplementedError(title_for(label))``.
        hidden: remove hidden-test regions (markers included).
        title_for: maps the bracket label of a solution marker (task id, title or None) to the stub message.
    """
    regions = find_regions(text, path)
    if not regions:
        return text
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    out: list[str] = []
    cursor = 0
    for region in regions:
        out += lines[cursor:region.begin - 1]
        keep = lines[region.begin - 1:region.end]
        if region.kind == "solution" and solutions:
            out.append(f"{region.indent}raise NotImplementedError({title_for(region.label)!r}){newline}")
        elif region.kind == "hidden" and hidden:
            pass
        else:
            out += keep
        cursor = region.end
    out += lines[cursor:]
    return "".join(out)


def solution_bodies(text: str, path: str = "<text>") -> dict[str, list[str]]:
    """label -> source lines of its solution regions (markers excluded); for tests and tooling."""
    lines = text.splitlines()
    bodies: dict[str, list[str]] = {}
    for region in find_regions(text, path):
        if region.kind == "solution":
            bodies.setdefault(region.label or "", []).extend(lines[region.begin:region.end - 1])
    return bodies
