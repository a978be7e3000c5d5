"""NativeAuthenticator for JupyterHub 6: sign-up, admin authorisation and login as NativeAuthenticator does them.

NativeAuthenticator 1.3.0, its latest release, was written for JupyterHub 5. JupyterHub 6 removed statsd
(jupyterhub#5407), which NativeAuthenticator's login handler still uses to time a login, and now renders
the login page's errors through ``_render(**ns)``, which NativeAuthenticator's ``_render`` does not accept:
on JupyterHub 6.1.1 every login answers HTTP 500 (tests/test_hub.py found it). ``CourseNativeAuthenticator``
serves the same pages with a login handler that has neither problem; everything else (sign-up, the
/hub/authorize page, passwords, settings under ``c.NativeAuthenticator``) is NativeAuthenticator's own.
Drop this module when a NativeAuthenticator release supports JupyterHub 6.
"""

from nativeauthenticator import NativeAuthenticator
from nativeauthenticator import handlers


class _NoMetrics:
    """Stands in for the statsd client JupyterHub 6 no longer has: timers that record nothing."""

    def timer(self, name):
        return self

    def start(self):
        return self

    def stop(self, send=True):
        return None


class CourseLoginHandler(handlers.LoginHandler):
    """NativeAuthenticator's /hub/login, with no statsd timer and JupyterHub 6's ``_render`` signature."""

    statsd = _NoMetrics()

    def _render(self, login_error=None, username=None, **_ignored):
        return super()._render(login_error=login_error, username=username)


class CourseNativeAuthenticator(NativeAuthenticator):
    """NativeAuthenticator whose /hub/login works on JupyterHub 6 (see the module's docstring)."""

    def get_handlers(self, app):
        return [(path, CourseLoginHandler if handler is handlers.LoginHandler else handler)
                for path, handler in super().get_handlers(app)]
