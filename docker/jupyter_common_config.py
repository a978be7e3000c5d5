"""Server settings shared by both ways the image serves JupyterLab.

Loaded by jupyter_server_config.py (standalone, token) and jupyter_singleuser_config.py
(spawned by JupyterHub, which authenticates), so one user's server and a class's servers
offer the same landing page, kernel, trash and TensorBoard.
"""

import os

c = get_config()  # noqa: F821 (injected by traitlets when it loads this file)

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

# Deleting in Lab moves to the trash (send2trash, freedesktop layout) instead of deleting for
# good: files under the home folder's file system go to ~/.local/share/Trash, files on a
# mounted host folder to a `.Trash-<uid>` folder at the top of that mount, where they can be
# restored on the host. If no trash can be made there, the deletion fails instead of
# deleting permanently (jupyter_server answers 400 "send2trash failed").
c.FileContentsManager.delete_to_trash = True

# TensorBoard inside JupyterLab (jupyter-server-proxy): the Launcher's "TensorBoard" tile, or
# <lab url>/tensorboard/, starts `tensorboard --logdir runs` behind the server's token. The
# `%tensorboard` magic in a notebook shows its frame through the same proxy (/proxy/<port>/).
c.ServerProxy.servers = {
    "tensorboard": {
        "command": ["tensorboard", "--logdir", os.environ.get("TENSORBOARD_LOGDIR", "runs"), "--port", "{port}",
                    "--host", "127.0.0.1", "--path_prefix", "{base_url}tensorboard"],
        "absolute_url": True,
        "timeout": 60,
        "launcher_entry": {"title": "TensorBoard"},
    }
}
os.environ.setdefault("TENSORBOARD_PROXY_URL", "/proxy/%PORT%/")  # read by tensorboard.notebook in the kernels
