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
CONTAINER_LABEL = "org.diffusion-lib.grading"
_PYTEST_DISTRIBUTIONS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments")


@dataclass
class Limits:
    """Limits of one sandboxed job: wall times in seconds, sizes in MB, ``cpus`` in cores."""

    timeout_s: float = 300.0
    notebook_timeout_s: float = 600.0
    memory_mb: int | None = 16384
    tmpfs_mb: int = 1024
    file_mb: int = 512
    pids: int = 256
    cpus: float = 1.0

    def __post_init__(self):
        for name in ("timeout_s", "notebook_timeout_s", "tmpfs_mb", "file_mb", "pids", "cpus"):
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
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return folder


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
        timed_out, tail = self._execute(json.dumps(full).encode(), work, support, out, limits, wall + 60)
        try:
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

    def _popen(self, command: list[str], payload: bytes, wall: float, kill, env=None,
               preexec=None) -> tuple[bool, str]:
        """Run ``command`` with ``payload`` on stdin, ``kill(process)`` at the wall-time limit ``wall``
        (seconds). Returns (whether the limit was reached, the last 2000 characters of its output)."""
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=log, env=env,
                                       start_new_session=True, preexec_fn=preexec)
            with self._lock:
                self._running.add((process, kill))
                if self.stopped:
                    kill(process)
            timed_out = False
            try:
                process.communicate(payload, timeout=wall)
            except subprocess.TimeoutExpired:
                kill(process)
                process.wait(timeout=60)
                timed_out = True
            finally:
                with self._lock:
                    self._running.discard((process, kill))
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 2000))
            return timed_out, log.read().decode("utf-8", "replace")

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

    def _execute(self, payload, work, support, out, limits, wall) -> tuple[bool, str]:
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
        try:
            return self._popen(command, payload, wall, kill)
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


def _python_binds(python: str) -> list[str]:
    """Read-only binds of the grading Python: its environment (venv) and the interpreter it links to."""
    prefixes = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(os.path.abspath(python))),
                os.path.dirname(os.path.dirname(os.path.realpath(python)))}
    args = []
    for prefix in sorted(p for p in prefixes if p and not p.startswith("/usr")):
        args += ["--ro-bind", prefix, prefix]
    return args


class BwrapSandbox(Sandbox):
    """bubblewrap: ``--unshare-all --uid 65534 --gid 65534 --die-with-parent --new-session --cap-drop ALL``,
    only /usr, the grading Python and the job's folders bound (read-only except the output folder), private
    /dev, /proc, /tmp and /dev/shm. Limits are rlimits (address space, file size, CPU) and the wall time;
    there is no cgroup, so the number of processes is bounded only by the host's limits."""

    name = "bwrap"

    def __init__(self, python: str = sys.executable, bwrap: str = "bwrap"):
        super().__init__()
        self.python, self.bwrap = python, bwrap
        self.description = "bubblewrap (all namespaces unshared, no network, uid 65534, read-only binds)"

    def command(self, work: Path, support: Path, out: Path, limits: Limits, argv: list[str]) -> list[str]:
        """The bwrap command line that runs ``argv`` with the job's folders bound."""
        return [self.bwrap, "--unshare-all", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
                *_bwrap_system_binds(), "--dev", "/dev", "--proc", "/proc",
                # the private /tmp before the Python binds: a grading venv under /tmp stays visible
                "--size", str(limits.tmpfs_mb * 1024 * 1024), "--tmpfs", "/tmp",
                "--size", str(64 * 1024 * 1024), "--tmpfs", "/dev/shm", *_python_binds(self.python),
                "--ro-bind", str(work), "/grader/work", "--ro-bind", str(support), "/grader/support",
                "--bind", str(out), "/grader/out", "--chdir", "/tmp",
                "--clearenv", "--setenv", "PATH", f"{os.path.dirname(self.python)}:/usr/bin:/bin",
                "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8", *argv]

    def _execute(self, payload, work, support, out, limits, wall) -> tuple[bool, str]:
        import resource

        command = self.command(work, support, out, limits, [self.python, "-I", "/grader/support/sandbox_runner.py"])

        def preexec():
            if limits.memory_mb:
                size = limits.memory_mb * 1024 * 1024
                resource.setrlimit(resource.RLIMIT_AS, (size, size))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        return self._popen(command, payload, wall, _killpg, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                           preexec=preexec)


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

    def _execute(self, payload, work, support, out, limits, wall) -> tuple[bool, str]:
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
    with tempfile.TemporaryDirectory(prefix="course-bwrap-probe-") as tmp:
        folders = [Path(tmp) / n for n in ("work", "support", "out")]
        for folder in folders:
            folder.mkdir()
        command = box.command(*folders, Limits(), [python, "-I", "-c", "import pytest, sys; sys.exit(0)"])
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as error:
            return False, f"bwrap failed ({type(error).__name__}: {error})"
        if run.returncode != 0:
            return False, f"bwrap cannot start {python}: {(run.stderr or run.stdout).strip()[-300:]}"
    return True, ""


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
