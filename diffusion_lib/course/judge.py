"""Per-task judging of ``course grade``: the host decides a task from data, never from the sandbox's word.

The order matters: the host first learns what to expect (the test ids collected from the instructor's
tests in a clean copy of the release, and which of them are hidden, from the hidden-test regions of the
instructor's files); the sandbox then reports outcomes; a task passes only when the passed ids equal
the expected set exactly, nothing failed, pytest's session finished with status 0 and no time limit was
hit. A static scan of the submitted files runs on the host beforehand: a submission that touches the test
machinery is flagged, and a flagged submission scores nothing until a person clears it. Every message
that leaves the sandbox is bounded and scrubbed of secrets (hidden test names and source, solutions,
reference annotations) before it reaches a feedback file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from . import markers

MAX_MESSAGE = 2000
MAX_FAILURES_SHOWN = 20
MIN_SECRET_LINE = 12

# (label, pattern) of code that tampers with the test machinery or escapes the working copy
SUSPICIOUS = (
    ("pytest internals (_pytest)", r"\b_pytest\b"),
    ("imports pytest", r"^\s*(import|from)\s+pytest\b"),
    ("sys.modules patching", r"\bsys\s*\.\s*modules\b"),
    ("builtins patching", r"\b__builtins__\b|\bimport\s+builtins\b|\bbuiltins\s*\."),
    ("os._exit", r"\bos\s*\.\s*_exit\b|\b_exit\s*\("),
    ("ctypes", r"\bctypes\b"),
    ("frame inspection", r"\bsys\s*\.\s*_getframe\b|\bf_back\b|\bf_globals\b|\bf_locals\b|\bgc\s*\.\s*get_referrers\b"),
    ("inspect module", r"^\s*(import|from)\s+inspect\b"),
    ("tracing or audit hooks", r"\bsys\s*\.\s*(settrace|setprofile|addaudithook)\b"),
    ("interpreter or process paths", r"\bsys\s*\.\s*(executable|prefix|base_prefix)\b|/proc/"),
    ("test-machinery files", r"conftest|_course_test_report|sitecustomize|\.pth\b"),
)


@dataclass
class TaskVerdict:
    """The host's decision on one task's tests: ``ok`` (every expected test passed) and the notes for the
    feedback; ``sound`` when the session itself can be trusted (finished with status 0 or 1, consistent
    with its records, no forged line, no unknown id, no time limit), ``passed`` the expected ids that
    passed and ``failed`` those that failed or errored (per-check scoring reads these)."""

    ok: bool
    notes: list[str] = field(default_factory=list)
    sound: bool = False
    passed: set = field(default_factory=set)
    failed: set = field(default_factory=set)


def hidden_test_names(repo_root: Path, test_files) -> set[str]:
    """Names of test functions and classes defined inside hidden-test regions of the instructor's files."""
    names: set[str] = set()
    for lines, region in _marked_regions(repo_root, test_files):
        if region.kind == "hidden":
            body = "\n".join(lines[region.begin:region.end - 1])
            names |= set(re.findall(r"^\s*(?:async\s+)?def\s+(test\w*)", body, re.MULTILINE))
            names |= set(re.findall(r"^\s*class\s+(Test\w*)", body, re.MULTILINE))
    return names


def is_hidden(nodeid: str, hidden: set[str]) -> bool:
    """Whether a pytest node id names a hidden test (any ``::`` part, parameters stripped)."""
    return any(part.split("[", 1)[0] in hidden for part in nodeid.split("::")[1:])


class Redactor:
    """Removes secrets from text that came out of a sandbox: a message quoting any secret line or name is
    withheld whole; every message is cut to MAX_MESSAGE characters."""

    def __init__(self, names=(), lines=()):
        self.names = {n for n in names if n}
        self.lines = {l.strip() for l in lines if len(l.strip()) >= MIN_SECRET_LINE}

    def __call__(self, text: str) -> str:
        text = str(text)
        if any(name in text for name in self.names) or any(line in text for line in self.lines):
            return "(message withheld: it quotes hidden test material)"
        text = text.replace("\r", " ")
        return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + " ... (cut)"

    def leaks(self, text: str) -> list[str]:
        """The secrets found in ``text`` (for tests and the final check of output files)."""
        return sorted(n for n in self.names if n in text) + sorted(l for l in self.lines if l in text)


def secret_lines(repo_root: Path, files) -> list[str]:
    """Lines inside solution and hidden-test regions of the instructor's ``files`` (relative paths)."""
    found = []
    for lines, region in _marked_regions(repo_root, files):
        found += [l for l in lines[region.begin:region.end - 1] if "###" not in l]
    return found


def _marked_regions(repo_root: Path, files):
    """(the file's lines, region) for every nbgrader-marked region of the readable, well-marked ``files``."""
    for rel in files:
        try:
            text = (Path(repo_root) / rel).read_text(encoding="utf-8")
            regions = markers.find_regions(text, rel)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        lines = text.splitlines()
        for region in regions:
            yield lines, region


def judge_tests(expected: list[str], result: dict, hidden: set[str], redact: Redactor, reveal: bool,
                timeout_s: float) -> TaskVerdict:
    """Decide one task from the sandbox's ``result`` (records, returncode, timed_out) against the
    ``expected`` collected ids. Hidden failures are named only when ``reveal``."""
    records = [r for r in result.get("records", []) if isinstance(r, dict)]
    passed = {r["nodeid"] for r in records if r.get("outcome") == "passed" and r.get("when") == "call"}
    failed = [(r["nodeid"], r.get("message", "")) for r in records if r.get("outcome") in ("failed", "error")]
    finished = [r for r in records if r.get("outcome") == "finished"]
    expected_set = set(expected)
    missing, extra = sorted(expected_set - passed), sorted(passed - expected_set)
    timed_out = bool(result.get("timed_out"))
    clean_end = bool(finished) and finished[-1].get("exitstatus") == 0 and result.get("returncode") == 0
    forged = int(result.get("forged_lines") or 0)
    ok = (bool(expected_set) and not missing and not extra and not failed and clean_end and not timed_out
          and not forged)
    status = finished[-1].get("exitstatus") if finished else None
    sound = (bool(expected_set) and not extra and not timed_out and not forged and bool(finished)
             and status in (0, 1) and result.get("returncode") == status and (status == 0) == (not failed))
    facts = dict(sound=sound, passed=passed & expected_set, failed={n for n, _ in failed})
    if ok:
        return TaskVerdict(True, [f"all {len(expected_set)} tests passed"], **facts)
    notes = []
    if timed_out:
        notes.append(f"timed out: the tests did not finish within {timeout_s:g} s")
    public_failed = [(n, m) for n, m in failed if not is_hidden(n, hidden)]
    hidden_failed = [(n, m) for n, m in failed if is_hidden(n, hidden)]
    notes.append(f"{len(passed & expected_set)} of {len(expected_set)} tests passed")
    for nodeid, message in public_failed[:MAX_FAILURES_SHOWN]:
        first = message.splitlines()[0] if message else ""
        notes.append(redact(f"failed check `{nodeid}`: {first}"))
    if hidden_failed:
        if reveal:
            notes += [f"failed hidden check `{n}`: {(m.splitlines()[0] if m else '')[:MAX_MESSAGE]}"
                      for n, m in hidden_failed[:MAX_FAILURES_SHOWN]]
        else:
            notes.append(f"{len(hidden_failed)} hidden check(s) failed (named after the deadline)")
    failed_ids = {n for n, _ in failed}
    unreported = [n for n in missing if n not in failed_ids]
    if unreported and not timed_out:
        shown = [n for n in unreported if reveal or not is_hidden(n, hidden)]
        notes.append(f"{len(unreported)} expected check(s) never reported a pass"
                     + (": " + ", ".join(f"`{n}`" for n in shown[:5]) if shown else ""))
    if forged:
        notes.append(f"{forged} line(s) of the test report were not written by the grader's plugin (the task fails)")
    if extra:
        notes.append(f"{len(extra)} reported pass(es) of checks that do not exist (ignored; the task fails)")
    if not finished and not timed_out:
        notes.append("the test session did not finish (the process exited early)")
    elif finished and result.get("returncode") not in (0, 1) and not timed_out:
        notes.append(f"pytest exited with status {result.get('returncode')}")
    if failed and all("NotImplementedError" in m for _, m in failed):
        notes.insert(0, "not started")
    return TaskVerdict(False, notes, **facts)


def scan_submission(files: dict[str, str], baseline: dict[str, str]) -> list[str]:
    """Reasons to flag: each SUSPICIOUS pattern that occurs more often in a submitted file (``files``:
    relative path -> text) than in the release's version of it (``baseline``; absent = empty)."""
    reasons = []
    for rel in sorted(files):
        text, before = files[rel], baseline.get(rel, "")
        for label, pattern in SUSPICIOUS:
            regex = re.compile(pattern, re.MULTILINE)
            if len(regex.findall(text)) > len(regex.findall(before)):
                reasons.append(f"{rel}: {label}")
    return reasons
