"""``course grade``: grade a folder of hand-in archives, each in isolation, into nbgrader's gradebook.

The steps, one module each, in this order (each step only consumes what the one before decided):

1. :mod:`.sandbox` picks the isolation engine first (a container of the student image, else bubblewrap;
   with neither, grading refuses unless ``unsafe``), so nothing of a submission runs before that holds;
2. the host prepares what it will judge against: the student release, the instructor's tests with their
   hidden parts, the expected test ids of each task (collected in a clean copy, in the sandbox), the
   hidden test names and the secret lines no feedback may quote (:mod:`.judge`);
3. :mod:`.intake` gives every entry of the submissions folder its own line and extracts archives safely;
   the static scan (:mod:`.judge`) flags test-machinery tampering;
4. per task, a fresh working copy (release + the submission's allowed files + that task's tests laid in
   just before the run) goes read-only into its own sandbox; the runner's one result file comes back
   and :mod:`.judge` decides; annotation tasks are scored on the host from the submitted files;
5. :mod:`.nbgrading`: each nbgrader notebook with autograded cells is merged with the instructor's cells
   and run in its own fresh copy and sandbox;
6. :mod:`.gradebook` writes the gradebook in place (hand grades kept), grades.csv (other students kept)
   and the feedback files (bounded, nothing secret unless ``reveal``).

SIGINT and SIGTERM stop running sandboxes and remove the temporary folder (hidden tests included).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from . import annotations as ann
from . import markers
from .gradebook import (LIBRARY_NOTEBOOK, STATUS_CELL, Submission, feedback, gradebook_layout, status_line,
                        write_gradebook, write_grades_csv, write_private)
from .intake import accepted, extract_archive, list_submissions, sanitize, student_id  # noqa: F401 (re-exported)
from .judge import Redactor, hidden_test_names, judge_tests, scan_submission, secret_lines
from .nbcourse import hand_in_time, read_notebooks, write_course_layout
from .nbgrading import has_autograded_cells, merge_instructor_cells, nb_cells, score_cells
from .release import is_nbgrader_notebook, release
from .resume import StateStore, archive_sha256, course_fingerprint
from .sandbox import DEFAULT_IMAGE, Limits, Sandbox, SandboxError, choose_sandbox, clear_staging, compile_tree, sandbox_tempdir
from .host_checks import run_host_checks
from .scoring import assign_checks, hidden_tests_by_check, score_task
from .tasks import Course, load_course

__all__ = ["grade", "sandbox_available", "LIBRARY_NOTEBOOK", "STATUS_CELL", "Submission"]


def sandbox_available(kind: str = "auto", image: str = DEFAULT_IMAGE) -> tuple[bool, str]:
    """(True, "") when :func:`grade` finds a sandbox of ``kind`` here, else (False, why not)."""
    try:
        choose_sandbox(kind, image)
    except RuntimeError as error:
        return False, str(error)
    return True, ""


class Stopped(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (SIGINT raises KeyboardInterrupt), so cleanup runs as for
    Ctrl-C: sandboxes killed, the temporary folder removed, nothing but finished states written."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


_Stopped = Stopped  # the former private name


def _copy_tree(source: Path, target: Path) -> None:
    """A private copy of a host-made tree (folders 0755, files 0644, links never followed)."""
    shutil.copytree(source, target, symlinks=True)
    for path in [target, *target.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


class _Run:
    """One grade run's fixed inputs: the course, the sandbox, the prepared folders and what to expect."""

    def __init__(self, course: Course, repo: Path, work: Path, sandbox: Sandbox, limits: Limits, reveal: bool,
                 clear_flags: set[str], verbose: bool):
        self.course, self.repo, self.work, self.sandbox, self.limits = course, repo, work, sandbox, limits
        self.reveal, self.clear_flags, self.verbose = reveal, clear_flags, verbose
        self.timings: dict[str, dict[str, float]] = {}  # student -> step -> seconds (benchmarks/grading.py)
        self.student_release = release(repo, work / "release", verbose=False)
        self.hidden_release = release(repo, work / "hidden", keep_hidden=True, verbose=False)
        for tree in (self.student_release, self.hidden_release):  # bytecode for every copy (checked hashes)
            compile_tree(tree)
        self.support = work / "support"
        from .sandbox import write_support
        write_support(self.support, bundle_pytest=True)
        self.reference = ann.reference_annotations(repo, sorted(course.annotation_files))
        self.notebooks: dict[str, dict] = {}
        import nbformat
        for path in sorted(repo.rglob("*.ipynb")):
            rel = path.relative_to(repo).as_posix()
            if (self.student_release / rel).is_file() and not any(p.startswith(".") for p in rel.split("/")):
                nb = json.loads(path.read_text(encoding="utf-8"))
                if is_nbgrader_notebook(nbformat.from_dict(nb)):
                    self.notebooks[rel] = nb
        self.layout = gradebook_layout(course, {Path(rel).stem: nb for rel, nb in self.notebooks.items()})
        test_files = sorted({t for task in course.tasks for t in task.tests})
        self.hidden = hidden_test_names(repo, test_files)
        secrets = secret_lines(repo, [p.relative_to(repo).as_posix() for p in (repo / "diffusion_lib").rglob("*.py")]
                               if (repo / "diffusion_lib").is_dir() else [])
        secrets += secret_lines(repo, test_files)
        for nb in self.notebooks.values():
            for cell in nb_cells(nb):
                text = "".join(cell.get("source", "")) if isinstance(cell.get("source"), list) else str(cell.get("source", ""))
                lines = text.splitlines()
                try:
                    regions = markers.find_regions(text)
                except ValueError:
                    continue
                secrets += [l for r in regions for l in lines[r.begin:r.end - 1]]
        secrets += [line["annotation"] for lines in self.reference.values() for line in lines
                    if isinstance(line, dict) and line.get("annotation")]
        self.redact = Redactor(self.hidden, secrets)
        started = time.perf_counter()
        self.expected = {task.id: self._collect(task) for task in course.tasks if task.autograded and task.tests}
        self.setup_s = time.perf_counter() - started
        if verbose:
            print(f"expected test ids collected in {self.setup_s:.1f} s", flush=True)
        self.owners = {tid: assign_checks(course.task(tid), ids, hidden_tests_by_check(repo, course.task(tid).tests))
                       for tid, ids in self.expected.items()}
        import secrets as _secrets
        self.probe_seed = _secrets.randbits(32)  # the hidden inputs of host checks, new every run

    def fingerprint(self, options: dict) -> str:
        """What every submission's grade depends on besides its archive (see :mod:`.resume`)."""
        return course_fingerprint([self.student_release, self.hidden_release], dict(
            options, reference=self.reference, notebooks=self.notebooks, expected=self.expected,
            secrets=hashlib.sha256("\0".join(sorted(self.redact.names) + sorted(self.redact.lines)).encode()).hexdigest(),
            sandbox=self.sandbox.name))

    def _copy_for(self, overlay: Path, name: str, task_tests=()) -> Path:
        """A fresh working copy of ``overlay`` with ``task_tests`` laid in from the instructor's tests."""
        copy = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work / "copies"))
        shutil.rmtree(copy)
        _copy_tree(overlay, copy)
        for rel in task_tests:
            source = self.hidden_release / rel
            if source.is_dir():
                shutil.rmtree(copy / rel, ignore_errors=True)
                _copy_tree(source, copy / rel)
            elif source.is_file():
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, copy / rel)
                os.chmod(copy / rel, 0o644)
        return copy

    def _collect(self, task) -> list[str]:
        """The test ids of ``task`` collected in a clean copy of the release (no submission)."""
        copy = self._copy_for(self.student_release, f"collect-{task.id}", task.tests)
        try:
            result = self.sandbox.run({"kind": "collect", "targets": list(task.tests), "timeout_s": self.limits.timeout_s},
                                      copy, self.support, self.work / "out", self.limits)
        finally:
            shutil.rmtree(copy, ignore_errors=True)
        ids = sorted({r["nodeid"] for r in result.get("records", []) if r.get("outcome") == "collected"})
        if not ids:
            raise RuntimeError(f"task {task.id}: the instructor's tests {list(task.tests)} collect no test in the "
                               f"sandbox ({self.sandbox.name}); pytest said: {result.get('output_tail', '')[-800:]}")
        return ids

    def _log(self, sub: Submission, what: str, error: SandboxError) -> None:
        """The engine's own output for a run that returned nothing, on the grader's terminal only."""
        if self.verbose and error.detail.strip():
            print(f"{sub.student} {what}: {error} -- engine output: {error.detail.strip()[-600:]}", file=sys.stderr)

    def grade_one(self, sub: Submission, archive: Path) -> None:
        """Judge one submission into ``sub`` (scores, notes, flag)."""
        extract_dir = self.work / "extract" / sub.student
        try:
            files = extract_archive(archive, extract_dir)
        except ValueError as error:
            sub.status, sub.note = "rejected", str(error)
            return
        except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as error:
            sub.status, sub.note = "rejected", f"the archive cannot be read ({type(error).__name__})"
            return
        overlay = self.work / "overlay" / sub.student
        _copy_tree(self.student_release, overlay)
        manifest = {}
        if "MANIFEST.json" in files:
            try:
                manifest = json.loads((extract_dir / "MANIFEST.json").read_text(encoding="utf-8")).get("files", {})
                manifest = manifest if isinstance(manifest, dict) else {}
            except (ValueError, OSError, AttributeError, UnicodeDecodeError):
                sub.ignored.append("MANIFEST.json: unreadable")
        from .release import sha256_file
        used: dict[str, str] = {}
        for rel in sorted(files):
            if rel == "MANIFEST.json":
                continue
            if not accepted(rel, self.course):
                sub.ignored.append(f"{rel}: outside the hand-in folders or a protected file")
                continue
            if manifest and rel in manifest and manifest[rel] != sha256_file(extract_dir / rel):
                sub.ignored.append(f"{rel}: used, but its hash differs from MANIFEST.json")
            target = overlay / rel
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(extract_dir / rel, target)
            os.chmod(target, 0o644)
            if rel.endswith((".py", ".ipynb")):
                used[rel] = (extract_dir / rel).read_text(encoding="utf-8", errors="replace")
        sub.notebooks = read_notebooks(overlay, self.notebooks)
        baseline = {rel: (self.student_release / rel).read_text(encoding="utf-8", errors="replace")
                    for rel in used if (self.student_release / rel).is_file()}
        reasons = scan_submission(used, baseline)
        if reasons:
            shown = "; ".join(reasons[:5]) + (" ..." if len(reasons) > 5 else "")
            sub.flagged = (f"cleared by the instructor (was: {shown})" if sub.student in self.clear_flags
                           else shown)

        timed_out, outside = False, []
        for task in self.course.tasks:
            if not task.autograded:
                continue
            notes: list[str] = []
            score = 0.0
            started = time.perf_counter()
            verdict = None
            if task.tests:
                copy = self._copy_for(overlay, f"{sub.student}-{task.id}", task.tests)
                try:
                    result = self.sandbox.run({"kind": "pytest", "targets": list(task.tests),
                                               "timeout_s": self.limits.timeout_s},
                                              copy, self.support, self.work / "out", self.limits)
                except SandboxError as error:
                    result = {}
                    notes.append(self.redact(f"no result: {error}"))
                    self._log(sub, task.id, error)
                finally:
                    shutil.rmtree(copy, ignore_errors=True)
                timed_out |= bool(result.get("timed_out"))
                outside += [str(x) for x in result.get("outside", []) if isinstance(x, str)]
                if result:
                    verdict = judge_tests(self.expected[task.id], result, self.hidden, self.redact, self.reveal,
                                          self.limits.timeout_s)
                    notes += verdict.notes
                host, host_timed_out, host_outside = run_host_checks(self, sub, task, overlay, result)
                timed_out |= host_timed_out
                outside += host_outside
                score, lines = score_task(task, self.owners[task.id], verdict, host)
                notes += lines
            if task.annotation:
                keys = {k for k in self.reference if k.split("::", 1)[0] in task.files}
                scores = ann.score_annotations({k: self.reference[k] for k in keys}, overlay)
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
            self.timings.setdefault(sub.student, {})[f"task {task.id}"] = time.perf_counter() - started

        for rel, source in sorted(self.notebooks.items()):
            name = Path(rel).stem
            if not has_autograded_cells(source):
                continue
            try:
                student_nb = json.loads((overlay / rel).read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError):
                student_nb = None
            if not isinstance(student_nb, dict):
                sub.notebook_notes[name] = "the notebook is missing or not valid JSON; its autograded cells score 0"
                scores, _ = score_cells(source, {}, self.redact)
                sub.cell_scores.update({(name, k): 0.0 for k in scores})
                continue
            started = time.perf_counter()
            merged, notes = merge_instructor_cells(student_nb, source)
            copy = self._copy_for(overlay, f"{sub.student}-nb")
            (copy / rel).write_text(json.dumps(merged), encoding="utf-8")
            tagged = any("parameters" in (c.get("metadata", {}) or {}).get("tags", []) for c in nb_cells(merged))
            try:
                result = self.sandbox.run({"kind": "notebook", "notebook": rel, "cwd": str(Path(rel).parent),
                                           "parameters": {"PROFILE": "smoke"} if tagged else {},
                                           "timeout_s": self.limits.notebook_timeout_s},
                                          copy, self.support, self.work / "out", self.limits)
            except SandboxError as error:
                result = {}
                notes.append(self.redact(f"the notebook did not run: {error}"))
                self._log(sub, rel, error)
            finally:
                shutil.rmtree(copy, ignore_errors=True)
            timed_out |= bool(result.get("timed_out"))
            outside += [str(x) for x in result.get("outside", []) if isinstance(x, str)]
            if result.get("error"):
                notes.append(self.redact(f"the notebook did not run: {str(result['error']).splitlines()[0]}"))
            scores, cell_notes = score_cells(source, result, self.redact)
            sub.cell_scores.update({(name, k): v for k, v in scores.items()})
            sub.notebook_notes[name] = "; ".join(notes + cell_notes)
            self.timings.setdefault(sub.student, {})[f"notebook {rel}"] = time.perf_counter() - started

        notes = ["time limit reached in some checks (those score 0)"] if timed_out else []
        outside = list(dict.fromkeys(outside))
        if outside:
            notes.append(self.redact(f"tried to change {len(outside)} file(s) outside its folder (blocked: "
                                     f"{self.sandbox.name} sandbox): " + "; ".join(outside[:3])
                                     + (" ..." if len(outside) > 3 else "")))
        if sub.flagged and sub.student not in self.clear_flags:
            notes.append("flagged: autograded scores are 0 until a person clears it (--clear-flag)")
            sub.task_scores = {k: 0.0 for k in sub.task_scores}
            sub.cell_scores = {k: 0.0 for k in sub.cell_scores}
        sub.note = "; ".join(notes)


def grade(submissions_dir: str | Path, output_dir: str | Path, repo_root: str | Path = ".", *,
          timeout_s: float = 300.0, notebook_timeout_s: float = 600.0, memory_mb: int | None = 16384,
          jobs: int = 1, verbose: bool = True, sandbox: str = "auto", image: str = DEFAULT_IMAGE,
          unsafe: bool = False, reveal: bool = False, clear_flags=(), pids: int = 256, cpus: float = 1.0,
          tmpfs_mb: int = 1024, restart: bool = False):
    """Grade every entry of ``submissions_dir`` (see the module docstring); returns the grades table.

    Args:
        timeout_s: wall-time limit of one task's tests in seconds (a hanging task scores 0).
        notebook_timeout_s: wall-time limit of one homework notebook's execution in seconds.
        memory_mb: memory limit of one sandbox in MB (the container's cgroup; bubblewrap: per process).
        jobs: submissions graded at once (each in its own sandboxes; results do not depend on it).
        sandbox: "docker", "bwrap" or "auto" (docker when the engine holds ``image``, else bubblewrap).
        image: the student image the containers run (its Python at /opt/python/bin/python).
        unsafe: with no sandbox available, grade anyway WITHOUT isolation (else RuntimeError).
        reveal: name hidden checks and show reference annotations in the feedback (after the deadline).
        clear_flags: student ids whose static-scan flag a person has cleared (they are scored).
        pids, cpus, tmpfs_mb: the sandbox's process limit, CPU share and scratch size.
        restart: forget the states of an earlier run in ``output_dir`` and grade everything again (else a
            submission whose archive and course are unchanged since a finished grading is not re-run).

    SIGINT and SIGTERM stop the run: running sandboxes are killed, the temporary folder (hidden tests
    included) is removed, and :class:`Stopped` (a KeyboardInterrupt) is raised; the states of submissions
    finished before the signal are kept in ``output_dir``/state, gradebook.db, grades.csv and the feedback
    are left as they were, and the next run resumes.

    Writes ``output_dir``/gradebook.db (nbgrader; hand grades kept), grades.csv (students not graded in
    this run kept), feedback/<student>.md and nbgrader's course layout for formgrader (:mod:`.nbcourse`).

    Raises:
        FileNotFoundError: no submissions folder. ValueError: a bad limit, sandbox kind or jobs.
        RuntimeError: no sandbox and not ``unsafe``; the instructor's tests collect nothing.
    """
    import pandas as pd

    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: must be a positive integer")
    repo_root = Path(repo_root).resolve()
    submissions_dir, output_dir = Path(submissions_dir).resolve(), Path(output_dir).resolve()
    if not submissions_dir.is_dir():
        raise FileNotFoundError(f"no submissions folder {submissions_dir}")
    course = load_course(repo_root)
    limits = Limits(timeout_s=timeout_s, notebook_timeout_s=notebook_timeout_s, memory_mb=memory_mb, pids=pids,
                    cpus=cpus, tmpfs_mb=tmpfs_mb)
    sources = [repo_root / d for d in ("diffusion_lib", "coursework", "homework", "tests")]
    if output_dir == repo_root or any(output_dir == d or d in output_dir.parents for d in sources):
        raise ValueError(f"output folder {output_dir}: must not be the repository or inside one of its source "
                         f"folders ({', '.join(d.name for d in sources)})")
    box = choose_sandbox(sandbox, image, unsafe)
    if verbose:
        print(f"sandbox: {box.description}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "feedback").mkdir(exist_ok=True)
    assignment = sanitize(course.raw.get("assignment") or "coursework")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = {}
    # The signal is also kept: an exception raised in a handler is lost when it lands where Python ignores
    # exceptions (a finalizer, logging's lock release after a fork), so each submission's end checks it too.
    received: list[int] = []
    if main_thread:
        def stop(signum, frame):
            for number in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the cleanup short
                signal.signal(number, signal.SIG_IGN)
            received.append(signum)
            raise Stopped(signum)
        previous = {number: signal.signal(number, stop) for number in (signal.SIGINT, signal.SIGTERM)}
    work = None
    submissions: list[Submission] = []
    pool = None
    try:
        # bubblewrap may run as an unprivileged host uid: it can pass through work (0711) into the folders it
        # binds (copies, out, support: random names inside), never list them or enter the rest (0700)
        work = Path(tempfile.mkdtemp(prefix="course-grade-", dir=sandbox_tempdir() if box.name == "bwrap" else None))
        os.chmod(work, 0o711)
        for name, mode in (("copies", 0o711), ("out", 0o711), ("extract", 0o700), ("overlay", 0o700),
                           ("release", 0o700), ("hidden", 0o700)):
            (work / name).mkdir(mode=mode)
            os.chmod(work / name, mode)
        run = _Run(course, repo_root, work, box, limits, reveal, set(clear_flags), verbose)
        store = StateStore(output_dir, run.fingerprint(dict(
            timeout_s=timeout_s, notebook_timeout_s=notebook_timeout_s, memory_mb=memory_mb, pids=pids, cpus=cpus,
            tmpfs_mb=tmpfs_mb, reveal=reveal, image=image if box.name == "docker" else None)), restart=restart,
            reference=run.reference)
        todo = []
        for sid, path, error in list_submissions(submissions_dir):
            sub = Submission(sid, path.name, timestamp=hand_in_time(path))
            if error:
                sub.status, sub.note = "rejected", error
            submissions.append(sub)
            todo.append((sub, path))

        def one(item) -> Submission:
            sub, archive = item
            started = time.perf_counter()
            key = ""
            if sub.status == "graded":
                key = archive_sha256(archive)
                key = key and f"{key}:{'cleared' if sub.student in run.clear_flags else 'as-is'}"
                saved = store.load(sub.student, key)
                if saved is not None and saved.archive == sub.archive:
                    if verbose:
                        print(f"{sub.student}: {saved.status} (kept from an earlier run: archive and course "
                              f"unchanged)", flush=True)
                    return saved
                try:
                    run.grade_one(sub, archive)
                except Exception as error:  # noqa: BLE001 - one broken submission never stops the batch
                    sub.status, sub.note = "error", run.redact(f"the grader failed on this submission: "
                                                               f"{type(error).__name__}: {error}")
                finally:
                    shutil.rmtree(work / "overlay" / sub.student, ignore_errors=True)
                    shutil.rmtree(work / "extract" / sub.student, ignore_errors=True)
            if sub.status != "graded":
                sub.task_scores = {t.id: 0.0 for t in course.tasks if t.autograded}
                sub.cell_scores = {}
            if received:  # a signal whose exception was lost: stop here, before this result is kept
                raise Stopped(received[0])
            if box.stopped:  # its sandboxes were refused or killed: the result is not the submission's
                raise Stopped(0)
            if key:
                store.save(sub, key)
            if verbose:
                total = sum(sub.task_scores.values()) + sum(v or 0 for v in sub.cell_scores.values())
                steps = ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.get(sub.student, {}).items())
                print(f"{sub.student}: {sub.status} {total:.2f} in {time.perf_counter() - started:.1f} s"
                      + (f" [{steps}]" if steps else "") + (f" ({sub.note})" if sub.note else ""), flush=True)
            return sub

        if jobs > 1:
            from concurrent.futures import ThreadPoolExecutor
            pool = ThreadPoolExecutor(max_workers=jobs)
            try:
                submissions = list(pool.map(one, todo))
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
        else:
            submissions = [one(item) for item in todo]
        if received:
            raise Stopped(received[0])
        layout = run.layout
        released = {Path(rel).stem: json.loads((run.student_release / rel).read_text(encoding="utf-8"))
                    for rel in run.notebooks}
    except BaseException:
        box.stop_all()  # running sandboxes are killed, new ones refused, so the workers end quickly
        if pool is not None:
            pool.shutdown(wait=True)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        clear_staging()
        for number, handler in previous.items():
            signal.signal(number, handler)

    # the outputs are written with SIGINT/SIGTERM held back, so a signal now takes effect after them
    held = {signal.SIGINT, signal.SIGTERM}
    if main_thread:
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        write_gradebook(output_dir / "gradebook.db", assignment, layout, submissions)
        rows = write_grades_csv(output_dir / "grades.csv", course, layout, submissions)
        for sub in submissions:
            write_private(output_dir / "feedback" / f"{sub.student}.md", feedback(sub, course, layout, reveal))
        write_course_layout(output_dir, course, assignment, {Path(r).stem: nb for r, nb in run.notebooks.items()},
                            released, submissions, status_line)
    finally:
        if main_thread:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
    if verbose:
        print(f"graded {len(submissions)} submissions -> {output_dir / 'grades.csv'}, {output_dir / 'gradebook.db'}")
    from .gradebook import grades_columns
    return pd.DataFrame(rows, columns=grades_columns(course, layout)[0])
