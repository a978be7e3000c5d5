"""Grading speed of ``course grade`` on this repository's coursework: seconds per submission, jobs 1 and 2.

The script releases the repository (``course release``), makes N submissions from the release with
``course handin`` (cycling through three kinds: ``correct`` = every released file that differs from the
instructor's copy replaced by the instructor's, ``wrong`` = correct but diffusion_lib/guidance.py left as
released, ``untouched`` = the release as is), then grades the same folder once per ``--jobs`` value with
``python -m diffusion_lib course grade`` into a new output folder (a fresh process each, as an instructor runs it) and
prints, per run: the wall time, the fixed part (process start, the two releases, the sandbox probe, the
expected test ids collected in a clean copy, the final writes: everything before the first and after the
last submission's line), seconds per submission in between (wall time / N, so --jobs 2 counts
overlap), the projection for 100 submissions (fixed + 100 x per submission), and the mean seconds of
each step (task / notebook) inside one submission. The score of every kind is printed
too: a faster grader must give the same grades.

Usage: python benchmarks/grading.py [--n 6] [--jobs 1 2] [--sandbox auto|bwrap|docker] [--keep DIR]
       [--grader OLD_CHECKOUT --grader .]   (before/after: the graders take turns on the same submissions)
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("correct", "wrong", "untouched")
STEP = re.compile(r"(task [^,\]]+|notebook [^,\]]+) ([0-9.]+) s")


def make_submissions(repo: Path, work: Path, n: int) -> dict[str, str]:
    """N archives in ``work``/subs (student ids ``<kind>-<i>``); returns student -> kind."""
    from diffusion_lib.course.handin import ALLOWED_FOLDERS, handin
    from diffusion_lib.course.release import release

    released = release(repo, work / "release", verbose=False)
    changed = [p.relative_to(released).as_posix() for p in sorted(released.rglob("*")) if p.is_file()
               and p.relative_to(released).as_posix().startswith(tuple(f.rstrip("/") + "/" for f in ALLOWED_FOLDERS))
               and (repo / p.relative_to(released)).is_file()
               and (repo / p.relative_to(released)).read_bytes() != p.read_bytes()]
    kinds = {}
    (work / "subs").mkdir()
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        copy = work / f"copy-{i}"
        shutil.copytree(released, copy, symlinks=True)
        if kind != "untouched":
            for rel in changed:
                if not (kind == "wrong" and rel == "diffusion_lib/guidance.py"):
                    shutil.copyfile(repo / rel, copy / rel)
        student = f"{kind}-{i}"
        handin(copy, work / "subs" / f"{student}.tar.gz", allow_empty=True, verbose=False)
        shutil.rmtree(copy)
        kinds[student] = kind
    return kinds


def grade_once(subs: Path, out: Path, repo: Path, jobs: int, sandbox: str, grader: Path = ROOT) -> dict:
    """One ``course grade`` process (the diffusion_lib of ``grader``); its wall time, fixed and grading
    seconds, per-step seconds and grades.csv rows."""
    command = [sys.executable, "-m", "diffusion_lib", "course", "grade", str(subs), "--output", str(out),
               "--repo", str(repo), "--jobs", str(jobs), "--sandbox", sandbox]  # a new --output: nothing to resume
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=grader, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(grader)))
    lines = [(time.perf_counter() - started, line) for line in process.stdout]  # each line when it came
    stderr = process.stderr.read()
    process.wait()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"course grade failed ({process.returncode}): {stderr[-3000:]}")
    done = [(t, line) for t, line in lines if re.match(r"^\S+: (graded|rejected|error) ", line)]
    finished = max(t for t, _ in done)
    # set up (releases, probe, expected ids) until "collected in"; an older grader without that line: until
    # the first submission started (its line's time less its own "in N s")
    ready = next((t for t, line in lines if "collected in" in line), None)
    if ready is None:
        t, line = done[0]
        ready = t - float(re.search(r" in ([0-9.]+) s", line).group(1))
    steps = defaultdict(list)
    for _, line in lines:
        for name, value in STEP.findall(line):
            steps[name].append(float(value))
    rows = {r["student"]: r for r in csv.DictReader((out / "grades.csv").open())}
    return {"seconds": seconds, "grading": finished - ready, "fixed": seconds - (finished - ready),
            "steps": steps, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=6, help="submissions to generate (default 6)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to time (default 1 2)")
    parser.add_argument("--sandbox", default="auto", choices=("auto", "bwrap", "docker"))
    parser.add_argument("--repo", default=str(ROOT), help="instructor repository (default: this one)")
    parser.add_argument("--keep", help="keep the generated submissions and outputs in this folder")
    parser.add_argument("--grader", action="append", default=[],
                        help="checkout whose grader to time (repeatable, taking turns per --jobs value; "
                             "default: this one), e.g. an older commit's worktree for a before/after ratio")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n {args.n}: must be at least 1")
    repo = Path(args.repo).resolve()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="grading-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        kinds = make_submissions(repo, work, args.n)
        print(f"{args.n} submissions ({', '.join(f'{k}: {list(kinds.values()).count(k)}' for k in KINDS)}), "
              f"sandbox {args.sandbox}")
        print(f"{'jobs':>4s} {'total s':>8s} {'fixed s':>8s} {'s/submission':>13s} {'100 projected':>14s}")
        results = {}
        graders = [Path(g).resolve() for g in args.grader] or [ROOT]
        for jobs in args.jobs:
            for number, grader in enumerate(graders):
                key = f"{jobs}" + (f" {grader.name}" if len(graders) > 1 else "")
                result = results[key] = grade_once(work / "subs", work / f"out-jobs{jobs}-{number}", repo, jobs,
                                                   args.sandbox, grader)
                per = result["grading"] / args.n
                projected = result["fixed"] + 100 * per
                print(f"{key:>4s} {result['seconds']:8.1f} {result['fixed']:8.1f} {per:13.1f} "
                      f"{projected / 60:10.1f} min", flush=True)
        for jobs, result in results.items():
            means = ", ".join(f"{name} {statistics.mean(v):.1f} s" for name, v in sorted(result["steps"].items()))
            print(f"jobs {jobs}, mean per submission: {means}")
            scores = defaultdict(set)
            for student, row in result["rows"].items():
                scores[kinds.get(student, "?")].add(f"{row['auto_total']}/{row['auto_max']}")
            print(f"jobs {jobs}, auto scores: " + "; ".join(f"{k} {sorted(v)}" for k, v in sorted(scores.items())))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
