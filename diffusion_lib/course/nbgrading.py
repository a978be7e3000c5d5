"""Notebook grading of ``course grade``: nbgrader notebooks get the instructor's cells back, then run.

The order matters: the student's notebook is merged with the instructor's source on the host (every
locked or autograded cell replaced by the instructor's cell of the same grade_id, hidden tests included,
missing autograded cells appended), the merged notebook is laid into that notebook's own fresh working
copy just before its sandboxed run, and the host scores each autograded cell from the runner's
per-cell data (ran, error). Notebooks without an autograded cell are not run at all: nothing in them is
scored by the machine.
"""

from __future__ import annotations

import json

from .judge import Redactor


def nb_cells(nb: dict) -> list[dict]:
    """The notebook's cells that are dicts (a malformed notebook gives fewer cells, never an error)."""
    cells = nb.get("cells", []) if isinstance(nb, dict) else []
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else []


def nb_meta(cell: dict) -> dict:
    """The cell's nbgrader metadata ({} when absent or malformed)."""
    meta = cell.get("metadata", {})
    meta = meta.get("nbgrader", {}) if isinstance(meta, dict) else {}
    return meta if isinstance(meta, dict) else {}


def is_autograde(cell: dict) -> bool:
    """An autograded test cell: graded, not a solution cell, a code cell."""
    m = nb_meta(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell.get("cell_type") == "code"


def has_autograded_cells(nb: dict) -> bool:
    """Whether the instructor's notebook has any autograded cell (else it is not run)."""
    return any(is_autograde(c) for c in nb_cells(nb))


def merge_instructor_cells(student_nb: dict, source_nb: dict) -> tuple[dict, list[str]]:
    """The student's notebook with every locked or autograded cell replaced by the instructor's source
    cell of the same grade_id (hidden tests included); missing cells are appended. Returns notes."""
    notes = []
    source_cells = {nb_meta(c).get("grade_id"): c for c in nb_cells(source_nb) if nb_meta(c).get("grade_id")}
    seen = set()
    cells = []
    for cell in nb_cells(student_nb):
        grade_id = nb_meta(cell).get("grade_id")
        if grade_id in source_cells and grade_id not in seen:
            src = source_cells[grade_id]
            if is_autograde(src) or nb_meta(src).get("locked"):
                cell = json.loads(json.dumps(src))
                cell["outputs"] = [] if cell.get("cell_type") == "code" else cell.get("outputs")
                if cell.get("cell_type") != "code":
                    cell.pop("outputs", None)
            seen.add(grade_id)
        elif grade_id in seen:
            continue  # a second cell claiming a grade_id would shadow the instructor's
        cells.append(cell)
    for grade_id, src in source_cells.items():
        if grade_id not in seen and is_autograde(src):
            notes.append(f"cell {grade_id!r} was missing and has been restored")
            cell = json.loads(json.dumps(src))
            cell["outputs"] = []
            cells.append(cell)
    merged = dict(student_nb)
    merged["cells"] = cells
    merged.setdefault("metadata", {}).setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                                                 "language": "python"})
    return merged, notes


def score_cells(source_nb: dict, result: dict, redact: Redactor) -> tuple[dict[str, float], list[str]]:
    """Per autograded cell of the instructor's notebook: its points when the runner says it ran without an
    error, else 0. Returns ({grade_id: score}, notes)."""
    ran = result.get("cells", {}) if isinstance(result.get("cells"), dict) else {}
    scores, notes = {}, []
    for cell in nb_cells(source_nb):
        if not is_autograde(cell):
            continue
        grade_id = nb_meta(cell)["grade_id"]
        outcome = ran.get(grade_id) if isinstance(ran.get(grade_id), dict) else None
        if outcome is None or not outcome.get("executed"):
            why = "not executed (an earlier error stopped the notebook, or the time limit)"
        elif outcome.get("error"):
            why = str(outcome["error"])
        else:
            why = ""
        scores[grade_id] = 0.0 if why else float(nb_meta(cell).get("points", 0) or 0)
        if why:
            notes.append(redact(f"cell `{grade_id}` failed: {why.splitlines()[0] if why else ''}"))
    if result.get("timed_out"):
        notes.append("the notebook reached its time limit")
    return scores, notes
