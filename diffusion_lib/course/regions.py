"""Regions that teach: show the library's own code in the notebooks instead of copying it.

The training step (``diffusion.training_loss``), the prediction step the samplers share
(``sampling.predict_x0_and_eps``) and each sampler's update (``sampling.ddpm_sample``,
``sampling.ddim_sample``, ``sampling.dpm_solver_sample``) keep their core lines between a line
``# Start`` and a line ``# End``. Notebook 04 and homework part 2 show those regions with
:func:`show_region` (the text: :func:`region_source`), so what students read is always the code
that runs::

    from diffusion_lib.course.regions import show_region
    show_region(training_loss)       # last expression of a cell: highlighted source
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Callable

START_MARKER = "# Start"
END_MARKER = "# End"


def region_source(func: Callable, dedent: bool = True) -> str:
    """The source lines between ``# Start`` and ``# End`` inside ``func``.

    Args:
        func: a function (or method) whose source holds exactly one ``# Start`` line followed by
            one ``# End`` line (the marker alone on its line, indentation allowed).
        dedent: remove the common leading indentation.

    Returns:
        The lines strictly between the markers, newline-terminated.

    Raises:
        ValueError: the source cannot be read, or the markers are missing, repeated or out of order.
    """
    try:
        lines = inspect.getsource(func).splitlines()
    except (OSError, TypeError) as error:
        raise ValueError(f"cannot read the source of {func!r}: {error}") from error
    starts = [i for i, line in enumerate(lines) if line.strip() == START_MARKER]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER]
    name = getattr(func, "__qualname__", repr(func))
    if len(starts) != 1 or len(ends) != 1 or ends[0] <= starts[0]:
        raise ValueError(f"{name} must contain one {START_MARKER!r} line followed by one {END_MARKER!r} line; "
                         f"found {len(starts)} start and {len(ends)} end markers")
    region = "\n".join(lines[starts[0] + 1:ends[0]]) + "\n"
    return textwrap.dedent(region) if dedent else region


def show_region(func: Callable):
    """The ``# Start`` / ``# End`` region of ``func`` as an ``IPython.display.Code`` object.

    As the last expression of a notebook cell (or passed to ``display``) it renders as
    syntax-highlighted Python; ``str()`` of it is the plain source.

    Args:
        func: as :func:`region_source`.

    Returns:
        ``IPython.display.Code`` of the dedented region, language "python".

    Raises:
        ValueError: as :func:`region_source`.
        ImportError: IPython is not installed (it comes with the ``notebooks`` extra).
    """
    from IPython.display import Code

    return Code(region_source(func), language="python")
