"""JupyterLab, started by docker/start-lab.sh, that refuses to serve without its token.

``python docker/lab_server.py ARGS`` is ``jupyter lab ARGS`` with one addition: once the
server is fully configured (command line, environment, every config file, extension config),
and before it listens, the server's own identity provider is checked. The server starts only
when it authenticates by a token of at least MIN_TOKEN_LENGTH characters without spaces, with
the stock identity provider and login handler, no password login, and XSRF checks on.
Otherwise it exits with status 1 and a message naming the problem.

Checking the final objects rather than the arguments covers every way to change the token:
``--IdentityProvider.token=``, ``--ServerApp.token=`` (the deprecated alias), JUPYTER_TOKEN /
JUPYTER_TOKEN_FILE, config files (``--config``, jupyter_lab_config.* in JUPYTER_CONFIG_DIR),
``--ServerApp.password`` / ``--PasswordIdentityProvider.hashed_password``,
``--ServerApp.identity_provider_class`` and ``ServerApp.tornado_settings``.

The token also leaves the process environment before anything is started, so kernels and
terminals (which inherit it) never see JUPYTER_TOKEN.
"""

import os
import sys

from jupyter_server.auth.identity import PasswordIdentityProvider
from jupyter_server.auth.login import LoginFormHandler
from jupyter_server.serverapp import ServerApp
from jupyterlab.labapp import LabApp

MIN_TOKEN_LENGTH = 12
TOKEN_ENV = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE")


def auth_problems(app):
    """What is wrong with a configured server's authentication (an empty list: nothing)."""
    problems = []
    provider = getattr(app, "identity_provider", None)
    if type(provider) is not PasswordIdentityProvider:
        problems.append(
            f"the identity provider is {type(provider).__name__}, not PasswordIdentityProvider "
            "(ServerApp.identity_provider_class or ServerApp.login_handler_class was changed)"
        )
        return problems
    token = provider.token or ""
    if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in token):
        problems.append(
            f"the server's token is {'empty' if not token else 'too short or contains spaces'}; "
            f"it must be at least {MIN_TOKEN_LENGTH} characters without spaces "
            "(set by JUPYTER_TOKEN; IdentityProvider.token / ServerApp.token must not override it)"
        )
    if provider.hashed_password:
        problems.append("a password is configured; this server logs in by token only")
    if provider.login_handler_class is not LoginFormHandler:
        problems.append("IdentityProvider.login_handler_class was changed")
    if not provider.auth_enabled:
        problems.append("authentication is disabled")
    settings = getattr(getattr(app, "web_app", None), "settings", None)
    if settings is None:
        problems.append("the web application is not initialised")
    else:
        if settings.get("disable_check_xsrf") or not settings.get("xsrf_cookies", False):
            problems.append("XSRF checks are disabled (ServerApp.disable_check_xsrf)")
        if settings.get("identity_provider") is not provider or settings.get("token") != token:
            problems.append("tornado_settings override the identity provider or the token")
    return problems


class TokenOnlyServerApp(ServerApp):
    """ServerApp that checks its authentication after initialisation and before it listens."""

    def initialize(self, *args, **kwargs):
        super().initialize(*args, **kwargs)
        if not self._dispatching:
            self.require_token()

    def start_app(self):
        self.require_token()
        super().start_app()

    def require_token(self):
        problems = auth_problems(self)
        if problems:
            for problem in problems:
                self.log.critical("refusing to start JupyterLab: %s", problem)
            print(
                "lab_server: refusing to start JupyterLab: " + "; ".join(problems),
                file=sys.stderr,
                flush=True,
            )
            self.exit(1)
        # Kernels and terminals inherit the server's environment: take the token out of it.
        for name in TOKEN_ENV:
            os.environ.pop(name, None)


def main(argv=None):
    LabApp.serverapp_class = TokenOnlyServerApp
    return LabApp.launch_instance(argv=argv)


if __name__ == "__main__":
    sys.exit(main())
