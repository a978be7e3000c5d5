"""Bubblewrap's limits without cgroups: processes, total memory and the output folder are bounded.

Each test runs one real pytest job in :class:`BwrapSandbox` (as ``course grade`` does) whose test tries
to break one limit; the test's failure message carries what it managed, the host's verdict what it saw.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def box():
    from diffusion_lib.course.sandbox import BwrapSandbox, bwrap_available

    ok, why = bwrap_available()
    if not ok:
        (pytest.fail if CI else pytest.skip)(f"bubblewrap cannot run here: {why}")
    return BwrapSandbox()


@pytest.fixture()
def folders():
    from diffusion_lib.course.sandbox import sandbox_tempdir, write_support

    base = Path(tempfile.mkdtemp(prefix="course-limits-", dir=sandbox_tempdir()))
    os.chmod(base, 0o711)
    for name in ("work", "out"):
        (base / name).mkdir(mode=0o755)
    write_support(base / "support")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _run(box, base: Path, test: str, **limits):
    from diffusion_lib.course.sandbox import Limits

    (base / "work/test_limit.py").write_text(textwrap.dedent(test))
    os.chmod(base / "work/test_limit.py", 0o644)
    return box.run({"kind": "pytest", "targets": ["test_limit.py"], "timeout_s": 60}, base / "work",
                   base / "support", base / "out", Limits(**limits))


def _stray(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


def test_processes_are_bounded(box, folders):
    result = _run(box, folders, '''
        import subprocess
        def test_bomb():
            started = []
            for _ in range(300):
                try:
                    started.append(subprocess.Popen(["sleep", "37.5"]))
                except OSError:
                    break
            assert False, f"started={len(started)}"
        ''', pids=40, memory_mb=2048)
    message = next(r["message"] for r in result["records"] if r.get("outcome") == "failed")
    started = int(message.split("started=")[1].split()[0].strip("'\""))
    assert 0 < started < 40, message
    assert _stray("sleep 37.5") == []  # every process of the sandbox is gone


def test_memory_of_all_processes_together_is_bounded(box, folders):
    from diffusion_lib.course.sandbox import SandboxError

    with pytest.raises(SandboxError, match="more than 400 MB of memory together"):
        _run(box, folders, '''
            import subprocess, sys
            def test_hog():
                code = "b = bytearray(250 * 1024 ** 2); import time; time.sleep(41.5)"
                children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
                for child in children:
                    child.wait()
            ''', memory_mb=400)
    assert _stray("time.sleep(41.5)") == []


def test_output_folder_quota(box, folders):
    from diffusion_lib.course.sandbox import SandboxError

    with pytest.raises(SandboxError, match="more than 4 MB into its output folder"):
        _run(box, folders, '''
            import time
            def test_fill():
                with open("/grader/out/junk", "wb") as handle:
                    for _ in range(40):
                        handle.write(b"x" * 2 ** 20)
                time.sleep(2)
            ''', output_mb=4, memory_mb=2048)
    assert not (folders / "out").exists() or list((folders / "out").iterdir()) == []
