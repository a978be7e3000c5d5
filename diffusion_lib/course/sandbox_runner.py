"""The grader's runner inside the sandbox: run one task's tests or one notebook, write one result file.

Started by the host as ``python -I sandbox_runner.py`` inside a container or bubblewrap (see
:mod:`diffusion_lib.course.sandbox`); standard library only (papermill only for notebooks), so it runs
on the student image's Python. The order matters:

1. the job (one JSON object) is read from standard input before anything of the submission runs;
   it carries a nonce the host made for this run;
2. this process makes itself non-dumpable (``PR_SET_DUMPABLE`` 0), so the submission's processes,
   which run as the same user, can neither read its memory (the nonce) nor open its file descriptors
   through ``/proc``;
3. the read-only working copy is copied to scratch (a tmpfs in the sandbox) and the submission's code
   runs there, in its own process group, under rlimits and a wall-time limit;
4. every process left in the sandbox is killed (``kill(-1)``, only where the sandbox has its own PID
   namespace), and only then is ``result.json`` written to the output folder with the nonce in it.

A result without the right nonce is rejected by the host, so a forged result file scores nothing. What
the submission's own process reports (pytest's outcomes, a notebook's errors) is data the host judges
against what it expects; it is not trusted to be honest (see ``judge.py``).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import time

MAX_JOB_BYTES = 1 << 20
MAX_RECORDS = 5000
MAX_MESSAGE = 2000
MAX_TAIL = 2000
MAX_PROBE_BYTES = 2 << 20  # the raw data a probe or the tests (COURSE_DATA_FD) hand to the host
PLUGIN_MODULE = "_course_test_report"


def _non_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): no ptrace, no /proc/<pid>/mem or fd/ for the same user."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _limits(job: dict):
    """A preexec function applying the job's rlimits (address space, file size, CPU, no core files)."""
    limits = job.get("limits", {})

    def apply() -> None:
        if limits.get("as_mb"):
            size = int(limits["as_mb"]) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
        size = int(limits.get("fsize_mb", 512)) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        cpu = int(limits.get("cpu_s", 600))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.umask(0o077)
    return apply


def _environment(job: dict, work: str, scratch: str) -> dict:
    """The environment of the submission's processes: scratch HOME and TMPDIR, the support folder first."""
    home, tmp = os.path.join(scratch, "home"), os.path.join(scratch, "tmp")
    for path in (home, tmp):
        os.makedirs(path, exist_ok=True)
    support = job["support"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": home, "TMPDIR": tmp,
           "PYTHONPATH": os.pathsep.join([support, os.path.join(support, "site"), work]),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": os.path.join(tmp, "mpl"),
           "IPYTHONDIR": os.path.join(home, ".ipython"), "JUPYTER_RUNTIME_DIR": os.path.join(tmp, "jupyter"),
           "DIFFUSION_LIB_PROFILE": "smoke", "HF_HUB_OFFLINE": "1",
           "COURSE_SANDBOX_ROOT": work, "COURSE_SANDBOX_SCRATCH": scratch,
           "COURSE_SANDBOX_LOG": os.path.join(tmp, "outside-writes.log")}
    env.update({str(k): str(v) for k, v in job.get("env", {}).items()})
    return env


def _kill_rest(job: dict, group: int | None) -> None:
    """Kill what the submission left running: its process group, and everything else where the sandbox
    has its own PID namespace (``kill(-1)`` there cannot reach the host)."""
    if group is not None:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if job.get("pid_namespace"):
        try:
            os.kill(-1, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    while True:  # reap (as PID 1 of a container this process inherits every orphan)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def _read_records(fd: int, key: bytes) -> tuple[list[dict], int]:
    """The report plugin's signed JSON lines from ``fd`` (bounded), each reduced to known keys with
    bounded strings; returns (records, number of lines without a valid signature)."""
    import hashlib
    import hmac

    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while len(data) < 64 * 1024 * 1024:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        data += chunk
    records, forged = [], 0
    for raw_line in data.decode("utf-8", "replace").splitlines():
        if not raw_line.strip():
            continue
        line, _, mac = raw_line.rpartition("\t")
        good = hmac.new(key, line.encode("utf-8"), hashlib.sha256).hexdigest()
        if not line or not hmac.compare_digest(mac, good):
            forged += 1
            continue
        if len(records) >= MAX_RECORDS:
            continue
        try:
            raw = json.loads(line)
        except ValueError:
            forged += 1
            continue
        record = {key_: str(raw.get(key_, ""))[:MAX_MESSAGE] for key_ in ("nodeid", "when", "outcome", "message")}
        if isinstance(raw.get("exitstatus"), int):
            record["exitstatus"] = raw["exitstatus"]
        records.append(record)
    return records, forged


def _outside_log(env: dict) -> list[str]:
    """The audit hook's lines (advisory: the submission could erase them; the sandbox is the protection)."""
    try:
        with open(env["COURSE_SANDBOX_LOG"], encoding="utf-8", errors="replace") as handle:
            lines = [line.strip()[:300] for line in handle.readlines()[:1000] if line.strip()]
    except OSError:
        return []
    return list(dict.fromkeys(lines))[:50]


def run_pytest_job(job: dict, work: str, env: dict) -> dict:
    """Run pytest (``collect`` only, or the tests) on the job's targets in ``work``; the result fields."""
    report_path = os.path.join(env["TMPDIR"], ".report-" + secrets.token_hex(8))
    report_fd = os.open(report_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(report_path)
    key = secrets.token_bytes(64)
    token_read, token_write = os.pipe()
    os.write(token_write, key)
    os.close(token_write)
    data_path = os.path.join(env["TMPDIR"], ".data-" + secrets.token_hex(8))
    data_fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(data_path)
    env = dict(env, COURSE_REPORT_FD=str(report_fd), COURSE_TOKEN_FD=str(token_read), COURSE_DATA_FD=str(data_fd))
    command = [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", PLUGIN_MODULE,
               "--rootdir", work, "-o", "addopts=", "--color=no", "-o", "cache_dir=" + env["TMPDIR"]]
    if job["kind"] == "collect":
        command.append("--collect-only")
    command += [str(t) for t in job["targets"]]
    timeout = float(job.get("timeout_s", 300))
    process = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_limits(job),
                               pass_fds=(report_fd, token_read, data_fd))
    os.close(token_read)
    timed_out = False
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_rest({}, process.pid)
        out, _ = process.communicate()
    _kill_rest(job, process.pid)
    records, forged = _read_records(report_fd, key)
    os.close(report_fd)
    os.lseek(data_fd, 0, os.SEEK_SET)
    data = os.read(data_fd, MAX_PROBE_BYTES + 1)
    os.close(data_fd)
    return {"records": records, "forged_lines": forged, "returncode": process.returncode, "timed_out": timed_out,
            "output_tail": out.decode("utf-8", "replace")[-MAX_TAIL:], "outside": _outside_log(env),
            "data_output": data[:MAX_PROBE_BYTES].decode("utf-8", "replace"), "data_oversized": len(data) > MAX_PROBE_BYTES}


def run_probe_job(job: dict, work: str, env: dict) -> dict:
    """Run the host-check probe (``_course_probe``, see probe.py) on the job's ``probe`` spec in ``work``;
    its raw output (at most MAX_PROBE_BYTES, else ``probe_oversized``) goes back for the host to parse."""
    out_path = os.path.join(env["TMPDIR"], ".probe-" + secrets.token_hex(8))
    out_fd = os.open(out_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.unlink(out_path)
    env = dict(env, COURSE_PROBE_FD=str(out_fd))
    command = [sys.executable, "-P", "-m", "_course_probe"]
    timeout = float(job.get("timeout_s", 300))
    process = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_limits(job),
                               pass_fds=(out_fd,))
    timed_out = False
    try:
        out, _ = process.communicate(json.dumps(job["probe"]).encode("utf-8"), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_rest({}, process.pid)
        out, _ = process.communicate()
    _kill_rest(job, process.pid)
    os.lseek(out_fd, 0, os.SEEK_SET)
    data = os.read(out_fd, MAX_PROBE_BYTES + 1)
    os.close(out_fd)
    return {"probe_output": data[:MAX_PROBE_BYTES].decode("utf-8", "replace"),
            "probe_oversized": len(data) > MAX_PROBE_BYTES, "returncode": process.returncode,
            "timed_out": timed_out, "output_tail": out.decode("utf-8", "replace")[-MAX_TAIL:],
            "outside": _outside_log(env)}


class _WallTime(Exception):
    pass


def run_notebook_job(job: dict, work: str, env: dict) -> dict:
    """Execute the merged notebook with nbclient after papermill's parameter injection, in this process,
    so the result is the executed notebook held in memory here, never a file the kernel could rewrite;
    per graded cell: ran, error."""
    import nbclient
    import nbformat
    import papermill

    os.environ.clear()
    os.environ.update(env)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    source = os.path.join(work, job["notebook"])
    prepared = os.path.join(env["TMPDIR"], "prepared-" + secrets.token_hex(8) + ".ipynb")
    timeout = float(job.get("timeout_s", 600))
    cwd = os.path.join(work, job.get("cwd", "."))

    def alarm(signum, frame):
        raise _WallTime()

    timed_out, error, executed = False, "", None
    try:
        nb = papermill.execute_notebook(source, prepared, parameters=job.get("parameters") or {}, cwd=cwd,
                                        kernel_name="python3", progress_bar=False, prepare_only=True,
                                        log_output=False)
        nb = nbformat.from_dict(nb)
        signal.signal(signal.SIGALRM, alarm)
        signal.alarm(max(1, int(timeout)))
        try:
            executed = nbclient.NotebookClient(nb, timeout=int(timeout), kernel_name="python3", allow_errors=True,
                                               resources={"metadata": {"path": cwd}}).execute()
        finally:
            signal.alarm(0)
    except _WallTime:
        timed_out = True
    except Exception as exc:  # noqa: BLE001 - a broken notebook is a result, not a crash of the runner
        error = f"{type(exc).__name__}: {exc}"[:MAX_MESSAGE]
    _kill_rest(job, None)
    cells = {}
    for cell in (executed or {}).get("cells", []) if executed else []:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if not grade_id or grade_id in cells or cell.get("cell_type") != "code":
            continue
        failure = None
        for output in cell.get("outputs", []) or []:
            if output.get("output_type") == "error":
                failure = f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"[:MAX_MESSAGE]
                break
        cells[str(grade_id)[:200]] = {"executed": cell.get("execution_count") is not None, "error": failure}
        if len(cells) >= MAX_RECORDS:
            break
    return {"cells": cells, "timed_out": timed_out, "error": error, "outside": _outside_log(env)}


def write_result(out_dir: str, result: dict) -> None:
    """Write ``result.json`` into ``out_dir`` (a new file, replaced atomically)."""
    tmp = os.path.join(out_dir, ".result-" + secrets.token_hex(8))
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(tmp, os.path.join(out_dir, "result.json"))


def main() -> int:
    """Read the job from stdin, run it, write the result; the exit status is 0 when a result was written."""
    job = json.loads(sys.stdin.buffer.read(MAX_JOB_BYTES))
    _non_dumpable()
    scratch = job.get("scratch") or "/tmp"
    scratch = os.path.join(scratch, "run-" + secrets.token_hex(8))
    os.makedirs(scratch, mode=0o700)
    work = os.path.join(scratch, "work")
    shutil.copytree(job["work"], work, symlinks=True)
    env = _environment(job, work, scratch)
    if job["kind"] in ("pytest", "collect"):
        result = run_pytest_job(job, work, env)
    elif job["kind"] == "notebook":
        result = run_notebook_job(job, work, env)
    elif job["kind"] == "probe":
        result = run_probe_job(job, work, env)
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}; accepted: pytest, collect, notebook, probe")
    result.update(nonce=job["nonce"], kind=job["kind"])
    write_result(job["out"], result)
    if not job.get("pid_namespace"):
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
