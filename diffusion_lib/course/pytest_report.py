"""A tiny pytest plugin: one JSON line per test outcome, appended to ``$COURSE_TEST_REPORT``.

Copied verbatim (as ``_course_test_report``) into a temporary folder by ``course check`` and into the
grader's support folder by ``course grade`` (so a submission's copy of this file is never used).
Lines are flushed as tests finish, so a run killed by its time limit still reports what it finished.
Besides outcomes, each collected test id ("collected") and the end of the session ("finished", with
pytest's exit status) are recorded: the grader compares the passed ids with the collected set and
requires a finished session (a run cut short by ``os._exit`` has none).

In the grader's sandbox the report goes to an inherited, already unlinked file descriptor
(``$COURSE_REPORT_FD``) and every line carries an HMAC with a key read once, at plugin import (before
any submission code is imported), from a pipe (``$COURSE_TOKEN_FD``) that is then closed; both variables
are removed from the environment. A submission that writes into the report cannot sign its lines.
"""

import hashlib
import hmac
import json
import os


def _channel():
    """(report fd, key) in the grader's sandbox, else (None, None)."""
    fd, token_fd = os.environ.pop("COURSE_REPORT_FD", None), os.environ.pop("COURSE_TOKEN_FD", None)
    if fd is None or token_fd is None:
        return None, None
    key = b""
    while len(key) < 64:
        chunk = os.read(int(token_fd), 64 - len(key))
        if not chunk:
            break
        key += chunk
    os.close(int(token_fd))
    return int(fd), key


_FD, _KEY = _channel()


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
    if _FD is not None:
        line = json.dumps(record, sort_keys=True)
        mac = hmac.new(_KEY, line.encode("utf-8"), hashlib.sha256).hexdigest()
        os.write(_FD, (line + "\t" + mac + "\n").encode("utf-8"))
        return
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


def pytest_collection_finish(session):
    for item in session.items:
        _write({"nodeid": item.nodeid, "when": "collect", "outcome": "collected", "message": ""})


def pytest_sessionfinish(session, exitstatus):
    _write({"nodeid": "", "when": "session", "outcome": "finished", "message": "", "exitstatus": int(exitstatus)})
