"""``python -m diffusion_lib course {release, check, handin, grade}``.

The handlers import their modules lazily, so ``--help`` imports neither torch nor nbgrader.
"""

from __future__ import annotations

import argparse
import sys


def _release(args) -> int:
    from .release import release
    release(args.repo, args.output, force=args.force)
    return 0


def _check(args) -> int:
    from .check import _is_done, check
    table = check(args.root, run_notebooks=args.notebooks, timeout_s=args.timeout)
    return 0 if all(_is_done(str(s)) for s in table["status"]) else 1


def _handin(args) -> int:
    import os

    from .handin import NothingToHandIn, handin, submit
    if args.submit and not os.environ.get("COURSE_HANDIN_DIR"):
        print("handin: --submit needs the course's hand-in folder, but COURSE_HANDIN_DIR is not set (the course's "
              "JupyterHub sets it in your server); without a hub, hand in the archive as your instructor says",
              file=sys.stderr)
        return 2
    try:
        result = handin(args.root, args.output, include=tuple(args.include or ()), max_file_mb=args.max_file_mb,
                        max_total_mb=args.max_total_mb, allow_empty=args.allow_empty, named_by_archive=not args.submit)
    except NothingToHandIn as error:
        print(f"handin: {error}", file=sys.stderr)
        return 2
    if args.submit:
        try:
            submit(result.archive, os.environ["COURSE_HANDIN_DIR"])
        except (FileNotFoundError, ValueError) as error:
            print(f"handin: {error}", file=sys.stderr)
            return 2
    return 0


def _collect(args) -> int:
    import datetime as dt

    from .collect import collect
    try:
        deadline = dt.datetime.fromisoformat(args.deadline) if args.deadline else None
        collect(args.handins, args.output, deadline=deadline)
    except (FileNotFoundError, ValueError) as error:
        print(f"course collect: {error}", file=sys.stderr)
        return 2
    return 0


def _grade(args) -> int:
    import sys

    import signal

    from .grade import grade
    try:
        grade(args.submissions, args.output, args.repo, timeout_s=args.timeout,
              notebook_timeout_s=args.notebook_timeout, memory_mb=args.memory_mb or None, jobs=args.jobs,
              sandbox=args.sandbox, image=args.image, unsafe=args.unsafe, reveal=args.reveal,
              clear_flags=tuple(args.clear_flag or ()), restart=args.restart)
    except RuntimeError as error:
        print(f"course grade: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", 0) or signal.SIGINT
        print(f"course grade: stopped ({signal.Signals(signum).name}); the submissions finished so far are "
              f"kept in {args.output}/state and the next run resumes (--restart grades everything again)",
              file=sys.stderr)
        return 128 + signum
    return 0


def add_course_command(subparsers) -> None:
    """Register ``course`` and its four subcommands on the top-level CLI's subparsers."""
    course = subparsers.add_parser(
        "course", help="coursework: release the student copy, self-check, hand in, grade",
        description="Coursework tools (format: coursework/tasks.yaml, solution regions marked with nbgrader's "
                    "markers, # Start/# End annotation regions). Instructor: release, grade. Student: check, handin.")
    commands = course.add_subparsers(dest="course_command", required=True, metavar="{release,check,handin,collect,grade}",
                                      help="release, check, handin, collect or grade")

    rel = commands.add_parser("release", help="write the student release (stubs, empty annotation slots, "
                                              "no hidden tests), then verify nothing leaked")
    rel.add_argument("--repo", default=".", help="instructor repository (default: current folder)")
    rel.add_argument("--output", help="release folder (default: ../<repo name>-student)")
    rel.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    rel.set_defaults(func=_release)

    chk = commands.add_parser("check", help="student self-check: public tests, annotation slots, notebooks; "
                                            "a table of what is done (exit 1 while something is not)")
    chk.add_argument("--root", default=".", help="the release folder (default: current folder)")
    chk.add_argument("--notebooks", action="store_true", help="also execute the homework notebooks (smoke profile)")
    chk.add_argument("--timeout", type=float, default=600, help="seconds per task's tests / notebook (default 600)")
    chk.set_defaults(func=_check)

    hand = commands.add_parser("handin", help="pack changed library files, notebooks, answers and chosen outputs "
                                              "into one archive with MANIFEST.json")
    hand.add_argument("--root", default=".", help="the release folder (default: current folder)")
    hand.add_argument("--output", help="archive, named <student-id>.tar.gz or .zip (default: submission.tar.gz)")
    hand.add_argument("--include", action="append", metavar="GLOB",
                      help="also hand in outputs matching GLOB (repeatable), e.g. 'runs/*/samples.png'")
    hand.add_argument("--max-file-mb", type=float, default=5.0, help="largest file (default 5 MB)")
    hand.add_argument("--max-total-mb", type=float, default=50.0, help="largest archive, uncompressed (default 50 MB)")
    hand.add_argument("--allow-empty", action="store_true",
                      help="hand in even when nothing differs from the release (refused otherwise, exit status 2)")
    hand.add_argument("--submit", action="store_true",
                      help="under the course's JupyterHub: also copy the archive into your hand-in folder "
                           "($COURSE_HANDIN_DIR), replacing an earlier hand-in; its time is your hand-in time")
    hand.set_defaults(func=_handin)

    col = commands.add_parser("collect", help="instructor: gather the hub's hand-in folders into a folder of "
                                              "<student>.tar.gz archives for grade")
    col.add_argument("handins", help="the hub's hand-in folder (one sub-folder per student)")
    col.add_argument("--output", default="submissions", help="folder of archives to write (default: submissions)")
    col.add_argument("--deadline", help="ISO time with timezone, e.g. 2026-12-15T23:59:00+01:00: later ones are LATE")
    col.set_defaults(func=_collect)

    grd = commands.add_parser("grade", help="grade a folder of archives in isolation -> nbgrader gradebook, "
                                            "grades.csv, feedback/<student>.md")
    grd.add_argument("submissions", help="folder of <student-id>.tar.gz / .zip archives")
    grd.add_argument("--output", default="grading", help="output folder (default: grading)")
    grd.add_argument("--repo", default=".", help="instructor repository (default: current folder)")
    grd.add_argument("--timeout", type=float, default=300, help="seconds for one task's tests (default 300)")
    grd.add_argument("--notebook-timeout", type=float, default=600,
                     help="seconds for one homework notebook's execution (default 600)")
    grd.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    grd.add_argument("--memory-mb", type=int, default=16384,
                     help="memory limit of one sandbox in MB; 0 = none (default 16384)")
    grd.add_argument("--sandbox", choices=("docker", "bwrap", "auto"), default="auto",
                     help="isolation engine: a container of --image, bubblewrap, or auto (docker, else bwrap)")
    grd.add_argument("--image", default="diffusion-lib-student",
                     help="the student image the containers run (default diffusion-lib-student)")
    grd.add_argument("--unsafe", action="store_true",
                     help="with no sandbox available, grade WITHOUT isolation (submissions run as you)")
    grd.add_argument("--reveal", action="store_true",
                     help="after the deadline: name hidden checks and show reference annotations in feedback")
    grd.add_argument("--clear-flag", action="append", metavar="STUDENT",
                     help="score a flagged submission after a person has reviewed it (repeatable)")
    grd.add_argument("--restart", action="store_true",
                     help="grade every submission again (by default a run resumes: a submission whose archive "
                          "and course are unchanged since it was graded keeps its recorded result)")
    grd.set_defaults(func=_grade)
