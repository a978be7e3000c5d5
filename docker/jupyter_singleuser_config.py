"""Settings of the server JupyterHub spawns from this image (docker/start-singleuser.sh).

The hub authenticates (its OAuth, through JUPYTERHUB_API_TOKEN and the JUPYTERHUB_* variables
the spawner sets), so there is no token here; everything else is the standalone server's
(jupyter_common_config.py). The address and base URL come from JUPYTERHUB_SERVICE_URL.
"""

import os

c = get_config()  # noqa: F821 (injected by traitlets when it loads this file)

# Named with its folder: traitlets' load_subconfig ignores a file it cannot find, and this one must load.
_common = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jupyter_common_config.py")
if not os.path.isfile(_common):
    raise SystemExit(f"refusing to start JupyterLab: {_common} is missing")
load_subconfig(_common)  # noqa: F821 (injected by traitlets when it loads this file)
