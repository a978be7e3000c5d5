"""A tiny pytest plugin: one JSON line per test outcome, appended to ``$COURSE_TEST_REPORT``.

Copied verbatim (as ``_course_test_report``) into a temporary folder by ``course check`` and into the
grader's support folder by ``course grade`` (so a submission's copy of this file is never used).
Lines are flushed as tests finish, so a run killed by its time limit still reports what it finished.
"""

import json
import os


def _message(report) -> str:
    longrepr = report.longrepr
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)[:4000]
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # skip reports: (file, line, reason)
        return str(longrepr[2])[:4000]
    text = str(longrepr or "").strip().splitlines()
    return "\n".join(text[-5:])[:4000]


def _write(record: dict) -> None:
    path = os.environ.get("COURSE_TEST_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        _write({"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome,
                "message": "" if report.outcome == "passed" else _message(report)})


def pytest_collectreport(report):
    if report.failed:
        _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "message": _message(report)})
