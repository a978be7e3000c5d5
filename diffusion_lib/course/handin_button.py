"""A "Hand in" button for a notebook cell: ``course handin --submit`` without a terminal.

``handin.ipynb`` at the root of the release shows it. One click packs the release as ``course handin``
does (:func:`~diffusion_lib.course.handin.handin`) and, in a server of the course's JupyterHub (where
``$COURSE_HANDIN_DIR`` names the student's own hand-in folder), copies the archive there
(:func:`~diffusion_lib.course.handin.submit`), replacing an earlier hand-in. Without a hub it writes the
archive and says to hand that file in as the instructor asks. Everything the command would print (the
table of what was packed, what was left out and why, the hand-in time) appears under the button.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import NamedTuple

from .handin import NothingToHandIn, handin, submit


class HandinOutcome(NamedTuple):
    """What one click did: ``state`` is "submitted" (in the hand-in folder), "written" (the archive only: no
    hub) or "refused" (nothing written or submitted); ``text`` is everything printed, for the student."""
    state: str
    text: str


def hand_in(root: str | Path = ".", output: str | Path | None = None, *, allow_empty: bool = False,
            handin_dir: str | Path | None = None) -> HandinOutcome:
    """What the button does: pack ``root`` into ``output`` and submit it to ``handin_dir``.

    Args:
        root: the release folder (the student's copy; ``handin.ipynb`` sits at its top, so ".").
        output: the archive (default ``<root>/submission.tar.gz``, as ``course handin``).
        allow_empty: hand in even when no file differs from the release.
        handin_dir: the hand-in folder (default ``$COURSE_HANDIN_DIR``; unset outside the course's hub,
            and then the archive is only written).

    Returns:
        :class:`HandinOutcome`. Nothing raises for the student's own mistakes: an untouched release, a missing
        hand-in folder or a bad archive name come back as state "refused" with the reason at the end of the text.
    """
    handin_dir = handin_dir if handin_dir is not None else os.environ.get("COURSE_HANDIN_DIR") or None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            result = handin(root, output, allow_empty=allow_empty, named_by_archive=handin_dir is None)
            if handin_dir is None:
                print(f"\nNo course hub here ($COURSE_HANDIN_DIR is not set): hand in {result.archive} "
                      "as your instructor says.")
                return HandinOutcome("written", printed.getvalue())
            submit(result.archive, handin_dir)
        except (NothingToHandIn, FileNotFoundError, ValueError) as error:
            return HandinOutcome("refused", printed.getvalue() + f"\nNot handed in: {error}")
    return HandinOutcome("submitted", printed.getvalue())


STATUS = {"submitted": ("green", "Handed in."),
          "written": ("#a60", "Archive written, not handed in: there is no course hub here (see below)."),
          "refused": ("#b00", "Not handed in (the reason is at the end below).")}


def handin_button(root: str | Path = ".", output: str | Path | None = None):
    """The widget for a notebook cell: a "Hand in" button, an "allow an empty hand-in" box, and the output.

    Args:
        root, output: as :func:`hand_in`.

    Returns:
        an ``ipywidgets.VBox`` (display it as a cell's last expression). Clicking runs :func:`hand_in`;
        the button is disabled while it runs; a line says what happened (STATUS) and the text shows under it.

    Raises:
        ImportError: ipywidgets is missing (it is in requirements.txt); ``python -m diffusion_lib course
            handin --submit`` in a terminal does the same.
    """
    import ipywidgets as widgets

    button = widgets.Button(description="Hand in", button_style="primary", icon="upload",
                            tooltip="pack your work and hand it in (replaces an earlier hand-in)")
    empty = widgets.Checkbox(value=False, description="hand in even if nothing changed", indent=False)
    status = widgets.HTML()
    log = widgets.Output(layout={"border": "1px solid #ccc", "max_height": "24em", "overflow": "auto"})

    def on_click(_):
        button.disabled, status.value = True, "<i>packing ...</i>"
        log.clear_output()
        try:
            outcome = hand_in(root, output, allow_empty=empty.value)
        finally:
            button.disabled = False
        colour, word = STATUS[outcome.state]
        status.value = f'<b style="color:{colour}" class="course-handin-{outcome.state}">{word}</b>'
        with log:
            print(outcome.text)

    button.on_click(on_click)
    return widgets.VBox([widgets.HBox([button, empty]), status, log])
