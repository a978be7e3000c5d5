#!/usr/bin/env bash
# Start JupyterLab the one way the image does (CMD) and tests/test_jupyterlab_browser.py does.
#
# Environment:
#   JUPYTER_TOKEN        login token; empty or unset: a random one is generated and printed.
#                        Shorter than 12 characters or containing spaces: refused.
#   JUPYTER_IP           address to listen on (default 0.0.0.0 inside the container; compose
#                        publishes the port on the host's 127.0.0.1 only).
#   JUPYTER_PORT         port to listen on (default 8888).
#   JUPYTER_PUBLIC_PORT  port the host sees, only for the printed URL (default JUPYTER_PORT).
#   JUPYTER_ROOT_DIR     server root (default: the folder above docker/, i.e. /workspace).
# Extra arguments are passed on to JupyterLab, except those that would change its
# authentication or replace docker/jupyter_server_config.py (token, password, identity
# provider, login handler, XSRF, tornado settings, config file): those are refused here.
#
# Spawned by JupyterHub (JUPYTERHUB_API_TOKEN set): hands over to docker/start-singleuser.sh, where
# the hub authenticates; JUPYTER_TOKEN plays no part there.
#
# The server runs as docker/lab_server.py, which is `jupyter lab` plus a check inside the
# server: once fully configured, it must hold the token (or it exits before listening), and
# JUPYTER_TOKEN is removed from its environment so that kernels and terminals do not inherit it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root_dir="${JUPYTER_ROOT_DIR:-$(dirname "$here")}"
ip="${JUPYTER_IP:-0.0.0.0}"
port="${JUPYTER_PORT:-8888}"
public_port="${JUPYTER_PUBLIC_PORT:-$port}"
token="${JUPYTER_TOKEN:-}"

if [[ -n "${JUPYTERHUB_API_TOKEN:-}" ]]; then
    exec "${here}/start-singleuser.sh" "$@"
fi

for arg in "$@"; do
    lower="${arg,,}"
    case "$lower" in
        -*token* | -*password* | -*identityprovider* | -*identity_provider* | -*login_handler* \
        | -*logout_handler* | -*xsrf* | -*tornado_settings* | -*authorizer* | -*config_file* \
        | --config | --config=* | -*allow_unauthenticated*)
            echo "start-lab: refusing to start: argument '${arg%%=*}' would change JupyterLab's" \
                 "authentication or replace docker/jupyter_server_config.py; set the token with" \
                 "JUPYTER_TOKEN instead." >&2
            exit 64
            ;;
    esac
done

if [[ -z "$token" ]]; then
    token="$(python -c 'import secrets; print(secrets.token_hex(24))')"
    echo "start-lab: JUPYTER_TOKEN is not set; generated a random token for this run."
fi
if (( ${#token} < 12 )) || [[ "$token" =~ [[:space:]] ]]; then
    echo "start-lab: refusing to start: JUPYTER_TOKEN must be at least 12 characters without" \
         "spaces (or leave it empty to have one generated)." >&2
    exit 64
fi
export JUPYTER_TOKEN="$token"

extra=()
if [[ "$(id -u)" == "0" ]]; then
    extra+=(--allow-root)
fi

echo "start-lab: open http://127.0.0.1:${public_port}/lab?token=${token}"
exec python "${here}/lab_server.py" \
    --config="${here}/jupyter_server_config.py" \
    --ServerApp.ip="${ip}" \
    --ServerApp.port="${port}" \
    --ServerApp.root_dir="${root_dir}" \
    --no-browser \
    "${extra[@]}" "$@"
