#!/usr/bin/env bash
# Start the server of one student of a JupyterHub (DockerSpawner, KubeSpawner), the docker-stacks way:
# the spawner starts the image's CMD (docker/start-lab.sh), which hands over to this script when the
# hub's JUPYTERHUB_API_TOKEN is set; or the hub names it (`c.DockerSpawner.cmd = "start-singleuser.sh"`,
# on PATH in the image). Extra arguments go to jupyterhub-singleuser.
#
# The hub authenticates (OAuth through JUPYTERHUB_API_TOKEN); the address, port and base URL come from
# JUPYTERHUB_SERVICE_URL, set by the spawner. Settings: docker/jupyter_singleuser_config.py, which
# shares everything but the token with the standalone server (docker/jupyter_common_config.py).
set -euo pipefail

here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
root_dir="${JUPYTER_ROOT_DIR:-$(dirname "$here")}"

if [[ -z "${JUPYTERHUB_API_TOKEN:-}" ]]; then
    echo "start-singleuser: refusing to start: JUPYTERHUB_API_TOKEN is not set; this script starts a" \
         "server spawned by JupyterHub. For one user, run docker/start-lab.sh (the image's CMD)." >&2
    exit 64
fi

echo "start-singleuser: serving ${root_dir} for JupyterHub user ${JUPYTERHUB_USER:-?} at ${JUPYTERHUB_SERVICE_URL:-?}"
exec jupyterhub-singleuser \
    --config="${here}/jupyter_singleuser_config.py" \
    --ServerApp.root_dir="${root_dir}" \
    "$@"
