"""``course release``: the student copy of the instructor repository.

The release is a complete, runnable copy (Dockerfile, compose files, library, notebooks, configs,
public tests) in which solution regions are stubs that raise ``NotImplementedError`` naming the task,
hidden tests are gone, the ``# Start``/``# End`` region lines keep their code with an empty
annotation slot, and nbgrader notebooks went through nbgrader's generate step. A leak check runs
last and raises if any marker line, hidden test or reference annotation survived.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from . import annotations as ann
from . import markers
from .tasks import ANNOTATIONS_FILE, MANIFEST_FILE, Course, load_course

STUDENT_README_TEMPLATE = "coursework/README_STUDENT.md"
ALWAYS_EXCLUDED_DIRS = {".git", ".venv", "venv", "runs", "outputs", "__pycache__", ".pytest_cache",
                        ".ipynb_checkpoints", ".mypy_cache", ".ruff_cache", "node_modules", ".cache"}
ALWAYS_EXCLUDED_FILES = {ANNOTATIONS_FILE, MANIFEST_FILE, STUDENT_README_TEMPLATE}
# reference annotations shorter than this are only checked on the region lines themselves
# (short ones such as "eq. 12" legitimately appear elsewhere)
MIN_LEAK_CHECK_LENGTH = 16
NBGRADER_HINT = "nbgrader is needed for notebooks with nbgrader metadata: pip install -r requirements.txt"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    parts = rel.split("/")
    if any(part in ALWAYS_EXCLUDED_DIRS or part.endswith(".egg-info") for part in parts[:-1]):
        return True
    if rel in ALWAYS_EXCLUDED_FILES or parts[-1].endswith((".pyc", ".pyo")):
        return True
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if fnmatch.fnmatch(rel, pattern) or rel.startswith(pattern + "/"):
            return True
    return False


def list_files(root: Path, patterns: tuple[str, ...] = ()) -> list[str]:
    """Relative paths (posix) of the files to release: git's tracked and untracked-not-ignored files in
    a git repository, else a walk; both minus the excluded folders and ``patterns`` (globs or folders)."""
    root = Path(root)
    rels: list[str] | None = None
    if (root / ".git").exists() and shutil.which("git"):
        try:
            out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                  "--exclude-standard"], capture_output=True, check=True).stdout
            rels = sorted({p for p in out.decode("utf-8").split("\0") if p and (root / p).is_file()
                           and not (root / p).is_symlink()})
        except (subprocess.CalledProcessError, OSError):
            rels = None
    if rels is None:
        rels = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ALWAYS_EXCLUDED_DIRS and not d.endswith(".egg-info"))
            for name in filenames:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    rels.append(path.relative_to(root).as_posix())
        rels.sort()
    return [rel for rel in rels if not _excluded(rel, patterns)]


# ----------------------------------------------------------------------------------------- notebooks

def is_nbgrader_notebook(nb) -> bool:
    return any("nbgrader" in cell.get("metadata", {}) for cell in nb.cells)


def generate_notebook(nb):
    """nbgrader's generate step on one notebook (without the database): lock cells, clear solutions,
    outputs, hidden tests and mark schemes, compute checksums, check metadata."""
    try:
        from nbgrader import preprocessors as pp
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(NBGRADER_HINT) from error
    resources: dict = {}
    # nbgrader's own GenerateAssignment order (nbgrader/converters/generate_assignment.py), less the steps that
    # need its database or templates (IncludeHeaderFooter, InstantiateTests, SaveCells). The order matters:
    # cells are locked and solutions and outputs cleared before the first checksums, so the checksums are of what
    # the student receives (nbgrader validate/autograde flag a locked or graded cell whose source then changes);
    # hidden tests are cleared after them, as nbgrader requires, and that changes those cells, so the checksums
    # are computed again; the metadata check runs after each checksum pass, on the metadata the steps wrote.
    for cls in (pp.LockCells, pp.ClearSolutions, pp.ClearOutput, pp.CheckCellMetadata, pp.ComputeChecksums,
                pp.ClearHiddenTests, pp.ClearMarkScheme, pp.ComputeChecksums, pp.CheckCellMetadata):
        nb, resources = cls().preprocess(nb, resources)
    return nb


def _release_notebook(source: Path, target: Path, rel: str) -> None:
    import nbformat

    nb = nbformat.read(source, as_version=4)
    if is_nbgrader_notebook(nb):
        nb = generate_notebook(nb)
    else:
        for index, cell in enumerate(nb.cells):
            if markers.has_markers(cell.source):
                raise ValueError(f"{rel}: cell {index} holds solution/hidden-test markers but the notebook has no "
                                 f"nbgrader metadata; mark its cells with nbgrader (Create Assignment toolbar)")
    nbformat.write(nb, target)


# ----------------------------------------------------------------------------------------- python files

def release_python_text(text: str, rel: str, course: Course, *, keep_hidden: bool = False,
                        annotation_file: bool = False) -> str:
    """One .py file as released: solutions -> stubs, hidden tests removed, annotations -> slots."""
    if annotation_file:
        regions = markers.find_regions(text, rel)
        for region in ann.find_regions(text, rel):
            for marked in regions:
                if marked.begin <= region.end and region.start <= marked.end:
                    raise ValueError(f"{rel}:{marked.begin}: a marker region overlaps the '# Start' region at line "
                                     f"{region.start}; keep solution regions outside annotated regions")
    text = markers.strip_regions(text, rel, solutions=True, hidden=not keep_hidden, title_for=course.title_for)
    if annotation_file:
        text = ann.strip_annotations(text, rel)
    return text


def _student_readme(root: Path, course: Course) -> str:
    rows = "\n".join(f"| {t.id} | {t.title} | {t.points:g} | {t.auto_points if t.autograded else 0:g} | "
                     f"{t.manual_points if t.autograded else t.points:g} |" for t in course.tasks)
    table = "| task | title | points | autograded | by hand |\n|---|---|---|---|---|\n" + rows
    checks = [f"| {t.id} | {c.id} | {c.points:g} | "
              + ("hidden" if c.hidden else ", ".join(f"`{n}`" for n in c.tests))
              + (" + decided by the grader" if c.host else "") + f" | {c.description} |"
              for t in course.tasks for c in t.checks]
    if checks:
        table += ("\n\nAutograded points per check (a check scores when all its tests pass; hidden checks run only "
                  "at grading; the grader decides its own checks on the numbers your code computes):\n\n"
                  "| task | check | points | tests | what it checks |\n|---|---|---|---|---|\n" + "\n".join(checks))
        gates = [f"task {t.id}: `{t.gate}`" for t in course.tasks if t.gate]
        if gates:
            table += ("\n\nGates (a task earns nothing until its gate check passes): " + "; ".join(gates) + ".")
    template = root / STUDENT_README_TEMPLATE
    if template.is_file():
        return template.read_text(encoding="utf-8").replace("{{title}}", course.title).replace("{{tasks}}", table)
    return (f"# {course.title}: student release\n\n"
            "Start the environment with `docker compose up` and open JupyterLab; your edits to the library and\n"
            "the notebooks stay on your disk.\n\n"
            "Every function you have to write raises `NotImplementedError` naming its task. In the `# Start`/`# End`\n"
            "regions, write your explanation of each line after its `# TODO(2b): ` slot.\n\n"
            "- Check your work: `python -m diffusion_lib course check` (or `from diffusion_lib.course.check import "
            "check; check()` in a notebook cell)\n"
            "- Hand in: `python -m diffusion_lib course handin --output <your-id>.tar.gz`; in the course's JupyterHub, "
            "the **Hand in** button of `handin.ipynb` (or `course handin --submit`)\n\n"
            f"## Tasks\n\n{table}\n")


# ----------------------------------------------------------------------------------------- leak check

# The first line of an instructor's page (docs/coursework.md: thresholds, hidden-test design, grading).
# Such pages are listed in tasks.yaml's instructor_only; the marker catches one that is not.
INSTRUCTOR_PAGE_MARKER = "<!-- instructor-only"

def find_leaks(release_dir: str | Path, reference: dict[str, list[dict]] | None = None, *,
               allow_hidden: bool = False) -> list[str]:
    """Every place in ``release_dir`` where a solution region, a hidden test, a reference annotation, the
    reference file or an instructor's page (first line INSTRUCTOR_PAGE_MARKER) survives; empty when clean."""
    import nbformat

    root = Path(release_dir)
    leaks: list[str] = []
    region_codes: dict[str, set[str]] = {}
    long_annotations: set[str] = set()
    short_annotations: dict[str, set[str]] = {}
    for key, lines in (reference or {}).items():
        rel = key.split("::", 1)[0]
        for line in lines:
            if line["annotation"]:
                region_codes.setdefault(rel, set()).add(line["code"])
                if len(line["annotation"]) >= MIN_LEAK_CHECK_LENGTH:
                    long_annotations.add(line["annotation"])
                else:
                    short_annotations.setdefault(rel, set()).add(line["annotation"])
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.name == Path(ANNOTATIONS_FILE).name:
            leaks.append(f"{rel}: the reference annotations file")
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.lstrip().startswith(INSTRUCTOR_PAGE_MARKER):
            leaks.append(f"{rel}: an instructor's page ({INSTRUCTOR_PAGE_MARKER} ...)")
            continue
        sources = [(rel, text)]
        if path.suffix == ".ipynb":
            try:
                nb = nbformat.reads(text, as_version=4)
                sources = [(f"{rel} cell {i}", cell.source) for i, cell in enumerate(nb.cells)]
            except Exception:  # noqa: BLE001 - an unreadable notebook is checked as text
                pass
        for where, source in sources:
            for number, line in enumerate(source.splitlines(), start=1):
                match = markers.MARKER_LINE.match(line)
                if match and not (allow_hidden and match.group(2) == "HIDDEN TESTS"):
                    leaks.append(f"{where}:{number}: marker line {line.strip()!r}")
            for annotation in long_annotations:
                if annotation in source:
                    leaks.append(f"{where}: reference annotation {annotation!r}")
        if rel in region_codes:
            try:
                regions = ann.find_regions(text, rel)
            except ValueError as error:
                leaks.append(f"{rel}: {error}")
                continue
            for region in regions:
                for line in region.lines:
                    if line.annotation and line.annotation in short_annotations.get(rel, set()) | long_annotations:
                        leaks.append(f"{rel}:{line.line}: reference annotation {line.annotation!r}")
    return leaks


# ----------------------------------------------------------------------------------------- release

def release(repo_root: str | Path = ".", output_dir: str | Path | None = None, force: bool = False, *,
            keep_hidden: bool = False, verbose: bool = True) -> Path:
    """Write the student release of ``repo_root`` into ``output_dir``.

    Args:
        repo_root: the instructor repository (holds ``coursework/tasks.yaml``).
        output_dir: target folder (default: ``<repo_root>/../<name>-student``); must be empty or absent
            unless ``force`` (then its contents are replaced).
        keep_hidden: keep hidden tests in .py files (the grader's workspace; never hand this to students).

    Returns:
        The release folder.

    Raises:
        ValueError: a bad target, malformed markers (file and line named) or a leak found by the final check.
    """
    root = Path(repo_root).resolve()
    course = load_course(root)
    out = Path(output_dir).resolve() if output_dir else root.parent / f"{root.name}-student"
    if out == root or root.is_relative_to(out):
        raise ValueError(f"output {out} would overwrite the instructor repository {root}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise ValueError(f"output {out} is not empty; pass --force to replace its contents")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    excluded = course.instructor_only
    if out.is_relative_to(root):
        excluded = excluded + (out.relative_to(root).as_posix(),)
    annotation_files = set(course.annotation_files)
    reference = ann.reference_annotations(root, sorted(annotation_files))
    if not keep_hidden:
        ann.write_reference(root, sorted(annotation_files), root / ANNOTATIONS_FILE)

    files = list_files(root, excluded)
    stubs = 0
    for rel in files:
        source, target = root / rel, out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == ".py":
            text = source.read_text(encoding="utf-8")
            stubs += sum(r.kind == "solution" for r in markers.find_regions(text, rel))
            target.write_text(release_python_text(text, rel, course, keep_hidden=keep_hidden,
                                                  annotation_file=rel in annotation_files), encoding="utf-8")
            shutil.copymode(source, target)
        elif source.suffix == ".ipynb":
            _release_notebook(source, target, rel)
        else:
            shutil.copyfile(source, target)
            shutil.copymode(source, target)
    (out / "README.md").write_text(_student_readme(root, course), encoding="utf-8")

    manifest = {"course": course.title,
                "files": {p.relative_to(out).as_posix(): sha256_file(p)
                          for p in sorted(out.rglob("*")) if p.is_file()}}
    (out / MANIFEST_FILE).parent.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")

    leaks = find_leaks(out, reference, allow_hidden=keep_hidden)
    if leaks:
        raise ValueError(f"release {out} is not clean ({len(leaks)} leaks):\n  " + "\n  ".join(leaks[:50]))
    if verbose:
        print(f"released {len(files)} files to {out} ({stubs} solution regions replaced by stubs, "
              f"{sum(len(v) for v in reference.values())} annotation slots); leak check passed")
    return out
