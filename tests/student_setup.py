"""A course release set up as its README tells a student without Docker (used by test_student_release).

Made by conftest's `early` preparations: the venv's pip install is mostly downloads and unpacking, so it
runs beside the CPU-bound tests (tests/background.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def setup_line(readme: str) -> str:
    """The indented command line that follows "Without Docker" in the release README."""
    after = readme.split("Without Docker", 1)[1]
    lines = [line.strip() for line in after.splitlines() if line.startswith("    ") and line.strip()]
    assert lines, "the release README gives no set-up command after 'Without Docker'"
    return lines[0]


def set_up_student_release(folder: Path) -> dict:
    """`course release` into `folder` (which must not exist), then its README's set-up line, verbatim.

    Returns {"folder", "python" (the venv's), "setup_line"}. Raises AssertionError naming what failed.
    """
    subprocess.run([sys.executable, "-m", "diffusion_lib", "course", "release", "--output", str(folder)],
                   check=True, capture_output=True, text=True, cwd=REPO, timeout=300)
    line = setup_line((folder / "README.md").read_text())
    assert line.startswith("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"), line
    setup = subprocess.run(["bash", "-c", line], cwd=folder, capture_output=True, text=True, timeout=1800)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    python = folder / ".venv" / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import diffusion_lib, pytest; print(diffusion_lib.__file__)"],
                           capture_output=True, text=True, cwd=folder.parent, timeout=120)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(folder), "the venv must import the release's own library"
    return {"folder": folder, "python": python, "setup_line": line}
