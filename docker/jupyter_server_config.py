"""JupyterLab server settings for the diffusion_lib image, standalone (one user, one token).

Loaded by docker/start-lab.sh with ``--config``; tests/test_jupyterlab_browser.py starts
the server through the same script, so the browser test checks exactly these settings.
Everything except the token is in jupyter_common_config.py, which a server spawned by
JupyterHub loads too (jupyter_singleuser_config.py); there the hub authenticates.

The token comes from the JUPYTER_TOKEN environment variable (start-lab.sh generates one
when it is empty). An empty or short token stops the server here as well, so the server
never runs unprotected even when started without the script. Settings made after this file
(command line, other config files) cannot empty the token either: docker/lab_server.py
checks the server's identity provider once everything is loaded and refuses to start
without the token (tests/test_lab_token.py).
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

# Serving, landing page, offline, kernel, trash, TensorBoard: shared with the JupyterHub server.
# Named with its folder: traitlets' load_subconfig ignores a file it cannot find, and this one must load.
_common = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jupyter_common_config.py")
if not os.path.isfile(_common):
    raise SystemExit(f"refusing to start JupyterLab: {_common} is missing")
load_subconfig(_common)  # noqa: F821 (injected by traitlets when it loads this file)
