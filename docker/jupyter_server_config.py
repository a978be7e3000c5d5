"""JupyterLab server settings for the diffusion_lib image.

Loaded by docker/start-lab.sh with ``--config``; tests/test_jupyterlab_browser.py starts
the server through the same script, so the browser test checks exactly these settings.

The token comes from the JUPYTER_TOKEN environment variable (start-lab.sh generates one
when it is empty). An empty or short token stops the server here as well, so the server
never runs unprotected even when started without the script.
"""

import os

MIN_TOKEN_LENGTH = 12

c = get_config()  # noqa: F821 (injected by traitlets when it loads this file)

token = os.environ.get("JUPYTER_TOKEN", "")
if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in token):
    raise SystemExit(
        f"refusing to start JupyterLab: JUPYTER_TOKEN must be at least {MIN_TOKEN_LENGTH} "
        "characters without spaces (leave it unset in .env to have one generated)"
    )

# Authentication: token only, no password login, token cannot be swapped for a password.
c.IdentityProvider.token = token
c.PasswordIdentityProvider.allow_password_change = False

# Serving: no browser inside the container; fail instead of silently moving to another
# port (the compose port mapping points at one port).
c.ServerApp.open_browser = False
c.ServerApp.port_retries = 0

# Landing page: the notebooks folder under the server root (the repository / /workspace).
c.LabApp.default_url = "/lab/tree/notebooks"

# Offline: no update checks, news feed or extension search (the course runs without internet).
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.news_url = None
c.LabApp.extension_manager = "readonly"

# Kernel: only the project's kernel. The Dockerfile registers it under the name "python3"
# (display name "Python (diffusion_lib)"), the kernelspec name the notebooks are stored with,
# so they open on it directly and papermill's `-k python3` runs the same kernel.
c.KernelSpecManager.allowed_kernelspecs = {"python3"}
c.MultiKernelManager.default_kernel_name = "python3"

# Deleting a file deletes it: a trash folder would land inside the mounted host folders.
c.FileContentsManager.delete_to_trash = False
