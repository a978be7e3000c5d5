"""formgrader's settings when JupyterLab runs in the instructor repository (the instructor's hub server).

nbgrader reads ``nbgrader_config.py`` from the server's working folder, which is this repository's top in the
instructor image. It points formgrader at the grading folder that ``course grade`` wrote, by loading that
folder's own ``nbgrader_config.py`` (course id, gradebook, sanitized HTML): ``$COURSE_GRADING_DIR`` (the
course's hub mounts the host's grading folder there for staff, docs/class.md), else ``grading/`` here, the
default ``--output`` of ``course grade``. Until a grading folder exists formgrader shows nbgrader's defaults.
Instructor-only (coursework/tasks.yaml): students get no grader.
"""

import os

c = get_config()  # noqa: F821 (nbgrader's config loader defines it)

_grading = os.environ.get("COURSE_GRADING_DIR") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                 "grading")
_config = os.path.join(_grading, "nbgrader_config.py")
if os.path.isfile(_config) and not os.path.islink(_config):
    load_subconfig(_config)  # noqa: F821 (defined by traitlets' loader, like get_config)
