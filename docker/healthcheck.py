"""The image's HEALTHCHECK: healthy when the Jupyter server answers on its own address.

Standalone (docker/start-lab.sh), the server listens on JUPYTER_PORT (default 8888) at the root;
spawned by JupyterHub, on the port and base URL of JUPYTERHUB_SERVICE_URL (e.g.
http://0.0.0.0:8888/user/alice/). `<base>/api` answers without authentication (it reports the
server's version only), so the check needs no token. Exit status 0: healthy; 1: not (yet).
"""

import os
import sys
import urllib.request
from urllib.parse import urlparse


def api_url(environ=os.environ) -> str:
    """The loopback URL of the running server's `/api` endpoint."""
    service = environ.get("JUPYTERHUB_SERVICE_URL")
    if service:
        parsed = urlparse(service)
        base = parsed.path if parsed.path.endswith("/") else parsed.path + "/"
        return f"http://127.0.0.1:{parsed.port or 8888}{base}api"
    return f"http://127.0.0.1:{environ.get('JUPYTER_PORT') or 8888}/api"


def main() -> int:
    try:
        with urllib.request.urlopen(api_url(), timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"healthcheck: {api_url()}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
