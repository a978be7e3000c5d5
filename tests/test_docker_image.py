"""The course image, built from the real Dockerfile and run with the real compose files.

A real Docker engine (tests/docker_engine.py starts Debian's dockerd when none runs) builds the
instructor image from a copy of this repository and the student image from a `course release` of it,
exactly as docs/docker.md tells a user to (`docker compose build`, then
`docker compose -f docker-compose.yml -f docker-compose.cpu.yml up -d`). One compose file of the
test's own adds only what this machine needs: the stand-in base image and pip settings as build
arguments, the host network for the build, test-only image and volume names (so nothing of a user's
`diffusion-lib` project is touched), and the switch that skips the Inception download. The checks are
the ones a user makes: the token URL in the log, the API refusing requests without it, a non-root
server without capabilities, the health check, a smoke notebook inside the container, edits and
files on the mounts, a clean `docker compose stop`, CPU training, the student edition and the
JupyterHub single-user mode.

Builds run once per session (conftest's `course_images`), cached by the engine between runs.
"""

import http.server
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

LAB_FILES = ("docker-compose.yml", "docker-compose.cpu.yml")
BUILD_UID = 1000
GRACE_SECONDS = 30  # docker-compose.yml: stop_grace_period of lab


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError):  # docker-proxy accepts before the server listens
        return 0, b""


class Lab:
    """The `lab` service of one compose project, started in a copy of the repository."""

    def __init__(self, engine, images):
        self.engine, self.images = engine, images
        self.project = images.instructor_dir
        self.files = [*LAB_FILES, images.override]
        self.port = _free_port()
        self.env = {"JUPYTER_PORT": str(self.port)}
        self.token = None

    def compose(self, *args, **kwargs):
        return self.engine.compose(self.project, *args, files=self.files, env=self.env, **kwargs)

    def exec(self, *command, **kwargs):
        return self.compose("exec", "-T", "lab", *command, **kwargs)

    def up(self):
        self.compose("up", "-d", "lab")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            log = self.compose("logs", "--no-log-prefix", "lab").stdout
            opens = [line for line in log.splitlines() if line.startswith("start-lab: open ")]
            if opens and _get(f"http://127.0.0.1:{self.port}/api")[0] == 200:
                self.url = opens[-1].split()[-1]
                self.token = self.url.split("token=", 1)[1]
                return log
            time.sleep(1)
        raise AssertionError(f"the lab did not come up within 120 s:\n{log[-4000:]}")

    def container(self):
        return self.compose("ps", "-a", "-q", "lab").stdout.strip()

    def state(self):
        return json.loads(self.engine.docker("inspect", self.container()).stdout)[0]["State"]


@pytest.fixture(scope="module")
def lab(course_images):
    lab = Lab(course_images.engine, course_images)
    lab.log = lab.up()
    yield lab
    lab.compose("down", "-v", check=False, timeout=120)


def test_the_log_prints_the_token_url_and_the_api_needs_the_token(lab):
    assert lab.url.startswith(f"http://127.0.0.1:{lab.port}/lab?token=")
    assert len(lab.token) >= 12
    assert _get(f"http://127.0.0.1:{lab.port}/api/contents")[0] == 403
    assert _get(f"http://127.0.0.1:{lab.port}/api/contents", "wrong-token-123456")[0] == 403
    status, body = _get(f"http://127.0.0.1:{lab.port}/api/contents", lab.token)
    assert status == 200
    assert {"notebooks", "diffusion_lib", "runs"} <= {item["name"] for item in json.loads(body)["content"]}


def test_the_server_runs_as_the_build_uid_with_no_capability(lab):
    script = (
        "import pathlib\n"
        "for p in pathlib.Path('/proc').glob('[0-9]*'):\n"
        "    cmd = (p / 'cmdline').read_bytes().replace(b'\\0', b' ')\n"
        "    if b'lab_server.py' in cmd and b'python' in cmd.split()[0]:\n"
        "        print((p / 'status').read_text())\n"
    )
    status = lab.exec("python", "-c", script).stdout
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status.splitlines() if ":" in line}
    assert fields["Uid"] == [str(BUILD_UID)] * 4 and fields["Gid"] == [str(BUILD_UID)] * 4, status
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[capabilities][0], 16) == 0, (capabilities, fields[capabilities])
    assert fields["NoNewPrivs"] == ["1"]


def test_files_written_in_the_container_belong_to_the_build_uid(lab):
    lab.exec("bash", "-c", "mkdir -p runs/owner && echo x > runs/owner/file && echo y > outputs/owner.txt")
    for path in (lab.project / "runs/owner/file", lab.project / "outputs/owner.txt"):
        assert path.stat().st_uid == BUILD_UID and path.stat().st_gid == BUILD_UID, path


def test_a_smoke_notebook_runs_inside_the_container(lab):
    result = lab.exec("python", "-m", "diffusion_lib", "notebooks", "run", "02", "--profile", "smoke",
                      timeout=600)
    assert "02_forward_process_and_schedules" in result.stdout + result.stderr
    executed = next((lab.project / "outputs" / "notebooks").glob("02_*.ipynb"))
    cells = json.loads(executed.read_text())["cells"]
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert images and not errors, (len(images), errors[:1])
    assert executed.stat().st_uid == BUILD_UID


def test_the_health_check_turns_healthy(lab):
    deadline = time.monotonic() + 150  # interval 30 s, start period 60 s (Dockerfile HEALTHCHECK)
    while time.monotonic() < deadline:
        health = lab.state().get("Health", {})
        if health.get("Status") == "healthy":
            break
        time.sleep(3)
    assert health.get("Status") == "healthy", health


def test_an_edit_to_the_mounted_library_survives_down_and_up(lab):
    note = "# edited inside the container by tests/test_docker_image.py"
    lab.exec("bash", "-c", f"echo '{note}' >> diffusion_lib/viz.py && "
                           "echo 'ANSWER = 42' > diffusion_lib/student_edit.py")
    lab.compose("down", timeout=120)
    assert note in (lab.project / "diffusion_lib/viz.py").read_text()  # on the host, container gone
    lab.up()
    assert note in lab.exec("cat", "diffusion_lib/viz.py").stdout
    out = lab.exec("python", "-c", "import diffusion_lib.student_edit as m; print(m.ANSWER)").stdout
    assert out.strip() == "42"


def test_compose_stop_ends_within_the_grace_period_and_keeps_saved_work(lab):
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "saved before stop"}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    body = json.dumps({"type": "notebook", "content": notebook}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{lab.port}/api/contents/notebooks/saved.ipynb",
                                     data=body, method="PUT",
                                     headers={"Authorization": f"token {lab.token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201)
    start = time.monotonic()
    lab.compose("stop", "lab", timeout=120)
    elapsed = time.monotonic() - start
    state = lab.state()
    assert state["Status"] == "exited" and state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert elapsed < GRACE_SECONDS, f"stop took {elapsed:.1f} s: the server was killed, not stopped"
    saved = json.loads((lab.project / "notebooks/saved.ipynb").read_text())
    assert "".join(saved["cells"][0]["source"]) == "saved before stop"


def test_the_train_service_trains_on_a_cpu_host(lab):
    result = lab.engine.compose(
        lab.project, "--profile", "train", "run", "--rm", "-T", "train", "--config",
        "configs/nb04_reverse_smoke.yaml", "--set", "training.max_steps=2", "--output", "runs/cpu_train",
        files=lab.files, env=lab.env, timeout=600,
    )
    checkpoint = lab.project / "runs/cpu_train/checkpoints/last.ckpt"
    assert checkpoint.stat().st_size > 0 and checkpoint.stat().st_uid == BUILD_UID
    assert "parameters on cpu" in result.stdout + result.stderr
    assert json.loads((lab.project / "runs/cpu_train/run.json").read_text())["payload"]["finished"] is True


def test_the_two_editions(course_images):
    engine = course_images.engine
    for image, edition in ((course_images.instructor, "instructor"), (course_images.student, "student")):
        out = engine.docker("run", "--rm", "--entrypoint", "cat", image, "/etc/diffusion-lib-edition").stdout
        assert out.strip() == edition
    # The student image holds exactly the release: its library, homework and coursework files.
    listing = "cd /workspace && find diffusion_lib homework coursework -type f ! -path '*/__pycache__/*' " \
              "! -path '*.egg-info/*' -print0 | sort -z | xargs -0 sha256sum"
    in_image = engine.docker("run", "--rm", "--entrypoint", "bash", course_images.student, "-c", listing).stdout
    released = subprocess.run(["bash", "-c", listing.replace("/workspace", str(course_images.student_dir))],
                              capture_output=True, text=True, check=True).stdout
    assert in_image == released and "coursework/release_manifest.json" in in_image


class _HubAPI(http.server.BaseHTTPRequestHandler):
    """The two answers a single-user server needs from its hub: the version, and "no" to every token."""

    def _answer(self, status, body=b"{}"):
        self.send_response(status)
        self.send_header("X-JupyterHub-Version", "6.1.1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 (http.server's name)
        self._answer(200 if self.path.rstrip("/") == "/hub/api" else 403, b'{"version": "6.1.1"}')

    def do_POST(self):  # noqa: N802 (activity reports)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(200)

    def log_message(self, *args):
        pass


def test_the_image_serves_a_jupyterhub_single_user_server(course_images):
    """Started the way a spawner starts it: the image's own CMD, the JUPYTERHUB_* variables set.

    A stand-in hub API answers the version check and refuses every token, so what is checked is that
    the image runs the hub's single-user server on the spawner's port and base URL, healthy by the
    image's own health check, with no token of its own, and that it sends every API request to the
    hub to authenticate (a refused token gets no access).
    """
    engine, port = course_images.engine, _free_port()
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubAPI)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    env = {
        "JUPYTERHUB_API_TOKEN": "0123456789abcdef0123456789abcdef",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-alice",
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub.server_address[1]}/hub/api",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}/user/alice/",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/alice/oauth_callback",
        "JUPYTERHUB_USER": "alice",
    }
    args = ["run", "-d", "--network", "host", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true",
            "--health-interval", "2s", "--health-start-period", "60s"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    container = engine.docker(*args, course_images.student).stdout.strip()
    try:
        deadline, health = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            state = json.loads(engine.docker("inspect", container).stdout)[0]["State"]
            health = state.get("Health", {})
            if health.get("Status") == "healthy" or state["Status"] != "running":
                break
            time.sleep(2)
        logs = engine.docker("logs", container)
        log = logs.stdout + logs.stderr
        assert health.get("Status") == "healthy", (health, log[-4000:])
        assert "start-singleuser: serving /workspace for JupyterHub user alice" in log
        assert "JupyterHubSingleUser" in log and "start-lab: open" not in log
        assert _get(f"http://127.0.0.1:{port}/user/alice/api")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/user/alice/api/contents")[0] in (302, 401, 403)
        assert _get(f"http://127.0.0.1:{port}/user/alice/api/contents", "a-token-the-hub-refuses")[0] == 403
    finally:
        engine.docker("rm", "-f", container, check=False)
        hub.shutdown()
        hub.server_close()


def test_the_entrypoint_names_the_cache_volume_of_another_uid(course_images, tmp_path):
    """A cache volume left from a build with other ids: a message that names the cause and the fix."""
    engine = course_images.engine
    volume = "diffusion-lib-test-stale-cache"
    engine.docker("volume", "create", volume)
    try:
        # The volume as an image built for uid 1000 leaves it; then run as if rebuilt for uid 1001.
        engine.docker("run", "--rm", "--user", "0", "--entrypoint", "chown", "-v", f"{volume}:/c",
                      course_images.instructor, "-R", "1000:1000", "/c")
        engine.docker("run", "--rm", "--user", "0", "--entrypoint", "chmod", "-v", f"{volume}:/c",
                      course_images.instructor, "0700", "/c")
        result = engine.docker("run", "--rm", "--user", "1001:1001", "-e", "NB_UID=1001", "-e", "NB_GID=1001",
                               "-v", f"{volume}:/home/student/.cache", course_images.instructor, "true",
                               check=False)
        assert result.returncode == 1
        assert "/home/student/.cache" in result.stderr and "docker compose down -v" in result.stderr, result.stderr
        # Asked for other ids than the image was built with: refused, with the build argument to use.
        result = engine.docker("run", "--rm", "-e", "NB_UID=1234", course_images.instructor, "true", check=False)
        assert result.returncode == 1 and "USER_UID" in result.stderr, result.stderr
    finally:
        engine.docker("volume", "rm", "-f", volume, check=False)
