"""Execute the course notebooks with papermill, and check that the stored ones are clean.

    python -m diffusion_lib notebooks run                       # every notebook, smoke profile
    python -m diffusion_lib notebooks run 02 04 --profile full  # by number (prefix) or file name
    python -m diffusion_lib notebooks check                     # clean and thin: see check_notebook
    python -m diffusion_lib notebooks check --executed outputs/notebooks   # figures rendered as images

Each notebook runs in a fresh kernel of *this* interpreter (a temporary kernelspec whose argv is
``sys.executable``, with this copy of ``diffusion_lib`` first on its path), from its own folder,
with the parameters ``PROFILE`` and ``OUTPUT_DIR`` injected by papermill. The executed copy is
written to ``OUTPUT/<name>.ipynb`` and the notebook's files to ``OUTPUT/<stem>/``; the stored
notebook is never modified.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import yaml

PROFILES = ("smoke", "full")
DEFAULT_OUTPUT = Path("outputs") / "notebooks"
KERNEL_NAME = "diffusion-lib-runner"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
PARAMETERS_TAG = "parameters"  # papermill's tag: the one cell of knobs
EXERCISE_TAG = "exercise"      # a cell where the student writes code: exempt from the thin-notebook rules
MAX_CELL_LINES = 15            # non-blank lines of a code cell
FIGURE_AS_TEXT = "<Figure size"
_DEF = re.compile(r"^\s*(async\s+)?def\s", re.MULTILINE)
_PLT = re.compile(r"\bplt\.")


@dataclass
class NotebookResult:
    """Outcome of one notebook: ``status`` "ok" or "failed", wall ``seconds``, the first ``error``
    (None when ok) and the executed copy ``output``."""

    name: str
    status: str
    seconds: float
    error: str | None
    output: Path


def default_notebook_dir() -> Path:
    """``./notebooks`` if it exists, else the ``notebooks`` folder beside the ``diffusion_lib`` package."""
    here = Path("notebooks")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "notebooks"


def find_notebooks(names: Sequence[str] | None = None, directory: str | Path | None = None) -> list[Path]:
    """The notebooks of ``directory`` (sorted), or those matching ``names``.

    Args:
        names: file names or prefixes ("02", "02_forward", "02_forward_process_and_schedules.ipynb");
            None or empty: all.
        directory: folder of the notebooks (default :func:`default_notebook_dir`).

    Returns:
        Paths in name order, without duplicates.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: a name that matches no notebook (the message lists them).
    """
    directory = Path(directory) if directory is not None else default_notebook_dir()
    if not directory.is_dir():
        raise FileNotFoundError(f"notebook folder {directory} does not exist")
    available = sorted(p for p in directory.glob("*.ipynb") if not p.name.startswith("."))
    if not names:
        return available
    chosen = []
    for name in names:
        matches = [p for p in available if p.name == name or p.name.startswith(name)]
        if not matches:
            raise ValueError(f"no notebook matches {name!r}; available: {[p.name for p in available]}")
        chosen += [p for p in matches if p not in chosen]
    return sorted(chosen)


@contextlib.contextmanager
def interpreter_kernel() -> Iterator[str]:
    """A temporary Jupyter kernelspec that runs this interpreter (``sys.executable``).

    The kernel imports the same ``diffusion_lib`` as the caller (its folder is put first on
    ``PYTHONPATH``) and finds datasets where the command line does: ``$DIFFUSION_LIB_DATA``, else the
    repository's ``datasets/`` as an absolute path (notebooks run with their own folder as cwd).
    ``JUPYTER_PATH`` points at the spec while the context is open and is
    restored afterwards.

    Yields:
        The kernel name to give papermill.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    data_root = str(Path(os.environ.get("DIFFUSION_LIB_DATA") or Path.cwd() / "datasets").resolve())
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"Python 3 ({sys.executable})", "language": "python",
            "env": {"PYTHONPATH": python_path, "DIFFUSION_LIB_DATA": data_root}}
    old = os.environ.get("JUPYTER_PATH")
    with tempfile.TemporaryDirectory(prefix="diffusion_lib_kernel_") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(spec))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (tmp, old) if p)
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def _first_error(error: BaseException) -> str:
    """One line describing why a notebook failed (papermill's cell error, else the exception)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        text = f"In [{error.exec_count}]: {error.ename}: {error.evalue}"
    else:
        text = f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def run_notebook(path: str | Path, output_dir: str | Path = DEFAULT_OUTPUT, profile: str = "smoke",
                 parameters: dict | None = None, timeout: float | None = None,
                 kernel_name: str | None = None, progress: bool = False) -> NotebookResult:
    """Execute one notebook with papermill; then check the executed copy (:func:`check_executed_notebook`).

    Args:
        path: the stored notebook (unchanged by the run).
        output_dir: the executed copy goes to ``output_dir/<name>``; ``OUTPUT_DIR`` is ``output_dir/<stem>``.
        profile: "smoke" (CI, bundled data, minutes on a CPU) or "full" (the course setting).
        parameters: more papermill parameters (e.g. ``{"CHECKPOINT": "runs/x/checkpoints/last.ckpt"}``).
        timeout: seconds allowed per cell (None: no limit).
        kernel_name: a kernelspec to use; default a temporary one for this interpreter (:func:`interpreter_kernel`).
        progress: show papermill's progress bar (one tick per cell).

    Returns:
        :class:`NotebookResult`; failures are reported, not raised. A notebook that runs but shows a
        figure as text (``<Figure size ...>``) has status "failed" and that problem as its error.

    Raises:
        ValueError: unknown profile.
        FileNotFoundError: no such notebook.
    """
    import papermill

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; accepted: {list(PROFILES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / path.name
    params = {"PROFILE": profile, "OUTPUT_DIR": str(output_dir / path.stem), **(parameters or {})}
    with contextlib.ExitStack() as stack:
        kernel = kernel_name or stack.enter_context(interpreter_kernel())
        start, error = time.perf_counter(), None
        try:
            papermill.execute_notebook(str(path), str(output), parameters=params, kernel_name=kernel,
                                       cwd=str(path.parent.resolve()), progress_bar=progress,
                                       execution_timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - any failure of the notebook is reported in the table
            error = _first_error(exc)
        seconds = time.perf_counter() - start
    problems = [] if error else check_executed_notebook(output)
    if problems:
        error = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    return NotebookResult(path.name, "failed" if error else "ok", seconds, error, output)


def run_notebooks(names: Sequence[str] | None = None, profile: str = "smoke", output_dir: str | Path = DEFAULT_OUTPUT,
                  directory: str | Path | None = None, parameters: dict | None = None, timeout: float | None = None,
                  log: Callable[[str], None] | None = None, progress: bool = False) -> list[NotebookResult]:
    """Execute the notebooks :func:`find_notebooks` selects, one after the other, in one kernelspec.

    Args:
        names, directory: see :func:`find_notebooks`.
        profile, output_dir, parameters, timeout: see :func:`run_notebook`.
        log: called with a line before and after each notebook (e.g. ``print``).
        progress: papermill's per-cell progress bar for each notebook.

    Returns:
        One :class:`NotebookResult` per notebook, in order.
    """
    paths = find_notebooks(names, directory)
    results = []
    with interpreter_kernel() as kernel:
        for path in paths:
            if log:
                log(f"running {path.name} ({profile}) ...")
            result = run_notebook(path, output_dir, profile, parameters, timeout, kernel_name=kernel, progress=progress)
            if log:
                log(f"  {result.status} in {result.seconds:.1f} s" + (f": {result.error}" if result.error else ""))
            results.append(result)
    return results


def format_table(results: Sequence[NotebookResult]) -> str:
    """A plain-text table: notebook, status, seconds, first error; with a total line."""
    rows = [(r.name, r.status, f"{r.seconds:.1f}", r.error or "") for r in results]
    failed = sum(r.status != "ok" for r in results)
    rows.append(("total", f"{len(results) - failed}/{len(results)} ok", f"{sum(r.seconds for r in results):.1f}", ""))
    header = ("notebook", "status", "seconds", "first error")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>{widths[2]}}  {header[3]}"]
    lines.append("-" * (sum(widths) + 6 + len(header[3])))
    for name, status, seconds, error in rows:
        lines.append(f"{name:<{widths[0]}}  {status:<{widths[1]}}  {seconds:>{widths[2]}}  {error}".rstrip())
    return "\n".join(lines)


def _read(path: str | Path):
    """``(notebook, [])`` for a valid notebook file, ``(None, [problem])`` for an unreadable one.

    Raises:
        FileNotFoundError: no such file.
    """
    import nbformat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        nbformat.validate(nb)
    except Exception as error:  # noqa: BLE001 - any unreadable notebook is one problem
        return None, [f"not a valid notebook: {type(error).__name__}: {error}"]
    return nb, []


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def thin_notebook_problems(nb) -> list[str]:
    """Where a notebook does computation that belongs in the library (empty list: thin).

    Every code cell except the ``parameters`` cell and cells tagged ``exercise`` (where the
    student writes code; add the tag in JupyterLab's property inspector or
    ``cell.metadata["tags"]``) must have no ``def`` (functions belong in the library), no
    ``plt.`` (figures come from ``diffusion_lib.viz``) and at most ``MAX_CELL_LINES`` (15)
    non-blank lines.

    Args:
        nb: an nbformat 4 notebook (``nbformat.read(...)`` or ``nbformat.v4.new_notebook(...)``).

    Returns:
        One line per problem, naming the cell index.
    """
    problems = []
    for i, cell in enumerate(nb.cells):
        tags = _tags(cell)
        if cell.cell_type != "code" or PARAMETERS_TAG in tags or EXERCISE_TAG in tags:
            continue
        source = cell.source
        if _DEF.search(source):
            problems.append(f"cell {i} defines a function (`def`); move it into the library "
                            f"(or tag the cell {EXERCISE_TAG!r} if the student writes it)")
        if _PLT.search(source):
            problems.append(f"cell {i} calls `plt.` directly; draw the figure with a diffusion_lib.viz function")
        lines = sum(1 for line in source.splitlines() if line.strip())
        if lines > MAX_CELL_LINES:
            problems.append(f"cell {i} has {lines} non-blank lines; at most {MAX_CELL_LINES} "
                            "(split it, or move the computation into the library)")
    return problems


def executed_notebook_problems(nb) -> list[str]:
    """Problems of an executed notebook (the runner's output copy): figures shown as text.

    An output (``display_data`` / ``execute_result``) whose ``text/plain`` contains
    ``<Figure size`` and that carries no ``image/*`` data means the kernel printed a matplotlib
    Figure's repr instead of drawing it (the inline backend was never switched on). A rendered
    figure also has that text/plain, next to its image/png: that is fine.

    Args:
        nb: an nbformat 4 notebook with outputs.

    Returns:
        One line per problem: "cell N: figure rendered as text (<Figure size ...>)".
    """
    problems = []
    for i, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if FIGURE_AS_TEXT in text and not any(mime.startswith("image/") for mime in data):
                shown = " ".join(line.strip() for line in text.splitlines() if FIGURE_AS_TEXT in line)
                problems.append(f"cell {i}: figure rendered as text ({shown[:80]})")
    return problems


def check_executed_notebook(path: str | Path) -> list[str]:
    """:func:`executed_notebook_problems` of a file (empty list: every figure is an image).

    Raises:
        FileNotFoundError: no such file.
    """
    nb, problems = _read(path)
    return problems if nb is None else executed_notebook_problems(nb)


def check_notebook(path: str | Path) -> list[str]:
    """Problems of a stored notebook (empty list: clean).

    Checked: valid nbformat 4; no outputs and no execution counts; exactly one code cell tagged
    ``parameters`` that sets ``PROFILE``, one assignment per line and no other "=" (papermill's parser);
    kernelspec metadata {"name": "python3", "display_name":
    "Python 3", "language": "python"}; no papermill metadata; a first markdown cell with "Learning
    objectives"; a last markdown cell with "Questions"; thin code cells (:func:`thin_notebook_problems`).

    Raises:
        FileNotFoundError: no such file.
    """
    nb, problems = _read(path)
    if nb is None:
        return problems
    if nb.nbformat != 4:
        problems.append(f"nbformat {nb.nbformat}; expected 4")
    cells = nb.cells
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None):
            problems.append(f"cell {i} has outputs or an execution count (strip them: nbstripout)")
        if "papermill" in cell.metadata or "execution" in cell.metadata:
            problems.append(f"cell {i} carries papermill/execution metadata")
    tagged = [i for i, c in enumerate(cells) if PARAMETERS_TAG in _tags(c)]
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells are tagged 'parameters'; expected exactly 1")
    elif cells[tagged[0]].cell_type != "code" or "PROFILE" not in cells[tagged[0]].source:
        problems.append("the 'parameters' cell must be a code cell that sets PROFILE")
    else:
        for number, line in enumerate(cells[tagged[0]].source.splitlines(), 1):
            if line.count("=") > 1:  # papermill reads parameters line by line and cannot parse these
                problems.append(f"parameters cell line {number} has more than one '=' (also in strings or "
                                f"comments), which papermill cannot parse: {line.strip()!r}")
    spec = dict(nb.metadata.get("kernelspec", {}))
    if spec != KERNELSPEC:
        problems.append(f"kernelspec metadata is {spec}; expected {KERNELSPEC}")
    if "papermill" in nb.metadata:
        problems.append("notebook metadata carries papermill metadata")
    if not cells or cells[0].cell_type != "markdown" or "learning objectives" not in cells[0].source.lower():
        problems.append("the first cell must be markdown with 'Learning objectives'")
    if not cells or cells[-1].cell_type != "markdown" or "question" not in cells[-1].source.lower():
        problems.append("the last cell must be markdown with questions for students ('Questions')")
    return problems + thin_notebook_problems(nb)


# ----- command line -------------------------------------------------------------------------------


def _parameters(pairs: Sequence[str]) -> dict:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--param {pair!r} must look like NAME=VALUE (e.g. CHECKPOINT=runs/x/checkpoints/last.ckpt)")
        key, raw = pair.split("=", 1)
        params[key.strip()] = yaml.safe_load(raw)
    return params


def _run(args: argparse.Namespace) -> int:
    results = run_notebooks(args.names, args.profile, args.output, args.dir, _parameters(args.param), args.timeout,
                            log=lambda line: print(line, file=sys.stderr, flush=True), progress=not args.quiet)
    print(format_table(results))
    return 0 if all(r.status == "ok" for r in results) else 1


def _check(args: argparse.Namespace) -> int:
    bad = 0
    directory = args.executed or args.dir
    check = check_executed_notebook if args.executed else check_notebook
    for path in find_notebooks(args.names, directory):
        problems = check(path)
        bad += bool(problems)
        print(f"{path.name}: " + ("ok" if not problems else "\n  " + "\n  ".join(problems)))
    return 1 if bad else 0


def _list(args: argparse.Namespace) -> int:
    for path in find_notebooks(None, args.dir):
        print(path.name)
    return 0


def add_notebooks_command(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``notebooks {run, check, list}`` to the CLI's sub-parsers; returns the ``notebooks`` parser."""
    parser = commands.add_parser("notebooks", help="execute the course notebooks (papermill) or check them",
                                 description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="notebooks_command", required=True, metavar="ACTION",
                                help="run (execute), check (stored notebooks are clean) or list")

    run = sub.add_parser("run", help="execute notebooks and print a table of status and seconds",
                         description="Execute notebooks with papermill in a kernel of this interpreter; exit 1 if any fails.")
    run.add_argument("names", nargs="*", metavar="NAME", help="notebook file names or prefixes, e.g. 02 (default: all)")
    run.add_argument("--profile", choices=PROFILES, default="smoke",
                     help="smoke: bundled data, CPU, minutes (CI); full: the course setting (default smoke)")
    run.add_argument("--output", default=str(DEFAULT_OUTPUT),
                     help=f"folder for executed copies and the notebooks' files (default {DEFAULT_OUTPUT})")
    run.add_argument("--dir", help="folder of the notebooks (default ./notebooks)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="extra notebook parameter, value parsed as YAML (repeatable), e.g. -p CHECKPOINT=run.ckpt")
    run.add_argument("--timeout", type=float, help="seconds allowed per cell (default: no limit)")
    run.add_argument("--quiet", action="store_true", help="no per-cell progress bar (papermill's)")
    run.set_defaults(func=_run)

    check = sub.add_parser(
        "check", help="check stored notebooks: no outputs, one parameters cell, kernelspec, thin cells, ...",
        description="Stored notebooks: no outputs, one 'parameters' cell, kernelspec, objectives and questions, and "
                    f"thin code cells (no def, no plt., at most {MAX_CELL_LINES} non-blank lines; the parameters "
                    f"cell and cells tagged {EXERCISE_TAG!r} are exempt). With --executed: the runner's executed "
                    "copies show every figure as an image, never as '<Figure size ...>' text. Exit 1 on any problem.")
    check.add_argument("names", nargs="*", metavar="NAME", help="notebook file names or prefixes (default: all)")
    check.add_argument("--dir", help="folder of the notebooks (default ./notebooks)")
    check.add_argument("--executed", metavar="DIR",
                       help=f"check the executed copies in DIR (e.g. {DEFAULT_OUTPUT}) for figures rendered as text")
    check.set_defaults(func=_check)

    listing = sub.add_parser("list", help="list the notebooks")
    listing.add_argument("--dir", help="folder of the notebooks (default ./notebooks)")
    listing.set_defaults(func=_list)
    return parser
