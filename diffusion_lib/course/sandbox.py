"""Sandbox adapters of ``course grade``: run one job of one submission in an existing isolation engine.

Engines, strongest first: ``docker`` (a throw-away container of the course's student image: no network,
read-only root file system, uid 65534 without capabilities, no-new-privileges, memory, swap, pids and
CPU limits from cgroups, a bounded tmpfs for scratch), ``bwrap`` (bubblewrap: every namespace unshared,
network included, uid 65534, only the system's /usr, the grading Python and the job's folders bound
read-only, private /dev, /proc and /tmp, rlimits), and ``unsafe`` (no isolation at all: refused unless
the instructor asks for it). The order of one run matters:

1. the host writes the job's working copy, a support folder (the runner, the report plugin, the grader's
   own pytest) and an empty output folder, none of which the sandbox can change except the last;
2. the job (with a fresh nonce) goes to the runner's standard input; the engine runs it with a wall-time
   limit, after which the container is killed (``docker kill``) or bubblewrap's process group is;
3. only after the sandbox is gone does the host open ``result.json``, with ``O_NOFOLLOW``, as a regular
   file with one link, size-bounded, parsed strictly and checked for the nonce.

The sandbox never sees the instructor repository, other submissions or the grader's output folder.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

SANDBOX_KINDS = ("docker", "bwrap", "auto")
DEFAULT_IMAGE = "diffusion-lib-student"
IMAGE_PYTHON = "/opt/python/bin/python"
SANDBOX_UID = 65534
MAX_RESULT_BYTES = 8 * 1024 * 1024
MONITOR_S = 0.25
HOST_UID_BASE = 2_100_000_000  # bubblewrap run by root: each sandbox as its own unused host uid from here
HOST_UIDS_PER_GRADER = 64
CONTAINER_LABEL = "org.diffusion-lib.grading"
_PYTEST_DISTRIBUTIONS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments")


@dataclass
class Limits:
    """Limits of one sandboxed job: wall times in seconds, sizes in MB, ``cpus`` in cores; ``pids`` is the
    number of processes and threads, ``output_mb`` the most the job may write into its output folder (a
    larger output is refused, never read)."""

    timeout_s: float = 300.0
    notebook_timeout_s: float = 600.0
    memory_mb: int | None = 16384
    tmpfs_mb: int = 1024
    file_mb: int = 512
    pids: int = 256
    cpus: float = 1.0
    output_mb: int = 16

    def __post_init__(self):
        for name in ("timeout_s", "notebook_timeout_s", "tmpfs_mb", "file_mb", "pids", "cpus", "output_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limit {name}={value!r}: must be a positive number")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise ValueError(f"limit memory_mb={self.memory_mb!r}: must be a positive number of MB or None")


class SandboxError(RuntimeError):
    """No result came back from the sandbox. The message is safe to show the student; ``detail`` (the
    tail of the engine's output) is for the grader's own log only."""

    detail = ""


def write_support(folder: Path, bundle_pytest: bool = True) -> Path:
    """Fill ``folder`` with what every sandboxed run reads: the runner, the report plugin (as
    ``_course_test_report``), the audit hook (as ``sitecustomize``) and, when ``bundle_pytest``, the
    grader's own pytest and its pure-Python dependencies under ``site/`` (the student image need not
    carry pytest, and a submission cannot bring its own)."""
    from importlib import metadata

    here = Path(__file__).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(here / "sandbox_runner.py", folder / "sandbox_runner.py")
    shutil.copyfile(here / "pytest_report.py", folder / "_course_test_report.py")
    shutil.copyfile(here / "sandbox_audit.py", folder / "sitecustomize.py")
    shutil.copyfile(here / "probe.py", folder / "_course_probe.py")
    site = folder / "site"
    site.mkdir(exist_ok=True)
    if bundle_pytest:
        for name in _PYTEST_DISTRIBUTIONS:
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            tops = {str(f).split("/")[0] for f in dist.files or ()
                    if not str(f).split("/")[0].endswith((".dist-info", ".egg-info")) and ".." not in str(f)}
            for top in tops:
                source = Path(dist.locate_file(top))
                if source.is_dir() and not (site / top).exists():
                    shutil.copytree(source, site / top, ignore=shutil.ignore_patterns("__pycache__"))
                elif source.is_file() and source.suffix == ".py":
                    shutil.copyfile(source, site / top)
    compile_tree(folder)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return folder


def compile_tree(folder: Path) -> None:
    """Byte-compile the host-made ``.py`` files under ``folder`` into ``__pycache__`` as checked-hash pycs.

    Every sandboxed process runs with PYTHONDONTWRITEBYTECODE in a fresh copy, so without these each one
    compiled pytest and the library from source again (about 2 s per task on the 2-core machine, see
    docs/benchmarks.md). A checked-hash pyc is used only while the source's hash matches it: a file the
    submission replaced is compiled from its own source, never from the release's bytecode. (Submitted
    ``__pycache__`` folders and ``.pyc`` files are refused at intake.)"""
    import compileall
    import py_compile

    compileall.compile_dir(str(folder), quiet=2, workers=1,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)


def read_result(out_dir: Path, nonce: str) -> dict:
    """The runner's ``result.json`` in ``out_dir``: opened without following links, a regular file with one
    link and at most MAX_RESULT_BYTES, strict JSON (no NaN), an object whose nonce is ``nonce``.

    Raises:
        SandboxError: missing, not a plain file, too large, not JSON, or a wrong nonce (a forgery).
    """
    try:
        fd = os.open(out_dir / "result.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        raise SandboxError(f"no result came back from the sandbox ({error.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise SandboxError("the sandbox's result is not a plain file")
        if info.st_size > MAX_RESULT_BYTES:
            raise SandboxError(f"the sandbox's result is over {MAX_RESULT_BYTES // 2**20} MB")
        data = os.read(fd, MAX_RESULT_BYTES + 1)
    finally:
        os.close(fd)

    def no_constants(name):
        raise ValueError(f"{name} is not allowed")
    try:
        result = json.loads(data.decode("utf-8"), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError):
        raise SandboxError("the sandbox's result is not valid JSON") from None
    if not isinstance(result, dict) or not isinstance(result.get("nonce"), str):
        raise SandboxError("the sandbox's result is malformed")
    if not hmac.compare_digest(result["nonce"], nonce):
        raise SandboxError("the sandbox's result was not written by the grader's runner (forged)")
    return result


def tree_bytes(folder: Path, cap: int) -> int:
    """Bytes in the files under ``folder`` (links not followed, each entry counted at least 512 bytes),
    counting stops just past ``cap``: the host sizes an output folder without reading it."""
    total = 0
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            try:
                total += max(512, os.lstat(os.path.join(root, name)).st_size)
            except OSError:
                continue
            if total > cap:
                return total
    return total


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants now (from /proc; a host-wide pid namespace view): through each
    thread's ``children`` list where the kernel has it (touching only the tree), else a scan of /proc."""
    tree, todo = [], [pid]
    try:
        while todo:
            current = todo.pop()
            tree.append(current)
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", "rb") as handle:
                    todo += [int(child) for child in handle.read().split()]
        return tree
    except FileNotFoundError:
        if not os.path.exists(f"/proc/{pid}/task/{pid}/children") and os.path.exists(f"/proc/{pid}"):
            return _process_tree_scan(pid)
        return tree  # a process ended while the tree was read: the rest is counted at the next look
    except (OSError, ValueError):
        return tree


def _process_tree_scan(pid: int) -> list[int]:
    """:func:`_process_tree` by reading every process's parent from /proc (kernels without ``children``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat_line = handle.read()
        except OSError:
            continue
        fields = stat_line[stat_line.rfind(b")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def _resident_bytes(pids: list[int]) -> int:
    """The summed resident memory (RSS) of ``pids`` in bytes (ended processes count 0)."""
    page, total = os.sysconf("SC_PAGE_SIZE"), 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def _uid_processes(uid: int) -> list[int]:
    """The pids whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status", "rb") as handle:
                    line = next(l for l in handle if l.startswith(b"Uid:"))
            except (OSError, StopIteration):
                continue
            if int(line.split()[1]) == uid:
                found.append(int(entry))
    return found


def reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can pass through every folder from / down to ``path`` (o+x)."""
    path = Path(path).resolve()
    for folder in [path, *path.parents]:
        try:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class Sandbox:
    """One isolation engine. ``run(job, work, support, limits)`` runs a job and returns its result dict."""

    name = "base"
    pid_namespace = True
    description = ""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: set = set()
        self.stopped = False

    def run(self, job: dict, work: Path, support: Path, scratch: Path, limits: Limits) -> dict:
        """Run ``job`` (kind, targets, ...) on the working copy ``work``; ``scratch`` is a host folder for
        this job's output folder. Returns the parsed result; raises SandboxError when none came back (or
        after :meth:`stop_all`)."""
        if self.stopped:
            raise SandboxError("grading was stopped")
        out = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
        self._prepare_out(out)
        nonce = secrets.token_hex(16)
        wall = float(job.get("timeout_s", limits.timeout_s))
        full = dict(job, nonce=nonce, pid_namespace=self.pid_namespace,
                    limits={"as_mb": None if self.name == "docker" else limits.memory_mb,
                            "fsize_mb": limits.file_mb, "cpu_s": int(wall) + 30})
        full.update(self._paths(work, support, out))
        try:
            timed_out, tail, stopped = self._execute(json.dumps(full).encode(), work, support, out, limits, wall + 60)
            try:
                if stopped:
                    raise SandboxError(f"the sandbox was stopped: {stopped}")
                if tree_bytes(out, limits.output_mb * 2**20) > limits.output_mb * 2**20:
                    raise SandboxError(f"the sandbox wrote more than {limits.output_mb} MB into its output folder; "
                                       f"its result is refused, not read")
                return read_result(out, nonce)
            except SandboxError as error:
                if timed_out:
                    error = SandboxError(f"the sandbox was stopped at its time limit ({wall:g} s)")
                error.detail = tail
                raise error from None
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def _prepare_out(self, out: Path) -> None:
        os.chmod(out, 0o700)

    def _paths(self, work: Path, support: Path, out: Path) -> dict:
        return {"work": "/grader/work", "support": "/grader/support", "out": "/grader/out", "scratch": "/tmp"}

    def _popen(self, command: list[str], payload: bytes, wall: float, kill, env=None, preexec=None,
               monitor=None) -> tuple[bool, str, str]:
        """Run ``command`` with ``payload`` on stdin, ``kill(process)`` at the wall-time limit ``wall``
        (seconds) or as soon as ``monitor(process)`` (called every MONITOR_S) names a limit it broke.
        Returns (whether the wall time was reached, the last 2000 characters of its output, the monitor's
        reason or "")."""
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=log, env=env,
                                       start_new_session=True, preexec_fn=preexec)
            with self._lock:
                self._running.add((process, kill))
                if self.stopped:
                    kill(process)
            broke: list[str] = []
            done = threading.Event()

            def watch():
                while not done.wait(MONITOR_S):
                    try:
                        why = monitor(process)
                    except OSError:
                        why = None
                    if why:
                        broke.append(why)
                        kill(process)
                        return
            watcher = threading.Thread(target=watch, daemon=True) if monitor else None
            if watcher:
                watcher.start()
            timed_out = False
            try:
                process.communicate(payload, timeout=wall)
            except subprocess.TimeoutExpired:
                kill(process)
                process.wait(timeout=60)
                timed_out = True
            except BaseException:  # SIGINT/SIGTERM of the grader while it waits: the job dies with it
                kill(process)
                process.wait(timeout=60)
                raise
            finally:
                done.set()
                if watcher:
                    watcher.join()
                with self._lock:
                    self._running.discard((process, kill))
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 2000))
            return timed_out, log.read().decode("utf-8", "replace"), (broke[0] if broke else "")

    def stop_all(self) -> None:
        """Kill every job still running and refuse new ones (on SIGINT/SIGTERM of the grader)."""
        with self._lock:
            self.stopped = True
            running = list(self._running)
        for process, kill in running:
            kill(process)


def _killpg(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class DockerSandbox(Sandbox):
    """A container per job: ``docker run --rm --network none --read-only --user 65534:65534 --cap-drop ALL
    --security-opt no-new-privileges --memory --memory-swap --pids-limit --cpus --tmpfs /tmp`` of ``image``."""

    name = "docker"

    def __init__(self, image: str = DEFAULT_IMAGE, python: str = IMAGE_PYTHON, docker: str = "docker"):
        super().__init__()
        self.image, self.python, self.docker = image, python, docker
        self.description = f"docker container of {image} (no network, read-only, uid {SANDBOX_UID}, cgroup limits)"

    def _prepare_out(self, out: Path) -> None:
        os.chown(out, SANDBOX_UID, SANDBOX_UID)
        os.chmod(out, 0o700)

    def _execute(self, payload, work, support, out, limits, wall) -> tuple[bool, str, str]:
        name = "course-grade-" + secrets.token_hex(8)
        memory = [f"--memory={limits.memory_mb}m", f"--memory-swap={limits.memory_mb}m"] if limits.memory_mb else []
        command = [self.docker, "run", "--rm", "-i", "--name", name, "--label", f"{CONTAINER_LABEL}=1",
                   "--network", "none", "--read-only", "--user", f"{SANDBOX_UID}:{SANDBOX_UID}",
                   "--cap-drop", "ALL", "--security-opt", "no-new-privileges", *memory,
                   f"--pids-limit={limits.pids}", f"--cpus={limits.cpus:g}",
                   "--tmpfs", f"/tmp:rw,size={limits.tmpfs_mb}m,nosuid,nodev,mode=1777", "--shm-size=64m",
                   "--ulimit", "core=0", "-v", f"{work}:/grader/work:ro", "-v", f"{support}:/grader/support:ro",
                   "-v", f"{out}:/grader/out:rw", "-w", "/tmp", "-e", "HOME=/tmp", "--entrypoint", self.python,
                   self.image, "-I", "/grader/support/sandbox_runner.py"]

        def kill(process):
            subprocess.run([self.docker, "kill", name], capture_output=True, timeout=60)
            _killpg(process)
        quota = limits.output_mb * 2**20

        def output(process) -> str | None:  # memory, pids and scratch are the cgroup's; the output is a host folder
            return f"it wrote more than {limits.output_mb} MB into its output folder" if tree_bytes(out, quota) > quota else None
        try:
            return self._popen(command, payload, wall, kill, monitor=output)
        finally:
            subprocess.run([self.docker, "rm", "-f", name], capture_output=True, timeout=60)


def _bwrap_system_binds() -> list[str]:
    """Read-only binds of the system folders a Python needs (/usr, and /bin, /lib* as links or binds)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


_STAGE: dict = {"root": None, "trees": {}}
_STAGE_LOCK = threading.Lock()


def _link_tree(source: str, target: str) -> None:
    """``target`` as a tree of hard links to ``source``'s files (copies across file systems), folders
    0755, links kept as links."""
    for root, dirs, files in os.walk(source):
        rel = os.path.relpath(root, source)
        here = os.path.join(target, rel) if rel != "." else target
        os.makedirs(here, mode=0o755, exist_ok=True)
        os.chmod(here, 0o755)
        for name in dirs + files:
            src, dst = os.path.join(root, name), os.path.join(here, name)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
            elif name in files:
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]


def staged_prefix(prefix: str) -> str:
    """``prefix`` itself when other users can reach it, else a tree of hard links to it in a folder they
    can reach (made once per process, removed at exit): bubblewrap, started as an unprivileged host uid,
    must resolve the paths it binds (a pyenv Python under /root, for example)."""
    if reachable_by_others(Path(prefix)):
        return prefix
    import atexit

    with _STAGE_LOCK:
        if prefix not in _STAGE["trees"]:
            if _STAGE["root"] is None:
                _STAGE["root"] = tempfile.mkdtemp(prefix="course-python-", dir=sandbox_tempdir())
                os.chmod(_STAGE["root"], 0o711)
                atexit.register(shutil.rmtree, _STAGE["root"], True)
            target = os.path.join(_STAGE["root"], secrets.token_hex(8))
            _link_tree(prefix, target)
            _STAGE["trees"][prefix] = target
        return _STAGE["trees"][prefix]


def clear_staging() -> None:
    """Remove the hard-link trees :func:`staged_prefix` made (the end of a grade run or of a probe)."""
    with _STAGE_LOCK:
        if _STAGE["root"] is not None:
            shutil.rmtree(_STAGE["root"], ignore_errors=True)
        _STAGE["root"], _STAGE["trees"] = None, {}


def _python_binds(python: str, staged: bool = False) -> list[str]:
    """Read-only binds of the grading Python: its environment (venv) and the interpreter it links to
    (from a reachable tree of hard links when ``staged`` and the prefix is not reachable by others)."""
    prefixes = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(python))),
                os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    args = []
    for prefix in sorted(p for p in prefixes if p and not p.startswith("/usr")):
        args += ["--ro-bind", staged_prefix(prefix) if staged else prefix, prefix]
    return args


class _UidPool:
    """Host uids for concurrent sandboxes of this grader: one per running sandbox, given back only when
    no process of it is left."""

    def __init__(self, base: int, size: int):
        self._free, self._lock = list(range(base, base + size)), threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise SandboxError("too many sandboxes at once (no free host uid)")
            return self._free.pop(0)

    def release(self, uid: int) -> None:
        for _ in range(100):  # the namespace's processes die with its init, a moment after bubblewrap
            if not _uid_processes(uid):
                break
            import time
            time.sleep(0.05)
        else:
            return  # still in use: never handed to another sandbox
        with self._lock:
            self._free.append(uid)


_HOST_UIDS = _UidPool(HOST_UID_BASE + (os.getpid() % 4096) * HOST_UIDS_PER_GRADER, HOST_UIDS_PER_GRADER)


class BwrapSandbox(Sandbox):
    """bubblewrap: ``--unshare-all --uid 65534 --gid 65534 --die-with-parent --new-session --cap-drop ALL``,
    only /usr, the grading Python and the job's folders bound (read-only except the output folder), private
    /dev, /proc, a /tmp tmpfs of ``tmpfs_mb`` and a 64 MB /dev/shm.

    Limits without cgroups: when the grader is root, bubblewrap itself starts as an unused host uid of its
    own (from HOST_UID_BASE; the kernel exempts uid 0 from RLIMIT_NPROC, and a sandbox escape then lands
    on an account that owns nothing), so RLIMIT_NPROC = ``pids`` bounds the sandbox's processes and
    threads; otherwise the limit is ``pids`` above what the grader's user already runs. RLIMIT_AS bounds
    each process's memory, RLIMIT_FSIZE each file; the host watches the sandbox every MONITOR_S seconds
    and kills it when its processes' resident memory together passes ``memory_mb`` or its output folder
    passes ``output_mb``, and at the wall time (bubblewrap's death ends its PID namespace)."""

    name = "bwrap"

    def __init__(self, python: str = sys.executable, bwrap: str = "bwrap", host_uids: bool | None = None):
        super().__init__()
        self.python, self.bwrap = python, bwrap
        self.host_uids = os.geteuid() == 0 if host_uids is None else host_uids
        self.description = ("bubblewrap (all namespaces unshared, no network, uid 65534, read-only binds, "
                            + ("an unused host uid per sandbox, " if self.host_uids else "")
                            + "process, memory and output limits without cgroups)")

    def command(self, work: Path, support: Path, out: Path, limits: Limits, argv: list[str]) -> list[str]:
        """The bwrap command line that runs ``argv`` with the job's folders bound."""
        return [self.bwrap, "--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
                *_bwrap_system_binds(), "--dev", "/dev", "--proc", "/proc",
                # the private /tmp before the Python binds: a grading venv under /tmp stays visible
                "--size", str(limits.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
                "--size", str(64 * 1024 * 1024), "--tmpfs", "/dev/shm", *_python_binds(self.python, self.host_uids),
                "--ro-bind", str(work), "/grader/work", "--ro-bind", str(support), "/grader/support",
                "--bind", str(out), "/grader/out", "--chdir", "/tmp",
                "--clearenv", "--setenv", "PATH", f"{os.path.dirname(self.python)}:/usr/bin:/bin",
                "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8", *argv]

    def preexec(self, limits: Limits, uid: int | None):
        """The function run in the child before bubblewrap starts: rlimits, then the host uid (if any)."""
        import resource

        nproc = limits.pids if uid is not None else limits.pids + len(_uid_processes(os.getuid()))

        def apply():
            if limits.memory_mb:
                size = limits.memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (size, size))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
        return apply

    def monitor(self, limits: Limits, out: Path):
        """``check(process)``: the limit the sandbox under ``process`` broke (total memory, output size), or None."""
        quota = limits.output_mb * 2**20

        def check(process) -> str | None:
            if limits.memory_mb and _resident_bytes(_process_tree(process.pid)) > limits.memory_mb * 2**20:
                return f"its processes used more than {limits.memory_mb} MB of memory together"
            if tree_bytes(out, quota) > quota:
                return f"it wrote more than {limits.output_mb} MB into its output folder"
            return None
        return check

    def _execute(self, payload, work, support, out, limits, wall) -> tuple[bool, str, str]:
        uid = _HOST_UIDS.acquire() if self.host_uids else None
        try:
            if uid is not None:
                os.chown(out, uid, uid)
            command = self.command(work, support, out, limits,
                                   [self.python, "-I", "/grader/support/sandbox_runner.py"])
            return self._popen(command, payload, wall, _killpg, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                               preexec=self.preexec(limits, uid), monitor=self.monitor(limits, out))
        finally:
            if uid is not None:
                _HOST_UIDS.release(uid)


class UnsafeSandbox(Sandbox):
    """No isolation: the runner starts as the grader's own user on the host (only with ``--unsafe``)."""

    name = "unsafe"
    pid_namespace = False
    description = "NOT sandboxed (--unsafe): submissions run as this user and can change anything it can"

    def __init__(self, python: str = sys.executable):
        super().__init__()
        self.python = python

    def _paths(self, work, support, out) -> dict:
        scratch = tempfile.mkdtemp(prefix="course-unsafe-")
        return {"work": str(work), "support": str(support), "out": str(out), "scratch": scratch}

    def _execute(self, payload, work, support, out, limits, wall) -> tuple[bool, str, str]:
        scratch = json.loads(payload)["scratch"]
        try:
            return self._popen([self.python, "-I", str(support / "sandbox_runner.py")], payload, wall, _killpg)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def docker_available(image: str, docker: str = "docker") -> tuple[bool, str]:
    """(True, "") when a Docker engine answers and holds ``image``; else (False, why not)."""
    if shutil.which(docker) is None:
        return False, "no `docker` command"
    try:
        info = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as error:
        return False, f"docker did not answer ({type(error).__name__})"
    if info.returncode != 0:
        why = (info.stderr.strip().splitlines() or ["no answer"])[-1][:200]
        return False, f"no image {image!r} on the Docker engine ({why})"
    return True, ""


def bwrap_available(python: str = sys.executable, bwrap: str = "bwrap") -> tuple[bool, str]:
    """(True, "") when bubblewrap runs ``python`` here with no network; else (False, why not)."""
    if shutil.which(bwrap) is None:
        return False, "no `bwrap` command (Debian package bubblewrap)"
    box = BwrapSandbox(python, bwrap)
    staged_before = _STAGE["root"] is not None
    with tempfile.TemporaryDirectory(prefix="course-bwrap-probe-", dir=sandbox_tempdir()) as tmp:
        os.chmod(tmp, 0o711)
        folders = [Path(tmp) / n for n in ("work", "support", "out")]
        for folder in folders:
            folder.mkdir(mode=0o755)
        command = box.command(*folders, Limits(), [python, "-I", "-c", "import pytest, sys; sys.exit(0)"])
        uid = _HOST_UIDS.acquire() if box.host_uids else None
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                 preexec_fn=box.preexec(Limits(), uid))
        except (OSError, subprocess.SubprocessError) as error:
            return False, f"bwrap failed ({type(error).__name__}: {error})"
        finally:
            if uid is not None:
                _HOST_UIDS.release(uid)
            if not staged_before:
                clear_staging()
        if run.returncode != 0:
            hint = (" (bubblewrap runs as an unprivileged host uid: the grading Python and its folders must be "
                    "readable by other users)" if box.host_uids else "")
            return False, f"bwrap cannot start {python}{hint}: {(run.stderr or run.stdout).strip()[-300:]}"
    return True, ""


def sandbox_tempdir() -> str:
    """Where the grader keeps the folders a sandbox binds: the temporary folder when other users can pass
    through it (bubblewrap may run as an unprivileged host uid), else the first of /tmp, /var/tmp, /dev/shm
    that they can."""
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        if os.path.isdir(candidate) and reachable_by_others(Path(candidate)):
            return candidate
    return tempfile.gettempdir()


def choose_sandbox(kind: str = "auto", image: str = DEFAULT_IMAGE, unsafe: bool = False) -> Sandbox:
    """The sandbox for a grade run: ``kind`` "docker", "bwrap" or "auto" (docker with ``image`` when the
    engine holds it, else bubblewrap). With none available, an UnsafeSandbox when ``unsafe``.

    Raises:
        ValueError: ``kind`` is not one of SANDBOX_KINDS.
        RuntimeError: no sandbox is available and ``unsafe`` is false (the message says what is missing
            and what --unsafe would mean).
    """
    if kind not in SANDBOX_KINDS:
        raise ValueError(f"sandbox {kind!r}: accepted {', '.join(SANDBOX_KINDS)}")
    reasons = []
    if kind in ("docker", "auto"):
        ok, why = docker_available(image)
        if ok:
            return DockerSandbox(image)
        reasons.append(f"docker: {why}")
    if kind in ("bwrap", "auto"):
        ok, why = bwrap_available()
        if ok:
            return BwrapSandbox()
        reasons.append(f"bwrap: {why}")
    if unsafe:
        return UnsafeSandbox()
    raise RuntimeError("no sandbox for the submissions (" + "; ".join(reasons) + "). Start a Docker engine with "
                       f"the student image (--image, default {DEFAULT_IMAGE}) or install bubblewrap. --unsafe "
                       "grades anyway with NO isolation: every submission's code runs as you, with your files, "
                       "your network and the instructor repository within its reach.")
