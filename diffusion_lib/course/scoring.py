"""Points per check: which collected test ids belong to which check of a task, and the task's score.

A task of ``coursework/tasks.yaml`` lists its ``checks`` (see :class:`~.tasks.Check`). A public check
names its test functions (or classes); a hidden check owns the tests defined in the instructor's
hidden-test regions labelled with its id (the begin marker followed by ``[id]``), so the release, which strips
those regions, carries only the check's id, points and one-line description. Every collected test id
must belong to exactly one check, else grading refuses to start (an instructor's error, named).

A check scores its points when the test session is sound (:class:`~.judge.TaskVerdict`), every test id
of it passed, and, for a host check, the host's decision on the sandbox's data (:mod:`.host_checks`)
passed too. A task without ``checks`` is one check of all its tests (all or nothing).
"""

from __future__ import annotations

import re
from pathlib import Path

from .judge import TaskVerdict, _marked_regions


def hidden_tests_by_check(repo_root: Path, test_files) -> dict[str, set[str]]:
    """Label of each hidden-test region (None for unlabelled) -> names of the tests defined in it."""
    out: dict[str, set[str]] = {}
    for lines, region in _marked_regions(repo_root, test_files):
        if region.kind == "hidden":
            body = "\n".join(lines[region.begin:region.end - 1])
            names = set(re.findall(r"^\s*(?:async\s+)?def\s+(test\w*)", body, re.MULTILINE))
            names |= set(re.findall(r"^\s*class\s+(Test\w*)", body, re.MULTILINE))
            out.setdefault(region.label, set()).update(names)
    return out


def _names(nodeid: str) -> list[str]:
    return [part.split("[", 1)[0] for part in nodeid.split("::")[1:]]


def assign_checks(task, expected: list[str], hidden_by_label: dict) -> dict[str, list[str]]:
    """Check id -> the expected test ids it owns.

    Raises:
        RuntimeError: a collected test belongs to no check or to two; a check owns no collected test
            (the message names the task, the test or the check).
    """
    if not task.checks:
        return {"all": sorted(expected)}
    owners: dict[str, list[str]] = {c.id: [] for c in task.checks}
    for nodeid in sorted(expected):
        names = _names(nodeid)
        found = [c.id for c in task.checks
                 if (c.hidden and any(n in hidden_by_label.get(c.id, ()) for n in names))
                 or (not c.hidden and any(n in c.tests for n in names))]
        if len(found) != 1:
            raise RuntimeError(f"task {task.id}: the test {nodeid} belongs to {len(found)} checks {found} of "
                               "coursework/tasks.yaml; each test must belong to exactly one (public checks name "
                               "their tests; a hidden check owns the hidden-test region labelled with its id)")
        owners[found[0]].append(nodeid)
    empty = [c.id for c in task.checks if (c.tests or c.hidden) and not owners[c.id]]
    if empty:
        raise RuntimeError(f"task {task.id}: checks {empty} own no collected test; name tests that exist, or "
                           "label a hidden-test region with the check's id")
    return owners


def score_task(task, owners: dict[str, list[str]], verdict: TaskVerdict | None,
               host: dict[str, tuple[bool, str]]) -> tuple[float, list[str]]:
    """(points earned, one feedback line per check) from the test ``verdict`` (None: no result) and the
    ``host`` decisions (check id -> (passed, note)) of the task's host checks. When the task's ``gate`` check
    fails, the task earns nothing (its other checks are still reported)."""
    if not task.checks:
        ok = verdict is not None and verdict.ok
        return (task.auto_points if ok else 0.0), []
    score, lines, gate_passed = 0.0, [], True
    for check in task.checks:
        ids = owners.get(check.id, [])
        tests_ok = (verdict is not None and verdict.sound and all(i in verdict.passed for i in ids)
                    and not any(i in verdict.failed for i in ids))
        host_ok, host_note = host.get(check.id, (True, "")) if check.host else (True, "")
        passed = tests_ok and host_ok
        if check.id == task.gate:
            gate_passed = passed
        score += check.points if passed else 0.0
        kind = "hidden check" if check.hidden else ("check (decided by the grader)" if check.host else "check")
        about = f": {check.description}" if check.description else ""
        why = []
        if not tests_ok:
            failed = sum(1 for i in ids if i not in (verdict.passed if verdict else ()))
            why.append(f"{failed} of {len(ids)} test(s) did not pass" if ids and (verdict and verdict.sound)
                       else "the test session was not sound or gave no result")
        if check.host and not host_ok:
            why.append(f"grader's check: {host_note}")
        lines.append(f"{kind} `{check.id}` ({check.points:g} of {check.points:g} points){about}: passed"
                     if passed else
                     f"{kind} `{check.id}` (0 of {check.points:g} points){about}: failed ({'; '.join(why)})")
    if not gate_passed:   # e.g. Task 1: a valid schedule that is no better than a registered one earns nothing
        lines.append(f"no points for this task: its check `{task.gate}` must pass before the others count "
                     f"({score:g} points withheld)")
        score = 0.0
    return round(score, 6), lines
