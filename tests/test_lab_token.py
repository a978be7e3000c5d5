"""JupyterLab never serves without its token, whatever arguments, environment or config say.

Each case starts a real server through docker/start-lab.sh (the image's CMD) on a free port of
127.0.0.1, with temporary HOME and Jupyter folders, and tries one known way to empty the token:

- arguments (``--IdentityProvider.token=``, ``--ServerApp.token=``, ...): start-lab.sh refuses
  them; given to docker/lab_server.py directly (no script), the server itself refuses to start;
- environment (``JUPYTER_TOKEN=""``, ``JUPYTER_TOKEN_FILE`` of an empty file): a token is
  generated, and every path refuses requests without it;
- config files in JUPYTER_CONFIG_DIR (jupyter_server_config.py / .json, jupyter_lab_config.py,
  jupyter_config.json) that set the token empty: the server refuses to start, or it starts
  with the token and refuses requests without it. (With start-lab.sh's ``--config``, the
  first three are not loaded and jupyter_config.json is overridden; its XSRF setting is not,
  and the server refuses to start.)

A case passes only with "refused to start, with the message, and nothing listened" or "every
path answers 403 (or redirects /lab to the login page) without the token". The started server
also shows the other settings: with the token /api/contents answers 200, a kernel and a
terminal started through the API have no JUPYTER_TOKEN (nor the token) in their environment,
a deletion goes to the trash, and SIGTERM stops the server together with its kernel.
"""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
START = REPO / "docker" / "start-lab.sh"
LAB_SERVER = REPO / "docker" / "lab_server.py"
SERVER_CONFIG = REPO / "docker" / "jupyter_server_config.py"
START_TIMEOUT_S = 60
REFUSAL = "refusing to start"

# Paths that must not answer without the token: (method, path).
PROTECTED = [
    ("GET", "/api/contents"),
    ("GET", "/api/contents/secret.txt"),
    ("GET", "/api/terminals"),
    ("POST", "/api/terminals"),
    ("GET", "/api/kernels"),
    ("POST", "/api/kernels"),
    ("GET", "/api/sessions"),
    ("GET", "/api/kernelspecs"),
    ("GET", "/lab"),
    ("GET", "/files/secret.txt"),
]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the image is Linux")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _request(port, method, path, token=None, query_token=None):
    url = f"http://127.0.0.1:{port}{path}"
    if query_token is not None:
        url += f"?token={query_token}"
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port):
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _env(tmp_path, port, token):
    """Clean environment: no inherited Jupyter settings, every Jupyter folder temporary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "secret.txt").write_text("secret\n")
    for name in ("home", "config", "data", "runtime", "ipython", "xdg-data"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(
        HOME=str(tmp_path / "home"),
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        JUPYTER_IP="127.0.0.1",
        JUPYTER_PORT=str(port),
        JUPYTER_ROOT_DIR=str(root),
        JUPYTER_TOKEN=token,
        OMP_NUM_THREADS="1",
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    return env


class Server:
    """A server process in its own process group; always stopped by `stop`."""

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self.port = int(env["JUPYTER_PORT"])
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.children = set()

    @property
    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait(self):
        """'up' once /api answers, or 'exited' (then the process has ended)."""
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return "exited"
            try:
                if _request(self.port, "GET", "/api")[0] == 200:
                    return "up"
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(
            f"JupyterLab neither started nor exited within {START_TIMEOUT_S} s:\n{self.log}"
        )

    def child_pids(self):
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.add(int(stat.parent.name))
        self.children |= pids
        return pids

    def stop(self):
        """SIGTERM (what `docker stop` sends), then SIGKILL; kernels have their own sessions."""
        if self.proc.poll() is None:
            self.child_pids()
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        for pid in self.children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _through_script(tmp_path, token, *args, **extra_env):
    port = _free_port()
    env = _env(tmp_path, port, token)
    env.update(extra_env)
    return Server(["bash", str(START), *args], env, tmp_path / "lab.log")


def _lab_server_directly(tmp_path, *args):
    """docker/lab_server.py as start-lab.sh runs it, without the script's argument check."""
    port = _free_port()
    env = _env(tmp_path, port, secrets.token_hex(16))
    cmd = [
        sys.executable, str(LAB_SERVER), f"--config={SERVER_CONFIG}", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", f"--ServerApp.root_dir={tmp_path / 'root'}", "--no-browser",
    ]
    if os.getuid() == 0:
        cmd.append("--allow-root")
    return Server(cmd + list(args), env, tmp_path / "lab.log")


def _printed_token(server):
    match = re.search(r"start-lab: open http://127\.0\.0\.1:\d+/lab\?token=(\S+)", server.log)
    assert match, server.log
    return match.group(1)


def _assert_protected(server, token):
    """Every path refuses requests without the token (or with a wrong one)."""
    for method, path in PROTECTED:
        for kwargs in ({}, {"token": "wrong-" + token}, {"query_token": ""}):
            status, headers, _ = _request(server.port, method, path, **kwargs)
            if path in ("/lab", "/files/secret.txt") and method == "GET" and status == 302:
                assert "/login" in headers["Location"], (path, kwargs, dict(headers))
            else:
                assert status == 403, (method, path, kwargs, status)


def _assert_refused(server, *needles):
    assert server.wait() == "exited", "the server must refuse to start"
    log = server.log
    assert server.proc.returncode != 0 and REFUSAL in log, log
    for needle in needles:
        assert needle in log, (needle, log)
    assert not _listening(server.port)
    assert "is running at" not in log


def _outcome(server):
    """'refused' (with the message, nothing listening) or the token the server holds."""
    state = server.wait()
    if state == "exited":
        _assert_refused(server)
        return "refused"
    token = _printed_token(server)
    _assert_protected(server, token)
    assert _request(server.port, "GET", "/api/contents", token=token)[0] == 200
    return token


@pytest.mark.parametrize(
    "arg", ["--IdentityProvider.token=", "--ServerApp.token=", "--ServerApp.token", "--config=x.py",
            "--ServerApp.disable_check_xsrf=True", "--ServerApp.password=sha1:x:y"],
)
def test_start_script_refuses_arguments_that_touch_authentication(tmp_path, arg):
    server = _through_script(tmp_path, secrets.token_hex(16), arg)
    try:
        assert server.proc.wait(timeout=30) == 64
        assert REFUSAL in server.log and arg.split("=")[0] in server.log, server.log
        assert "start-lab: open" not in server.log
    finally:
        server.stop()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--IdentityProvider.token="], "token is empty"),
        (["--ServerApp.token="], "token is empty"),
        (["--ServerApp.disable_check_xsrf=True"], "XSRF"),
        (["--IdentityProvider.token=", "--ServerApp.password=PASSWORD_HASH"], "password"),
        (["--ServerApp.identity_provider_class=jupyter_server.auth.identity.IdentityProvider"],
         "identity provider"),
    ],
    ids=["IdentityProvider.token", "ServerApp.token", "disable_check_xsrf", "password-no-token",
         "identity_provider_class"],
)
def test_the_server_itself_refuses_to_start_without_its_token(tmp_path, args, needle):
    """The check inside the server, for arguments that get past the script (or no script)."""
    if any("PASSWORD_HASH" in a for a in args):
        from jupyter_server.auth import passwd

        args = [a.replace("PASSWORD_HASH", passwd("a-course-password")) for a in args]
    server = _lab_server_directly(tmp_path, *args)
    try:
        _assert_refused(server, needle)
    finally:
        server.stop()


CONFIG_FILES = {
    "jupyter_server_config.py": "c.IdentityProvider.token = ''\nc.ServerApp.token = ''\n",
    "jupyter_server_config.json": json.dumps(
        {"IdentityProvider": {"token": ""}, "ServerApp": {"token": ""}}
    ),
    "jupyter_lab_config.py": "c.IdentityProvider.token = ''\nc.ServerApp.token = ''\n",
    # Loaded before --config (which restores the token) but still effective for XSRF.
    "jupyter_config.json": json.dumps(
        {"IdentityProvider": {"token": ""}, "ServerApp": {"disable_check_xsrf": True}}
    ),
}
MUST_REFUSE = {"jupyter_config.json"}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_config_files_cannot_empty_the_token(tmp_path, name):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / name).write_text(CONFIG_FILES[name])
    server = _through_script(tmp_path, "")
    try:
        outcome = _outcome(server)
        if name in MUST_REFUSE:
            assert outcome == "refused" and "XSRF" in server.log, server.log
    finally:
        server.stop()


def test_empty_environment_token_is_replaced_and_the_server_protected(tmp_path):
    """JUPYTER_TOKEN="" (and an empty JUPYTER_TOKEN_FILE): a token is generated and required.

    The same server checks what a logged-in user gets: /api/contents, a kernel and a terminal
    without the token in their environment, deletion to the trash, and SIGTERM shutdown.
    """
    empty = tmp_path / "empty-token"
    empty.write_text("")
    server = _through_script(tmp_path, "", JUPYTER_TOKEN_FILE=str(empty))
    try:
        assert server.wait() == "up", server.log
        token = _printed_token(server)
        assert len(token) >= 12
        _assert_protected(server, token)

        status, _, body = _request(server.port, "GET", "/api/contents", token=token)
        assert status == 200 and "secret.txt" in {i["name"] for i in json.loads(body)["content"]}
        assert _request(server.port, "GET", "/api/contents", query_token=token)[0] == 200

        # A kernel and a terminal: children of the server, without the token in their environment.
        before = server.child_pids()
        status, _, body = _request(server.port, "POST", "/api/kernels", token=token)
        assert status == 201, body
        status, _, body = _request(server.port, "POST", "/api/terminals", token=token)
        assert status == 200, body
        started = server.child_pids() - before
        assert len(started) >= 2, (started, server.log)
        for pid in started:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            assert b"JUPYTER_TOKEN" not in environ, pid
            assert token.encode() not in environ, pid

        # Deleting moves the file to the trash (same file system as HOME here: XDG trash).
        victim = tmp_path / "root" / "delete-me.txt"
        victim.write_text("keep me\n")
        status, _, body = _request(
            server.port, "DELETE", "/api/contents/delete-me.txt", token=token
        )
        assert status == 204, body
        assert not victim.exists()
        trashed = tmp_path / "xdg-data" / "Trash" / "files" / "delete-me.txt"
        assert trashed.read_text() == "keep me\n"

        # SIGTERM (docker stop -> tini -> the exec'd server) stops the server and its kernel.
        os.killpg(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(timeout=20) == 0, server.log
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in started), "kernels outlived the server"
    finally:
        server.stop()
