"""``course grade``: grade a folder of hand-in archives, each in isolation, into nbgrader's gradebook.

Per grade run a grader workspace is built once: the release of the instructor repository with the
hidden tests kept (solutions stripped, annotation slots empty). Per submission:

1. the archive is checked (a .tar.gz/.tgz/.zip whose name is a valid student id) and extracted
   safely (no absolute paths, no '..', no links, no devices; size and member limits);
2. its files from the allowed folders (the hand-in folders; never tests, conftest.py or the course
   tooling) are laid over a fresh copy of the workspace;
3. every autograded task's tests run with pytest in their own process group with a time limit and
   rlimits (CPU, address space, file size, processes); when the grader runs as root the tests run as
   an unprivileged user (``nobody``) with HOME and TMPDIR inside the copy, so a submission can neither
   change the instructor's files nor another submission's;
4. nbgrader notebooks: the student's notebook gets the instructor's test cells back (hidden tests
   included), is executed with papermill in the same sandbox, and each autograded cell scores its
   points when it raised no error;
5. annotation tasks score the share of region lines annotated (code unchanged), against the reference
   annotations made from the instructor's source.

Gradebook model (nbgrader's schema): one assignment; a notebook "library" with one autograded cell
per task that has tests or annotations (``task_<id>``, max score = points - manual_points) and a task
cell ``grader_status`` whose comment holds the submission's status line (e.g. "not a .tar.gz/.zip
archive"); one notebook per nbgrader homework notebook with its own cells (manual cells are left for
hand grading in formgrader). Also written: grades.csv (sorted, fixed formatting: the same folder gives
the same file) and feedback/<student>.md with the reference annotation beside the student's.

Known limit: tests run in the same process as the student's code, so a submission written to forge
pytest's results could do so; the sandbox protects machines and files, a human reads suspicious code.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import re
import resource
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import annotations as ann
from .check import TestRun, run_pytest, write_plugin
from .handin import ALLOWED_FOLDERS
from .release import is_nbgrader_notebook, release
from .tasks import Course, load_course

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
LIBRARY_NOTEBOOK = "library"
STATUS_CELL = "grader_status"
MAX_MEMBERS = 5000
MAX_UNPACKED_BYTES = 200 * 1024 * 1024
NEVER_FROM_SUBMISSION = ("diffusion_lib/course/",)
NEVER_NAMES = {"conftest.py", "pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml", "sitecustomize.py",
               "usercustomize.py"}


@dataclass
class Limits:
    timeout_s: float = 300.0          # wall time of one task's tests
    notebook_timeout_s: float = 600.0 # wall time of one notebook's execution
    memory_mb: int | None = 16384     # address space (None: unlimited; CUDA needs a large one)
    file_mb: int = 512                # largest file a submission may write
    nproc: int = 256                  # processes of the sandbox user (only applied when dropping privileges)
    user: str = "nobody"              # sandbox user when the grader runs as root


@dataclass
class Submission:
    student: str
    archive: str
    status: str = "graded"
    note: str = ""
    task_scores: dict[str, float] = field(default_factory=dict)
    task_feedback: dict[str, list[str]] = field(default_factory=dict)
    cell_scores: dict[tuple[str, str], float | None] = field(default_factory=dict)  # (notebook, cell) -> score
    notebook_notes: dict[str, str] = field(default_factory=dict)
    annotation_lines: list[ann.LineScore] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------- archives

def student_id(archive: Path) -> tuple[str, str | None]:
    """(student id, error) from the archive's file name."""
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if not STUDENT_ID.match(stem):
                return _sanitize(stem), (f"archive name {name!r}: the student id must be 1-64 letters, digits, "
                                         f"'.', '_', '-' starting with a letter or digit")
            return stem, None
    return _sanitize(name.split(".")[0] or name), "not a .tar.gz/.zip archive"


def _sanitize(text: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip("._-")[:64]
    return clean or "unnamed"


def _safe_rel(name: str) -> str | None:
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def extract_archive(archive: Path, target: Path) -> list[str]:
    """Extract regular files safely; returns the relative paths. Raises ValueError with the reason."""
    target.mkdir(parents=True, exist_ok=True)
    extracted: list[str] = []
    total = 0
    if archive.name.endswith(".zip"):
        if not zipfile.is_zipfile(archive):
            raise ValueError("not a .tar.gz/.zip archive (the .zip file cannot be read)")
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise ValueError(f"archive has {len(members)} members (limit {MAX_MEMBERS})")
            for info in members:
                if info.is_dir():
                    continue
                rel = _safe_rel(info.filename)
                mode = info.external_attr >> 16
                if rel is None or (mode and not stat.S_ISREG(mode)):
                    raise ValueError(f"unsafe archive member {info.filename!r} (absolute, '..' or a link)")
                total += info.file_size
                if total > MAX_UNPACKED_BYTES:
                    raise ValueError(f"archive unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB")
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target / rel, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                extracted.append(rel)
        return extracted
    try:
        tf = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError):
        raise ValueError("not a .tar.gz/.zip archive (the tar file cannot be read)") from None
    with tf:
        members = tf.getmembers()
        if len(members) > MAX_MEMBERS:
            raise ValueError(f"archive has {len(members)} members (limit {MAX_MEMBERS})")
        for member in members:
            if member.isdir():
                continue
            rel = _safe_rel(member.name)
            if rel is None or not member.isfile():
                raise ValueError(f"unsafe archive member {member.name!r} (absolute, '..', a link or a device)")
            total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise ValueError(f"archive unpacks to more than {MAX_UNPACKED_BYTES // 2**20} MB")
            member.name = rel
            tf.extract(member, target, filter="data")
            extracted.append(rel)
    return extracted


def accepted(rel: str, course: Course) -> bool:
    """Whether a submitted file may be laid over the workspace."""
    if rel.startswith(NEVER_FROM_SUBMISSION) or rel.rsplit("/", 1)[-1] in NEVER_NAMES:
        return False
    test_files = {t for task in course.tasks for t in task.tests}
    if rel in test_files or any(rel.startswith(t.rstrip("/") + "/") for t in test_files):
        return False
    import fnmatch
    return rel.startswith(ALLOWED_FOLDERS) or any(fnmatch.fnmatch(rel, g) for g in course.handin_outputs)


# ------------------------------------------------------------------------------------- sandbox

@dataclass
class Sandbox:
    """How submissions run: ``mode`` "namespace" (read-only mount namespace), "user" (as ``ids``, e.g.
    nobody) or "none" (limits only); ``python`` is the command that starts the interpreter inside it."""

    mode: str
    python: str = sys.executable
    ids: tuple[int, int] | None = None
    why: str = ""

    @property
    def description(self) -> str:
        return {"namespace": "read-only mount namespace (only its working copy is writable)",
                "user": "unprivileged user (cannot write the instructor's files)",
                "none": f"NOT sandboxed ({self.why})"}[self.mode]


# Run by `unshare` as root in a new mount and PID namespace: the working copy ($COURSE_SANDBOX_ROOT) becomes
# its own rw bind mount, every other mount except /proc, /sys and /dev is remounted read-only, then every
# capability is dropped (so the submission cannot remount anything) and Python starts.
_NAMESPACE_SCRIPT = r"""set -eu
root="$COURSE_SANDBOX_ROOT"
python="$1"; shift
mount --bind "$root" "$root"
mounts=$(awk '{print $5}' /proc/self/mountinfo | sort -u)
IFS='
'
for m in $mounts; do
  m=$(printf '%b' "$m")
  case "$m" in
    "$root"|"$root"/*|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) ;;
    *) mount -o remount,ro,bind "$m" || { echo "course sandbox: cannot make $m read-only" >&2; exit 97; } ;;
  esac
done
exec setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$python" "$@"
"""

# sitecustomize.py of every sandboxed Python (the support folder is first on PYTHONPATH): an audit hook
# (PEP 578) that logs, never blocks (the sandbox blocks), each attempt to create, change or delete a file
# outside the working copy.
_AUDIT_HOOK = '''"""Course grader: log attempts to change files outside the submission's working copy."""
import os
import sys

_root, _log = os.environ.get("COURSE_SANDBOX_ROOT"), os.environ.get("COURSE_SANDBOX_LOG")
_EVENTS = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "os.truncate", "os.chmod", "os.chown",
           "os.mkdir", "os.symlink", "os.link", "os.utime", "shutil.move", "shutil.copyfile"}
_CHANGED_ARGS = {"os.rename": (0, 1), "shutil.move": (0, 1), "os.link": (1,), "os.symlink": (1,),
                 "shutil.copyfile": (1,)}  # the other events change their first argument
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_busy = []


def _outside(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    try:
        path = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError, OSError):
        return None
    if path == _root or path.startswith(_root + os.sep) or path.startswith(("/dev/", "/proc/")):
        return None
    return path


def _hook(event, args):
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
        with open(_log, "a", encoding="utf-8") as handle:
            handle.write(event + " " + found[-1] + "\\n")
    except OSError:
        pass
    finally:
        _busy.pop()


if _root and _log:
    _root = os.path.abspath(_root)
    sys.addaudithook(_hook)
'''
OUTSIDE_LOG = "outside-writes.log"


def _write_namespace_script(folder: Path) -> Path:
    """``folder``/sandbox-python: starts this Python in the namespace sandbox around $COURSE_SANDBOX_ROOT."""
    import shlex
    inner, outer = folder / "sandbox-inner.sh", folder / "sandbox-python"
    inner.write_text(_NAMESPACE_SCRIPT, encoding="utf-8")
    outer.write_text("#!/bin/sh\nexec unshare --mount --propagation private --pid --fork --mount-proc -- "
                     f"/bin/sh {shlex.quote(str(inner))} {shlex.quote(sys.executable)} \"$@\"\n", encoding="utf-8")
    for path in (inner, outer):
        os.chmod(path, 0o755)
    return outer


def _namespace_probe(work: Path) -> tuple[bool, str]:
    """Whether the mount-namespace sandbox works here: inside it the working copy is writable, a file
    beside it is not, and this Python imports pytest."""
    import subprocess
    if os.geteuid() != 0:
        return False, "the grader is not root, so it cannot make a mount namespace"
    missing = [tool for tool in ("unshare", "setpriv", "mount", "awk") if shutil.which(tool) is None]
    if missing:
        return False, f"{', '.join(missing)} missing (util-linux)"
    probe = Path(tempfile.mkdtemp(prefix="sandbox-probe-", dir=work))
    try:
        inside, outside = probe / "copy", probe / "outside.txt"
        inside.mkdir()
        outside.write_text("keep")
        script = _write_namespace_script(probe)
        code = ("import sys, pytest\nopen(sys.argv[1], 'w').write('x')\n"
                "try:\n    open(sys.argv[2], 'w').write('changed')\nexcept OSError:\n    pass\n")
        run = subprocess.run([str(script), "-c", code, str(inside / "ok.txt"), str(outside)], cwd=inside,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COURSE_SANDBOX_ROOT": str(inside)},
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if run.returncode != 0 or not (inside / "ok.txt").is_file():
            return False, f"the unshare sandbox failed: {(run.stderr or run.stdout).strip()[-300:]}"
        if outside.read_text() != "keep":
            return False, "the unshare sandbox did not make the rest of the file system read-only"
        return True, ""
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"the unshare sandbox failed ({type(error).__name__}: {error})"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def choose_sandbox(limits: Limits, work: Path, verbose: bool = True) -> Sandbox:
    """The strongest sandbox available here: a read-only mount namespace, then the unprivileged user,
    then none (with a loud warning). ``work`` is the grade run's scratch folder (a support/ folder in it
    receives the namespace launcher)."""
    ok, why_ns = _namespace_probe(work)
    if ok:
        (work / "support").mkdir(exist_ok=True)
        return Sandbox("namespace", python=str(_write_namespace_script(work / "support")))
    ok, why_user = _user_probe(limits.user)
    if ok:
        if verbose:
            print(f"note: no mount-namespace sandbox ({why_ns}); submissions run as {limits.user!r}", file=sys.stderr)
        entry = pwd.getpwnam(limits.user)
        return Sandbox("user", ids=(entry.pw_uid, entry.pw_gid))
    why = f"{why_ns}; {why_user}"
    if verbose:
        print(f"WARNING: submissions are NOT sandboxed ({why}): they run as {pwd.getpwuid(os.geteuid()).pw_name} "
              "with time and memory limits only and could change files this user can write. Grade as root on "
              "Linux with util-linux (unshare, setpriv), e.g. in the course image, to sandbox them.", file=sys.stderr)
    return Sandbox("none", why=why)


def sandbox_available(user: str = "nobody") -> tuple[bool, str]:
    """(True, "") when submissions can be sandboxed here (:func:`choose_sandbox` finds a mount namespace or
    the unprivileged ``user``), else (False, why not)."""
    work = Path(tempfile.mkdtemp(prefix="course-sandbox-"))
    try:
        ok, why_ns = _namespace_probe(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if ok:
        return True, ""
    ok, why_user = _user_probe(user)
    return ok, "" if ok else f"{why_ns}; {why_user}"


def _user_probe(user: str = "nobody") -> tuple[bool, str]:
    """Whether tests can run as ``user``: the grader is root, the user exists and can start this Python
    with pytest (an interpreter under a private home folder cannot be run by another user)."""
    import subprocess
    if os.geteuid() != 0:
        return False, "the grader is not root, so it cannot switch to an unprivileged user"
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False, f"no user {user!r} on this machine"
    probe = Limits(timeout_s=60, user=user)
    try:
        subprocess.run([sys.executable, "-c", "import pytest"], cwd="/", check=True, capture_output=True,
                       timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
                       preexec_fn=_preexec(probe, (entry.pw_uid, entry.pw_gid)))
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"user {user!r} cannot run {sys.executable} with pytest ({type(error).__name__}: {error})"
    return True, ""


def _preexec(limits: Limits, ids: tuple[int, int] | None, wall_s: float | None = None):
    cpu = int(wall_s or limits.timeout_s) + 5

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        if limits.memory_mb:
            size = limits.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
        size = limits.file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if ids is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.nproc, limits.nproc))
            os.setgroups([])
            os.setgid(ids[1])
            os.setuid(ids[0])
        os.umask(0o022)
    return apply


def _chown_tree(root: Path, ids: tuple[int, int]) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        os.chown(dirpath, *ids)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), *ids, follow_symlinks=False)


def _sandbox_env(ws: Path, support: Path) -> dict:
    home, tmp = ws / ".home", ws / ".tmp"
    home.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES")}
    return keep | {"HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": f"{support}{os.pathsep}{ws}",
                   "COURSE_SANDBOX_ROOT": str(ws), "COURSE_SANDBOX_LOG": str(ws / ".grader" / OUTSIDE_LOG),
                   "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
                   "MPLCONFIGDIR": str(tmp / "mpl"), "IPYTHONDIR": str(home / ".ipython"),
                   "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter"), "DIFFUSION_LIB_PROFILE": "smoke"}


_NOTEBOOK_RUNNER = '''"""Execute one notebook with papermill (the course grader's runner; runs inside the sandbox)."""
import json, sys
import papermill
src, dst, cwd, params, timeout = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), float(sys.argv[5])
try:
    papermill.execute_notebook(src, dst, parameters=params, cwd=cwd, kernel_name="python3", progress_bar=False,
                               allow_errors=True, execution_timeout=timeout, log_output=False)
except papermill.PapermillExecutionError:
    pass
'''


# ------------------------------------------------------------------------------------- notebooks

def _nb_cells(nb: dict) -> list[dict]:
    return [c for c in nb.get("cells", []) if isinstance(c, dict)]


def _meta(cell: dict) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def _is_autograde(cell: dict) -> bool:
    m = _meta(cell)
    return bool(m.get("grade")) and not m.get("solution") and cell.get("cell_type") == "code"


def merge_instructor_cells(student_nb: dict, source_nb: dict) -> tuple[dict, list[str]]:
    """The student's notebook with every locked or autograded cell replaced by the instructor's source
    cell of the same grade_id (hidden tests included); missing cells are appended. Returns notes."""
    notes = []
    source_cells = {(_meta(c).get("grade_id")): c for c in _nb_cells(source_nb) if _meta(c).get("grade_id")}
    seen = set()
    cells = []
    for cell in _nb_cells(student_nb):
        grade_id = _meta(cell).get("grade_id")
        if grade_id in source_cells and grade_id not in seen:
            src = source_cells[grade_id]
            if _is_autograde(src) or _meta(src).get("locked"):
                cell = json.loads(json.dumps(src))
                cell["outputs"] = [] if cell.get("cell_type") == "code" else cell.get("outputs")
                if cell.get("cell_type") != "code":
                    cell.pop("outputs", None)
            seen.add(grade_id)
        cells.append(cell)
    for grade_id, src in source_cells.items():
        if grade_id not in seen and _is_autograde(src):
            notes.append(f"cell {grade_id!r} was missing and has been restored")
            cell = json.loads(json.dumps(src))
            cell["outputs"] = []
            cells.append(cell)
    merged = dict(student_nb)
    merged["cells"] = cells
    return merged, notes


def _cell_errored(cell: dict) -> tuple[bool, str]:
    for output in cell.get("outputs", []) or []:
        if isinstance(output, dict) and output.get("output_type") == "error":
            return True, f"{output.get('ename', 'Error')}: {str(output.get('evalue', ''))[:300]}"
    if cell.get("execution_count") is None:
        return True, "not executed (an earlier error stopped the notebook, or the time limit)"
    return False, ""


# ------------------------------------------------------------------------------------- gradebook

def _gradebook_layout(course: Course, notebooks: dict[str, dict]) -> dict[str, list[tuple[str, float, str, bool]]]:
    """notebook -> [(cell name, max score, cell type, autograded)] in a fixed order."""
    layout = {LIBRARY_NOTEBOOK: [(f"task_{t.id}", t.auto_points, "code", True)
                                 for t in course.tasks if t.autograded]}
    for name in sorted(notebooks):
        cells = []
        for cell in _nb_cells(notebooks[name]):
            m = _meta(cell)
            if m.get("grade") and m.get("grade_id"):
                cells.append((m["grade_id"], float(m.get("points", 0) or 0), cell.get("cell_type", "code"),
                              _is_autograde(cell)))
        layout[name] = cells
    return layout


def write_gradebook(path: Path, assignment: str, layout, submissions: list[Submission]) -> None:
    try:
        from nbgrader.api import Gradebook, MissingEntry
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError("nbgrader is needed for the gradebook: pip install -r requirements.txt") from error
    if shutil.which("alembic") is None:  # nbgrader runs the `alembic` command on a new gradebook
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with Gradebook(f"sqlite:///{path}") as gb:
        gb.update_or_create_assignment(assignment)
        for notebook, cells in layout.items():
            gb.update_or_create_notebook(notebook, assignment)
            for name, max_score, cell_type, _ in cells:
                gb.update_or_create_grade_cell(name, notebook, assignment, max_score=max_score, cell_type=cell_type)
                if notebook == LIBRARY_NOTEBOOK:
                    gb.update_or_create_solution_cell(name, notebook, assignment)
        gb.update_or_create_task_cell(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, max_score=0.0, cell_type="markdown")
        for sub in submissions:
            gb.update_or_create_student(sub.student)
            try:
                gb.find_submission(assignment, sub.student)
                gb.remove_submission(assignment, sub.student)
            except MissingEntry:
                pass
            gb.add_submission(assignment, sub.student)
            for notebook, cells in layout.items():
                for name, _, _, autograded in cells:
                    grade = gb.find_grade(name, notebook, assignment, sub.student)
                    if notebook == LIBRARY_NOTEBOOK:
                        score = sub.task_scores.get(name[len("task_"):], 0.0)
                    else:
                        score = sub.cell_scores.get((notebook, name)) if sub.status == "graded" else 0.0
                    if autograded or sub.status != "graded":
                        grade.auto_score = float(score or 0.0)
                        grade.needs_manual_grade = False
            comment = gb.find_comment(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, sub.student)
            grade = gb.find_grade(STATUS_CELL, LIBRARY_NOTEBOOK, assignment, sub.student)
            comment.auto_comment = f"{sub.status}: {sub.note}" if sub.note else sub.status
            grade.auto_score, grade.needs_manual_grade = 0.0, False
            gb.db.commit()


# ------------------------------------------------------------------------------------- feedback

def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def _feedback(sub: Submission, course: Course, layout) -> str:
    lines = [f"# Feedback: {sub.student}", "", f"Status: **{sub.status}**" + (f" ({sub.note})" if sub.note else ""), ""]
    lines += ["## Autograded tasks", "", "| task | title | score | max |", "|---|---|---|---|"]
    for task in course.tasks:
        if task.autograded:
            lines.append(f"| {task.id} | {task.title} | {_fmt(sub.task_scores.get(task.id, 0.0))} | "
                         f"{_fmt(task.auto_points)} |")
    for task in course.tasks:
        notes = sub.task_feedback.get(task.id)
        if notes:
            lines += ["", f"### {task.id}: {task.title}", ""] + [f"- {n}" for n in notes]
    for notebook, cells in layout.items():
        if notebook == LIBRARY_NOTEBOOK or not cells:
            continue
        lines += ["", f"## Notebook {notebook}", ""]
        if sub.notebook_notes.get(notebook):
            lines += [f"{sub.notebook_notes[notebook]}", ""]
        lines += ["| cell | score | max | graded |", "|---|---|---|---|"]
        for name, max_score, _, autograded in cells:
            score = sub.cell_scores.get((notebook, name))
            lines.append(f"| {name} | {_fmt(score) if autograded else ''} | {_fmt(max_score)} | "
                         f"{'auto' if autograded else 'by hand'} |")
    if sub.annotation_lines:
        lines += ["", "## Annotations (# Start / # End regions)", "",
                  "| region | line | code | your annotation | reference annotation | credited |", "|---|---|---|---|---|---|"]
        for s in sub.annotation_lines:
            code = (s.student_code if s.student_code is not None else "(missing)").replace("|", "\\|")
            if not s.code_unchanged and s.student_code is not None:
                code += " (code changed)"
            mine, ref = (a.replace("|", "\\|") for a in (s.student_annotation, s.reference_annotation))
            lines.append(f"| {s.region} | {s.index + 1} | `{code}` | {mine} | {ref} | {'yes' if s.credited else 'no'} |")
    if sub.ignored:
        lines += ["", "## Files not used", ""] + [f"- {i}" for i in sub.ignored]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- grading

def _grade_tests(task, ws: Path, support: Path, env: dict, limits: Limits, sandbox: Sandbox) -> TestRun:
    report = ws / ".grader" / f"report-{task.id}.jsonl"
    report.parent.mkdir(exist_ok=True)
    report.write_text("")
    if sandbox.ids is not None:
        os.chown(report.parent, *sandbox.ids)
        os.chown(report, *sandbox.ids)
    return run_pytest(ws, list(task.tests), timeout_s=limits.timeout_s, env=env, report_path=report,
                      python=sandbox.python, preexec_fn=_preexec(limits, sandbox.ids))


def _run_in_sandbox(command: list[str], ws: Path, env: dict, limits: Limits, sandbox: Sandbox) -> tuple[bool, str]:
    """Run ``[python, *command]`` in the sandbox with the notebook time limit; (timed out, output tail)."""
    import subprocess
    from .check import _kill_group
    wall = limits.notebook_timeout_s
    process = subprocess.Popen([sandbox.python, *command], cwd=ws, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                               preexec_fn=_preexec(limits, sandbox.ids, wall))
    try:
        out, _ = process.communicate(timeout=wall)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
        out, _ = process.communicate()
    _kill_group(process)
    return timed_out, out.decode("utf-8", "replace")[-4000:]


def _grade_submission(sub: Submission, archive: Path, base: Path, work: Path, support: Path, course: Course,
                      reference, source_notebooks: dict[str, dict], limits: Limits, sandbox: Sandbox) -> None:
    extract_dir = work / "extract" / sub.student
    ws = work / "subs" / sub.student
    try:
        files = extract_archive(archive, extract_dir)
    except ValueError as error:
        sub.status, sub.note = "rejected", str(error)
        return
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as error:
        sub.status, sub.note = "rejected", f"the archive cannot be read ({type(error).__name__}: {error})"
        return
    shutil.copytree(base, ws, symlinks=True)
    manifest = {}
    if "MANIFEST.json" in files:
        try:
            manifest = json.loads((extract_dir / "MANIFEST.json").read_text(encoding="utf-8")).get("files", {})
        except (ValueError, OSError, AttributeError):
            sub.ignored.append("MANIFEST.json: unreadable")
    from .release import sha256_file
    for rel in sorted(files):
        if rel == "MANIFEST.json":
            continue
        if not accepted(rel, course):
            sub.ignored.append(f"{rel}: outside the hand-in folders or a protected file")
            continue
        if manifest and rel in manifest and manifest[rel] != sha256_file(extract_dir / rel):
            sub.ignored.append(f"{rel}: used, but its hash differs from MANIFEST.json")
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extract_dir / rel, ws / rel)
    ids = sandbox.ids
    (ws / ".grader").mkdir(exist_ok=True)
    if ids is not None:
        _chown_tree(ws, ids)
    env = _sandbox_env(ws, support)
    if ids is not None:
        _chown_tree(ws / ".home", ids)
        _chown_tree(ws / ".tmp", ids)

    timed_out_any = False
    for task in course.tasks:
        if not task.autograded:
            continue
        notes: list[str] = []
        score = 0.0
        if task.tests:
            run = _grade_tests(task, ws, support, env, limits, sandbox)
            timed_out_any |= run.timed_out
            if run.ok:
                score = task.auto_points
                notes.append(f"all {len(run.passed)} checks passed")
            else:
                notes.append(f"{run.status}: {len(run.passed)} passed, {len(run.failed)} failed")
                notes += [f"failed check `{nodeid}`: {message.splitlines()[0] if message else ''}"[:400]
                          for nodeid, message in run.failed[:20]]
        if task.annotation:
            keys = {k for k in reference if k.split("::", 1)[0] in task.files}
            scores = ann.score_annotations({k: reference[k] for k in keys}, ws)
            sub.annotation_lines += scores
            credited = sum(s.credited for s in scores)
            share = credited / len(scores) if scores else 0.0
            score = round(task.auto_points * share, 4) if not task.tests else (score if share == 1 else 0.0)
            notes.append(f"annotations: {credited}/{len(scores)} region lines annotated with unchanged code")
            changed = [s for s in scores if not s.code_unchanged]
            if changed:
                notes.append(f"{len(changed)} region lines have changed or missing code (not credited)")
        sub.task_scores[task.id] = round(score, 4)
        sub.task_feedback[task.id] = notes

    runner = support / "_course_nb_runner.py"
    for rel, source in sorted(source_notebooks.items()):
        name = Path(rel).stem
        student_path = ws / rel
        try:
            student_nb = json.loads(student_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            sub.notebook_notes[name] = "the notebook is missing or not valid JSON; its autograded cells score 0"
            for cell in _nb_cells(source):
                if _is_autograde(cell):
                    sub.cell_scores[(name, _meta(cell)["grade_id"])] = 0.0
            continue
        merged, notes = merge_instructor_cells(student_nb, source)
        grader_dir = ws / ".grader"
        grader_dir.mkdir(exist_ok=True)
        merged_path, executed_path = grader_dir / f"{name}.merged.ipynb", grader_dir / f"{name}.executed.ipynb"
        merged_path.write_text(json.dumps(merged), encoding="utf-8")
        if ids is not None:
            _chown_tree(grader_dir, ids)
        tagged = any("parameters" in c.get("metadata", {}).get("tags", []) for c in _nb_cells(merged))
        timed_out, output = _run_in_sandbox(
            [str(runner), str(merged_path), str(executed_path), str(student_path.parent),
             json.dumps({"PROFILE": "smoke"} if tagged else {}), str(limits.notebook_timeout_s)], ws, env, limits,
            sandbox)
        timed_out_any |= timed_out
        try:
            if executed_path.stat().st_size > 50 * 2**20:
                raise ValueError("executed notebook over 50 MB")
            executed = json.loads(executed_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            executed = {"cells": []}
            notes.append(f"the notebook did not run: {'time limit' if timed_out else output.strip()[-300:] or error}")
        by_id = {_meta(c).get("grade_id"): c for c in _nb_cells(executed) if _meta(c).get("grade_id")}
        for cell in _nb_cells(source):
            if not _is_autograde(cell):
                continue
            grade_id = _meta(cell)["grade_id"]
            run_cell = by_id.get(grade_id)
            failed, why = _cell_errored(run_cell) if run_cell else (True, "not executed")
            sub.cell_scores[(name, grade_id)] = 0.0 if failed else float(_meta(cell).get("points", 0) or 0)
            if failed:
                notes.append(f"cell `{grade_id}` failed: {why}")
        sub.notebook_notes[name] = "; ".join(notes)
    notes = ["time limit reached in some checks (those score 0)"] if timed_out_any else []
    attempts = _outside_attempts(ws / ".grader" / OUTSIDE_LOG)
    if attempts:
        outcome = {"namespace": "blocked: read-only sandbox", "user": f"blocked unless writable by {sandbox.ids}",
                   "none": "NOT sandboxed: it may have succeeded"}[sandbox.mode]
        notes.append(f"tried to change {len(attempts)} file(s) outside its folder ({outcome}): "
                     + "; ".join(attempts[:3]) + (" ..." if len(attempts) > 3 else ""))
    sub.note = "; ".join(notes)


def _outside_attempts(log: Path) -> list[str]:
    """The distinct "event path" lines the audit hook logged (a submission could erase its log: the sandbox,
    not this report, is the protection)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[:10000]
    except OSError:
        return []
    return list(dict.fromkeys(line.strip()[:300] for line in lines if line.strip()))


def grade(submissions_dir: str | Path, output_dir: str | Path, repo_root: str | Path = ".", *,
          timeout_s: float = 300.0, notebook_timeout_s: float = 600.0, memory_mb: int | None = 16384,
          jobs: int = 1, verbose: bool = True):
    """Grade every file in ``submissions_dir`` (see the module docstring); returns the grades table.

    Args:
        timeout_s: wall-time limit of one task's tests (a hanging task scores 0, the others still run).
        notebook_timeout_s: wall-time limit of one homework notebook's execution.
        memory_mb: address-space limit per process (None: none).
        jobs: submissions graded at once (each in its own copy and processes; results do not depend on it).

    Writes ``output_dir``/gradebook.db (nbgrader), grades.csv and feedback/<student>.md.
    """
    import pandas as pd

    repo_root = Path(repo_root).resolve()
    submissions_dir, output_dir = Path(submissions_dir).resolve(), Path(output_dir).resolve()
    if not submissions_dir.is_dir():
        raise FileNotFoundError(f"no submissions folder {submissions_dir}")
    course = load_course(repo_root)
    limits = Limits(timeout_s=timeout_s, notebook_timeout_s=notebook_timeout_s, memory_mb=memory_mb)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "feedback").mkdir(exist_ok=True)
    assignment = _sanitize(course.raw.get("assignment") or "coursework")

    work = Path(tempfile.mkdtemp(prefix="course-grade-"))
    try:
        os.chmod(work, 0o755)
        base = release(repo_root, work / "base", keep_hidden=True, verbose=False)
        support = work / "support"
        support.mkdir()
        sandbox = choose_sandbox(limits, work, verbose)
        if verbose:
            print(f"sandbox: {sandbox.description}", flush=True)
        write_plugin(support)
        (support / "sitecustomize.py").write_text(_AUDIT_HOOK, encoding="utf-8")
        (support / "_course_nb_runner.py").write_text(_NOTEBOOK_RUNNER, encoding="utf-8")
        for path in [work / "subs", work / "extract"]:
            path.mkdir()
            os.chmod(path, 0o755)
        os.chmod(support, 0o755)
        reference = ann.reference_annotations(repo_root, sorted(course.annotation_files))
        source_notebooks: dict[str, dict] = {}
        for path in sorted(repo_root.rglob("*.ipynb")):
            rel = path.relative_to(repo_root).as_posix()
            if (base / rel).is_file() and not any(p.startswith(".") for p in rel.split("/")):
                nb = json.loads(path.read_text(encoding="utf-8"))
                import nbformat
                if is_nbgrader_notebook(nbformat.from_dict(nb)):
                    source_notebooks[rel] = nb
        layout = _gradebook_layout(course, {Path(rel).stem: nb for rel, nb in source_notebooks.items()})

        submissions: list[Submission] = []
        seen: set[str] = set()
        todo = []
        for archive in sorted(p for p in submissions_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            sid, error = student_id(archive)
            if sid in seen:
                sid, error = _sanitize(archive.name), error or f"duplicate student id (archive {archive.name})"
            seen.add(sid)
            sub = Submission(sid, archive.name)
            if error:
                sub.status, sub.note = "rejected", error
            submissions.append(sub)
            todo.append((sub, archive))

        def one(item) -> Submission:
            sub, archive = item
            started = time.perf_counter()
            if sub.status == "graded":
                try:
                    _grade_submission(sub, archive, base, work, support, course, reference, source_notebooks,
                                      limits, sandbox)
                except Exception as error:  # noqa: BLE001 - one broken submission never stops the batch
                    sub.status, sub.note = "error", f"the grader failed on this submission: {type(error).__name__}: {error}"
                finally:
                    shutil.rmtree(work / "subs" / sub.student, ignore_errors=True)
                    shutil.rmtree(work / "extract" / sub.student, ignore_errors=True)
            if sub.status != "graded":
                sub.task_scores = {t.id: 0.0 for t in course.tasks if t.autograded}
                sub.cell_scores = {}
            (output_dir / "feedback" / f"{sub.student}.md").write_text(_feedback(sub, course, layout), encoding="utf-8")
            if verbose:
                total = sum(sub.task_scores.values()) + sum(v or 0 for v in sub.cell_scores.values())
                print(f"{sub.student}: {sub.status} {total:.2f} in {time.perf_counter() - started:.0f} s"
                      + (f" ({sub.note})" if sub.note else ""), flush=True)
            return sub

        if jobs > 1:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                list(pool.map(one, todo))
        else:
            for item in todo:
                one(item)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    write_gradebook(output_dir / "gradebook.db", assignment, layout, submissions)
    columns = ["student", "archive", "status"] + [f"task_{t.id}" for t in course.tasks if t.autograded]
    nb_columns = [(nb, name) for nb, cells in layout.items() if nb != LIBRARY_NOTEBOOK
                  for name, _, _, auto in cells if auto]
    columns += [f"{nb}:{name}" for nb, name in nb_columns] + ["auto_total", "auto_max", "note"]
    auto_max = (sum(t.auto_points for t in course.tasks if t.autograded)
                + sum(m for nb, cells in layout.items() if nb != LIBRARY_NOTEBOOK for _, m, _, a in cells if a))
    rows = []
    for sub in sorted(submissions, key=lambda s: s.student):
        row = {"student": sub.student, "archive": sub.archive, "status": sub.status}
        for t in course.tasks:
            if t.autograded:
                row[f"task_{t.id}"] = _fmt(sub.task_scores.get(t.id, 0.0))
        for nb, name in nb_columns:
            row[f"{nb}:{name}"] = _fmt(sub.cell_scores.get((nb, name), 0.0) or 0.0)
        row["auto_total"] = _fmt(sum(sub.task_scores.values()) + sum(v or 0 for v in sub.cell_scores.values()))
        row["auto_max"] = _fmt(auto_max)
        row["note"] = sub.note
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (output_dir / "grades.csv").write_text(buffer.getvalue(), encoding="utf-8")
    if verbose:
        print(f"graded {len(rows)} submissions -> {output_dir / 'grades.csv'}, {output_dir / 'gradebook.db'}")
    return pd.DataFrame(rows, columns=columns)
