"""A class on one host: the JupyterHub of deploy/hub/, started for real, driven by a browser.

What a course lives through, in order (the tests of this file share one hub and run top to bottom):

1. the hub image is built with `docker compose build` from deploy/hub/ (stand-in base, this machine's pip
   settings, as the image test builds the course images) and started with `docker compose up` and the
   settings of .env.example, pointed at the test's images and folders;
2. in headless Chromium the instructor and three students sign up (NativeAuthenticator); the instructor
   authorises the students at /hub/authorize; each student logs in, sees both profiles on the spawn page,
   starts the CPU one and lands in their own JupyterLab, where a cell of homework part 1 runs on their
   server (their user, their container);
3. one student edits the library; the server is stopped and started again and the edit is still there;
4. from inside each container: only the student's own volume, the read-only datasets and their own hand-in
   folder are mounted; nobody else's files or hand-in are reachable;
5. each student hands in: the first with the "Hand in" button of the release's handin.ipynb, in the browser,
   the others with `course handin --submit` in their server (the last one after a deadline); the instructor
   runs `course collect --deadline` on the hub's hand-in folder (only the last one is LATE) and `course grade`
   (Docker sandbox, the student image) on what it collected, into the hub's grading folder: one line per
   student, and each hand-in time in the gradebook;
6. the instructor's own server (the instructor image, as hub admins get, with the grading folder mounted)
   serves formgrader on that graded course, opened in its own tab (nbgrader#1870: formgrader inside
   JupyterLab's frame is refused under JupyterHub's CSP): the three students' submissions are listed, a hand
   grade entered there reaches the host's gradebook, and no student's server has the grading folder;
7. idle culling: with a 20 s timeout an untouched server is stopped by jupyterhub-idle-culler.

Everything is stopped and removed at the end (containers, the users' volumes, the hub's volume and network).
The timeline (spawn seconds per student, hand-in, grading) goes to outputs/test-artifacts/hub-timeline.json
and screenshots to outputs/test-artifacts/hub-*.png. Needs root, the Docker engine and Chromium; in CI a
missing piece fails the test, elsewhere it skips.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from docker_engine import HUB_DIR, HUB_PROJECT as PROJECT, missing, run

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "outputs" / "test-artifacts"
HUB_CONTAINER = "diffusion-lib-hub"                  # container_name in deploy/hub/docker-compose.yml
# Names no real class would use: the test removes their containers and volumes (course-<name>). Letters
# only: DockerSpawner escapes other characters in container names ("-" becomes "-2d").
INSTRUCTOR = "testprof"
STUDENTS = ("testada", "testben", "testcleo")
PASSWORD = "quiet-river-4721-lantern"
STUDENT_UID = 1000                                   # the images' student user (COURSE_STUDENT_UID's default)
HAND_GRADED = ("part1_forward_process", "p1_analysis")   # a notebook and its hand-graded answer cell
UI_MS = 60_000
SPAWN_MS = 300_000
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CELL = ("import os, diffusion_lib.homework_schedules; from diffusion_lib.schedules import NoiseSchedule; "
        "print('cell-ok', os.environ['JUPYTERHUB_USER'], os.getuid(), "
        "round(float(NoiseSchedule('cosine', 1000).alphas_cumprod[499]), 6))")

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the hub runs on a Linux Docker engine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """The running hub: its URL, the engine, the folders it was given and what the tests measured."""

    def __init__(self, engine, override: Path, images, env: dict):
        self.engine, self.override, self.images, self.env = engine, override, images, env
        self.url = f"http://127.0.0.1:{env['HUB_PORT']}"
        self.handins = Path(env["COURSE_HANDINS_HOST_DIR"])
        self.grading = Path(env["COURSE_GRADING_HOST_DIR"])
        self.timeline: dict = {}
        self._token = None

    def compose(self, *args, env=None, **kwargs):
        return self.engine.compose(HUB_DIR, *args, files=["docker-compose.yml", self.override],
                                   project=PROJECT, env=dict(self.env, **(env or {})), **kwargs)

    def exec(self, user: str, script: str, *, check=True, as_root=False):
        """bash -c `script` inside the user's container, as the image's student user (uid 1000)."""
        return self.engine.docker("exec", *([] if as_root else ["-u", "1000"]), "-w", "/workspace",
                                  f"course-{user}", "bash", "-c", script, check=check, timeout=600)

    def token(self) -> str:
        """An API token of the instructor (a hub admin), made by the hub's own `jupyterhub token`."""
        if self._token is None:
            out = self.engine.docker("exec", HUB_CONTAINER, "jupyterhub", "token", "--config",
                                     "/srv/jupyterhub/jupyterhub_config.py", INSTRUCTOR, timeout=120).stdout
            self._token = out.strip().splitlines()[-1]
        return self._token

    def api(self, method: str, path: str, body=None):
        request = urllib.request.Request(f"{self.url}/hub/api{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {self.token()}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
                return response.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def server(self, user: str) -> dict | None:
        status, info = self.api("GET", f"/users/{user}")
        assert status == 200, info
        return (info.get("servers") or {}).get("")

    def wait_server(self, user: str, running: bool, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(user)
            if (bool(server and server.get("ready")) if running else server is None):
                return time.monotonic()
            time.sleep(1)
        raise AssertionError(f"{user}'s server did not become {'ready' if running else 'stopped'} in {timeout} s:\n"
                             f"{self.logs()}")

    def wait_container_gone(self, name: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while self.engine.docker("container", "inspect", name, check=False).returncode == 0:
            assert time.monotonic() < deadline, f"container {name} still there {timeout} s after its server stopped"
            time.sleep(1)

    def logs(self, tail=60) -> str:
        return self.engine.docker("logs", "--tail", str(tail), HUB_CONTAINER, check=False).stderr[-6000:]


def _wait_for_hub(url: str, engine, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/hub/api", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass   # docker-proxy resets connections until the hub listens
        time.sleep(1)
    logs = engine.docker("logs", "--tail", "80", HUB_CONTAINER, check=False)
    raise AssertionError(f"the hub did not answer at {url}/hub/api in {timeout} s:\n{logs.stdout}{logs.stderr}")


def _remove_class(engine):
    """The test's users' containers and volumes (after the hub: its network must be free to go)."""
    names = [INSTRUCTOR, *STUDENTS]
    engine.docker("rm", "-f", *[f"course-{n}" for n in names], check=False)
    engine.docker("volume", "rm", "-f", *[f"course-{n}" for n in names], check=False)


@pytest.fixture(scope="module")
def hub(docker_engine, course_images, hub_image, tmp_path_factory):
    if os.geteuid() != 0:
        missing("the hub test runs the hub as root (it makes each student's hand-in folder)")
    engine = docker_engine
    other = engine.docker("container", "inspect", "--format", '{{index .Config.Labels "com.docker.compose.project"}}',
                          HUB_CONTAINER, check=False)
    if other.returncode == 0 and other.stdout.strip() != PROJECT:
        pytest.fail(f"a container named {HUB_CONTAINER} of project {other.stdout.strip()!r} runs on this engine: "
                    "the test will not replace a real hub")
    workdir = tmp_path_factory.mktemp("hub")
    handins, datasets, grading = workdir / "handins", workdir / "datasets", workdir / "grading"
    handins.mkdir()
    datasets.mkdir()
    (datasets / "README.txt").write_text("shared, read-only\n")
    env = {"HUB_BIND": "127.0.0.1", "HUB_PORT": str(_free_port()),
           "COURSE_STUDENT_IMAGE": course_images.student, "COURSE_INSTRUCTOR_IMAGE": course_images.instructor,
           "COURSE_ADMINS": INSTRUCTOR, "COURSE_OPEN_SIGNUP": "false",
           "COURSE_HANDINS_HOST_DIR": str(handins), "COURSE_DATASETS_HOST_DIR": str(datasets),
           "COURSE_GRADING_HOST_DIR": str(grading),
           "COURSE_CPU_MEM": "4G", "COURSE_CPU_CORES": "2"}
    the_hub = Hub(engine, hub_image.override, course_images, env)
    the_hub.timeline["hub_build_seconds"] = hub_image.build_seconds
    _remove_class(engine)
    start = time.monotonic()
    the_hub.compose("up", "-d", "hub")
    try:
        _wait_for_hub(the_hub.url, engine)
        the_hub.timeline["hub_up_seconds"] = round(time.monotonic() - start, 1)
        yield the_hub
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "hub-timeline.json").write_text(json.dumps(the_hub.timeline, indent=2) + "\n")
        _remove_class(engine)
        the_hub.compose("down", "--volumes", "--timeout", "10", check=False)
        _remove_class(engine)


@pytest.fixture(scope="module")
def browser():
    chromium = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        missing("Debian's chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright Python package")
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield chrome
        chrome.close()


def _settled(page):
    page.wait_for_load_state("load", timeout=UI_MS)


def _sign_up(page, hub, user):
    page.goto(f"{hub.url}/hub/signup", timeout=UI_MS)
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORD)
    page.fill("#password_confirmation_input", PASSWORD)
    page.click("#signup_submit")
    _settled(page)
    return page.locator(".alert").inner_text(timeout=UI_MS)


def _log_in(page, hub, user):
    page.goto(f"{hub.url}/hub/login", timeout=UI_MS)
    page.fill("#username_input", user)
    page.fill("#password_input", PASSWORD)
    page.click("#login_submit")
    _settled(page)


def _spawn_cpu(page, hub, user, shot=None):
    """From the spawn page: both profiles offered, the CPU one started; returns seconds to a running lab."""
    from playwright.sync_api import expect

    if "/hub/spawn" not in page.url:
        page.goto(f"{hub.url}/hub/spawn", timeout=UI_MS)
    form = page.locator("#spawn_form")
    expect(form).to_be_visible(timeout=UI_MS)
    radios = form.locator('input[name="profile"]')
    assert radios.count() == 2, form.inner_html()
    assert sorted(radios.nth(i).get_attribute("value") for i in range(2)) == ["cpu", "gpu"]
    expect(form).to_contain_text("CPU")
    expect(form).to_contain_text("GPU")
    if shot:
        page.screenshot(path=str(shot))
    form.locator('input[value="cpu"]').check()
    start = time.monotonic()
    form.locator('[type="submit"]').click()
    page.wait_for_url(f"**/user/{user}/lab**", timeout=SPAWN_MS)
    expect(page.locator(".jp-LabShell")).to_be_visible(timeout=UI_MS)
    return round(time.monotonic() - start, 1)


def _run_homework_cell(page, hub, user):
    """Opens homework part 1 in the student's lab and runs a cell that imports what its first cell imports."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    page.goto(f"{hub.url}/user/{user}/lab/tree/homework/part1_forward_process.ipynb", timeout=UI_MS)
    panel = page.locator(".jp-NotebookPanel:visible")
    expect(panel.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=UI_MS)
    # On a server's first start Lab may open the notebook before it has the kernel list and ask which
    # kernel to use (its preselected choice is the project kernel): accept it, as a student would.
    try:
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=10_000)
    except PlaywrightTimeout:
        pass
    expect(panel.locator(".jp-Toolbar-kernelName")).to_have_text("Python (diffusion_lib)", timeout=UI_MS)
    expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute("data-status", "idle", timeout=UI_MS)
    panel.locator(".jp-CodeCell").first.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("a")            # a new cell above the homework's first code cell
    page.keyboard.press("Enter")
    page.keyboard.type(CELL)
    page.keyboard.press("Escape")       # command mode: no completer popup takes the next key
    page.keyboard.press("Shift+Enter")
    output = panel.locator(".jp-OutputArea-output").filter(has_text="cell-ok")
    try:
        expect(output).to_be_visible(timeout=UI_MS)
    except AssertionError:
        page.screenshot(path=str(ARTIFACTS / f"hub-cell-failed-{user}.png"))
        raise
    return output.inner_text()


@pytest.fixture(scope="module")
def classroom(hub, browser):
    """Sign-ups, authorisation, logins and spawns, as the people do them; one browser context each."""
    contexts = {name: browser.new_context(viewport={"width": 1400, "height": 900})
                for name in (INSTRUCTOR, *STUDENTS)}
    pages = {name: ctx.new_page() for name, ctx in contexts.items()}
    messages = {name: _sign_up(pages[name], hub, name) for name in (INSTRUCTOR, *STUDENTS)}
    pages[INSTRUCTOR].screenshot(path=str(ARTIFACTS / "hub-signup.png"))
    # Before authorisation a student cannot log in.
    _log_in(pages[STUDENTS[0]], hub, STUDENTS[0])
    refused_before = "/hub/login" in pages[STUDENTS[0]].url and "/user/" not in pages[STUDENTS[0]].url
    _log_in(pages[INSTRUCTOR], hub, INSTRUCTOR)
    admin = pages[INSTRUCTOR]
    admin.goto(f"{hub.url}/hub/authorize", timeout=UI_MS)
    for student in STUDENTS:
        admin.locator(f'a[href$="authorize/{student}"]').click()
        _settled(admin)
    admin.goto(f"{hub.url}/hub/authorize", timeout=UI_MS)
    admin.screenshot(path=str(ARTIFACTS / "hub-authorize.png"))
    authorize_page = admin.content()
    spawn_seconds, cells = {}, {}
    for i, student in enumerate(STUDENTS):
        _log_in(pages[student], hub, student)
        spawn_seconds[student] = _spawn_cpu(pages[student], hub, student,
                                            shot=ARTIFACTS / "hub-spawn-page.png" if i == 0 else None)
        cells[student] = _run_homework_cell(pages[student], hub, student)
        if i == 0:
            pages[student].screenshot(path=str(ARTIFACTS / "hub-student-lab.png"))
    hub.timeline["spawn_seconds"] = spawn_seconds
    yield {"contexts": contexts, "pages": pages, "messages": messages, "refused_before": refused_before,
           "authorize_page": authorize_page, "cells": cells}
    for ctx in contexts.values():
        ctx.close()          # a no-op for those the culling test closed already


def test_students_sign_up_are_authorised_and_get_their_own_server(hub, classroom):
    for student in STUDENTS:
        assert "sent to the admin" in classroom["messages"][student], classroom["messages"][student]
    assert classroom["refused_before"], "a student logged in before the instructor authorised them"
    for student in STUDENTS:
        assert f"authorize/{student}" in classroom["authorize_page"]
        assert "Unauthorize" in classroom["authorize_page"]
        # The cell ran on the student's own server, as the image's student user, with the release's library.
        words = classroom["cells"][student].split()
        assert words[:3] == ["cell-ok", student, "1000"], classroom["cells"][student]
        server = hub.server(student)
        assert server and server["ready"] and server["user_options"] == {"profile": "cpu"}, server
        inspect = json.loads(hub.engine.docker("container", "inspect", f"course-{student}").stdout)[0]
        assert inspect["Config"]["Image"] == hub.images.student
        assert inspect["HostConfig"]["Memory"] == 4 * 1024 ** 3
        host = inspect["HostConfig"]     # DockerSpawner's cpu_limit is a CFS quota per period
        assert host["CpuQuota"] == 2 * host["CpuPeriod"] > 0, (host["CpuQuota"], host["CpuPeriod"])
        assert inspect["HostConfig"]["CapDrop"] == ["ALL"]
        assert not inspect["HostConfig"].get("DeviceRequests"), "the CPU profile asked for a GPU"


def test_an_unknown_profile_is_refused(hub, classroom):
    status, body = hub.api("POST", f"/users/{INSTRUCTOR}/server", {"profile": "tpu"})
    assert status == 400 and "tpu" in body and "cpu" in body, (status, body)


def test_a_library_edit_survives_a_server_restart(hub, classroom):
    student = STUDENTS[0]
    marker = "# edited by the student in their own server"
    hub.exec(student, f"echo '{marker}' >> diffusion_lib/homework_schedules.py")
    status, body = hub.api("DELETE", f"/users/{student}/server")
    assert status in (202, 204), (status, body)
    hub.wait_server(student, running=False, timeout=120)
    hub.wait_container_gone(f"course-{student}")      # remove=True: a stopped server's container goes
    start = time.monotonic()
    status, body = hub.api("POST", f"/users/{student}/server", {"profile": "cpu"})
    assert status in (201, 202), (status, body)
    hub.timeline["restart_seconds"] = round(hub.wait_server(student, running=True, timeout=300) - start, 1)
    tail = hub.exec(student, "tail -n 1 diffusion_lib/homework_schedules.py").stdout.strip()
    assert tail == marker


def test_no_student_reaches_another_students_work(hub, classroom):
    for student in STUDENTS:
        mounts = {line.split()[4]: line for line in hub.exec(student, "cat /proc/self/mountinfo").stdout.splitlines()}
        assert {"/workspace", "/workspace/datasets", "/handin"} <= set(mounts), sorted(mounts)
        assert "/workspace/grading" not in mounts, "a student's server has the grading folder"
        assert " ro," in mounts["/workspace/datasets"] or mounts["/workspace/datasets"].split()[5].startswith("ro")
        volume = json.loads(hub.engine.docker("container", "inspect", f"course-{student}").stdout)[0]["Mounts"]
        sources = {m["Destination"]: m for m in volume}
        assert sources["/workspace"]["Name"] == f"course-{student}"
        assert sources["/handin"]["Source"] == str(hub.handins / student)
        others = [s for s in STUDENTS if s != student]
        probe = hub.exec(student, " ; ".join(
            ["touch /workspace/datasets/x 2>/dev/null && echo datasets-writable",
             "ls -A /handin/.. | tr '\\n' ' '; echo",
             *[f"test -e /srv/handins/{o} && echo sees-{o}" for o in others],
             f"find / -xdev \\( -path /proc -prune \\) -o -name 'course-*' -print 2>/dev/null | head -5"]),
            check=False).stdout
        assert "datasets-writable" not in probe and "sees-" not in probe, probe
        for other in others:
            assert other not in probe, probe
        # The host's hand-in folder: the student's own, private to uid 1000.
        st = (hub.handins / student).stat()
        assert (st.st_uid, st.st_mode & 0o777) == (1000, 0o700)


def _hand_in_with_the_button(page, hub, user):
    """Opens the release's handin.ipynb, runs its cell and presses "Hand in"; returns the text under it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect

    page.goto(f"{hub.url}/user/{user}/lab/tree/handin.ipynb", timeout=UI_MS)
    panel = page.locator(".jp-NotebookPanel:visible")
    expect(panel.locator(".jp-Notebook .jp-CodeCell").first).to_be_visible(timeout=UI_MS)
    try:   # as in _run_homework_cell: Lab may ask for the kernel on a server's first start
        page.locator(".jp-Dialog .jp-mod-accept").click(timeout=10_000)
    except PlaywrightTimeout:
        pass
    expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute("data-status", "idle", timeout=UI_MS)
    panel.locator(".jp-CodeCell").first.locator(".jp-InputPrompt").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")
    button = panel.get_by_role("button", name="Hand in")
    expect(button).to_be_visible(timeout=UI_MS)
    button.click()
    try:
        expect(panel.locator(".course-handin-submitted")).to_be_visible(timeout=UI_MS)
    finally:
        page.screenshot(path=str(ARTIFACTS / "hub-handin-button.png"))
    return panel.locator(".jp-CodeCell").first.inner_text()


def test_each_student_hands_in_and_the_instructor_grades_them(hub, classroom, tmp_path):
    start = time.monotonic()
    for student in STUDENTS:
        if student == STUDENTS[-1]:   # the deadline passes just before the last one hands in
            time.sleep(1.5)
            deadline = datetime.now(timezone.utc).replace(microsecond=0)
            time.sleep(1.5)
        if student == STUDENTS[0]:    # the one who edited the library hands in with the notebook's button
            out = _hand_in_with_the_button(classroom["pages"][student], hub, student)
            assert "homework_schedules.py" in out and "submitted: /handin/submission.tar.gz" in out, out
            continue
        out = hub.exec(student, "python -m diffusion_lib course handin --submit --allow-empty").stdout
        assert "/handin" in out, out
    hub.timeline["handin_seconds"] = round(time.monotonic() - start, 1)
    assert sorted(p.name for p in (hub.handins / STUDENTS[0]).iterdir()) == ["submission.tar.gz"]
    # One student cannot overwrite another's hand-in: their folder is not there to write to.
    attack = hub.exec(STUDENTS[1], f"cp /handin/submission.tar.gz /handin/../{STUDENTS[0]}/submission.tar.gz",
                      check=False)
    assert attack.returncode != 0
    collected = tmp_path / "submissions"
    listing = run([sys.executable, "-m", "diffusion_lib", "course", "collect", str(hub.handins), "--output",
                   str(collected), "--deadline", deadline.isoformat()], cwd=REPO, timeout=300).stdout
    assert sorted(p.name for p in collected.iterdir()) == sorted(f"{s}.tar.gz" for s in STUDENTS)
    late = {s for s in STUDENTS if any(s in line and "LATE" in line for line in listing.splitlines())}
    assert late == {STUDENTS[-1]}, listing
    start = time.monotonic()
    grading = hub.grading    # the folder the staff's servers mount (COURSE_GRADING_HOST_DIR)
    run([sys.executable, "-m", "diffusion_lib", "course", "grade", str(collected), "--output", str(grading),
         "--sandbox", "docker", "--image", hub.images.student, "--jobs", "2"], cwd=REPO, timeout=1800)
    hub.timeline["grade_seconds"] = round(time.monotonic() - start, 1)
    # as docs/class.md says: the staff's server (the image's user) saves hand grades into this folder
    run(["chown", "-R", f"{STUDENT_UID}:{STUDENT_UID}", str(grading)])
    with open(grading / "grades.csv", newline="") as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(STUDENTS), rows
    # the gradebook (formgrader's) shows each hand-in time: the archive's time, which collect kept
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{grading / 'gradebook.db'}") as gb:
        for student in STUDENTS:
            stamp = gb.find_submission("coursework", student).timestamp
            handed_in = datetime.fromtimestamp((collected / f"{student}.tar.gz").stat().st_mtime, timezone.utc)
            assert stamp is not None and abs(stamp.replace(tzinfo=timezone.utc) - handed_in) < timedelta(seconds=1), \
                (student, stamp, handed_in)
            assert (stamp.replace(tzinfo=timezone.utc) > deadline) == (student == STUDENTS[-1])


def test_the_instructor_opens_formgrader_through_the_hub(hub, classroom):
    from playwright.sync_api import expect

    page = classroom["pages"][INSTRUCTOR]
    page.goto(f"{hub.url}/hub/spawn", timeout=UI_MS)
    seconds = _spawn_cpu(page, hub, INSTRUCTOR)
    hub.timeline["instructor_spawn_seconds"] = seconds
    inspect = json.loads(hub.engine.docker("container", "inspect", f"course-{INSTRUCTOR}").stdout)[0]
    assert inspect["Config"]["Image"] == hub.images.instructor, "an admin's server is not the instructor image"
    mounts = {line.split()[4] for line in hub.exec(INSTRUCTOR, "cat /proc/self/mountinfo").stdout.splitlines()}
    assert "/workspace/grading" in mounts, sorted(mounts)
    page.goto(f"{hub.url}/user/{INSTRUCTOR}/formgrader", timeout=UI_MS)
    expect(page.get_by_text("Manage Assignments").first).to_be_visible(timeout=UI_MS)
    # formgrader is on the graded course: the grading folder's gradebook, every student's submission
    page.goto(f"{hub.url}/user/{INSTRUCTOR}/formgrader/manage_students", timeout=UI_MS)
    for student in STUDENTS:
        expect(page.get_by_role("gridcell", name=student, exact=True)).to_be_visible(timeout=UI_MS)
    page.screenshot(path=str(ARTIFACTS / "hub-formgrader.png"))
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{hub.grading / 'gradebook.db'}") as gb:
        submission = gb.find_submission_notebook(HAND_GRADED[0], "coursework", STUDENTS[0]).id
    page.goto(f"{hub.url}/user/{INSTRUCTOR}/formgrader/submissions/{submission}/", timeout=UI_MS)
    score = page.locator(f"input.score#{HAND_GRADED[1]}")
    expect(score).to_be_visible(timeout=UI_MS)
    expect(page.locator(f"input.extra-credit#{HAND_GRADED[1]}_extra_credit")).to_have_attribute(
        "placeholder", "0", timeout=UI_MS)      # formgrader has loaded the grades: now type
    page.wait_for_load_state("networkidle")
    score.fill("0.25")
    score.press("Tab")
    page.screenshot(path=str(ARTIFACTS / "hub-formgrader-hand-grade.png"))
    deadline = time.monotonic() + 30           # formgrader's PUT reaches the host's gradebook
    while True:
        with Gradebook(f"sqlite:///{hub.grading / 'gradebook.db'}") as gb:
            saved = gb.find_grade(HAND_GRADED[1], HAND_GRADED[0], "coursework", STUDENTS[0]).manual_score
        if saved is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert saved == 0.25, saved
    # Students are not admins: their server is the student image, which has no grader.
    student_page = classroom["pages"][STUDENTS[1]]
    response = student_page.goto(f"{hub.url}/user/{INSTRUCTOR}/formgrader", timeout=UI_MS)
    assert f"/user/{INSTRUCTOR}/formgrader" not in student_page.url or response.status in (403, 404)


def test_idle_culling_stops_an_untouched_server(hub, classroom):
    for ctx in classroom["contexts"].values():
        ctx.close()   # no browser keeps a server busy
    hub.compose("up", "-d", "hub", env={"COURSE_IDLE_TIMEOUT": "20", "COURSE_CULL_EVERY": "5",
                                        "COURSE_ACTIVITY_INTERVAL": "5"})
    _wait_for_hub(hub.url, hub.engine)
    student = STUDENTS[2]
    if hub.server(student) is None:
        status, body = hub.api("POST", f"/users/{student}/server", {"profile": "cpu"})
        assert status in (201, 202), (status, body)
    ready = hub.wait_server(student, running=True, timeout=300)
    stopped = hub.wait_server(student, running=False, timeout=180)
    hub.timeline["culled_after_seconds"] = round(stopped - ready, 1)
    hub.wait_container_gone(f"course-{student}")
    assert hub.engine.docker("volume", "inspect", f"course-{student}", check=False).returncode == 0, \
        "culling removed the student's volume"
