"""Installed as ``sitecustomize`` of every Python the sandbox starts: log attempts to change files outside
the submission's scratch (an audit hook, PEP 578). It logs, never blocks: the sandbox blocks, and the
log is advisory (the submission could erase it); the runner returns its lines for the feedback.
"""

import os
import sys

_ROOTS = [os.environ.get("COURSE_SANDBOX_ROOT"), os.environ.get("COURSE_SANDBOX_SCRATCH")]
_LOG = os.environ.get("COURSE_SANDBOX_LOG")
_EVENTS = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate", "os.chmod", "os.chown",
           "os.mkdir", "os.symlink", "os.link", "os.utime", "shutil.move", "shutil.copyfile"}
_CHANGED_ARGS = {"os.rename": (0, 1), "shutil.move": (0, 1), "os.link": (1,), "os.symlink": (1,),
                 "shutil.copyfile": (1,)}  # the other events change their first argument
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_busy = []


def _outside(path):
    """The absolute path when it lies outside the allowed folders, else None."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    try:
        path = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError, OSError):
        return None
    for root in _ROOTS:
        if root and (path == root or path.startswith(root + os.sep)):
            return None
    if path.startswith(("/dev/", "/proc/")):
        return None
    return path


def _hook(event, args):
    """Append "event path" to the log for a change outside the allowed folders."""
    if _busy or not (event == "open" or event in _EVENTS):
        return
    if event == "open":
        mode = args[1] if len(args) > 1 else None
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if not ((isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & _WRITE_FLAGS):
            return
    found = [p for p in (_outside(args[i]) for i in _CHANGED_ARGS.get(event, (0,)) if i < len(args)) if p]
    if not found:
        return
    _busy.append(1)
    try:
        with open(_LOG, "a", encoding="utf-8") as handle:
            handle.write(event + " " + found[-1] + "\n")
    except OSError:
        pass
    finally:
        _busy.pop()


if _LOG and any(_ROOTS):
    _ROOTS = [os.path.abspath(r) for r in _ROOTS if r]
    sys.addaudithook(_hook)
