"""JupyterLab as the image runs it, checked in a real browser (headless Debian Chromium).

The server is started through docker/start-lab.sh, the image's CMD, so it gets the same
flags and the same docker/jupyter_server_config.py; only the address (127.0.0.1), a free
port and a random token differ. The project kernel is registered the way the Dockerfile
does it (same name and display name, read from the Dockerfile), into a temporary Jupyter
path, pointing at this interpreter.

Checked: requests without the token are refused; with the token the Lab UI renders and
lands in notebooks/; every numbered notebook is listed; a notebook opens on the project
kernel, which imports diffusion_lib and runs this interpreter; an executed notebook (notebook 01
run in the smoke profile by the runner, copied to outputs/test-artifacts/executed/) shows every
figure as a rendered <img>, one per image/png output, and none as "<Figure size ...>" text;
nothing in notebooks/ is written. Screenshots are saved to
outputs/test-artifacts/jupyterlab.png and jupyterlab-executed.png. Needs Chromium and playwright (.ci/system-deps.sh):
when missing, the test fails in CI (CI=true) and is skipped elsewhere.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
START_SCRIPT = REPO / "docker" / "start-lab.sh"
ARTIFACTS = REPO / "outputs" / "test-artifacts"
EXECUTED = ARTIFACTS / "executed"
EXECUTED_NOTEBOOK = "01_data_acquisition_and_analysis.ipynb"  # the quickest notebook that draws figures
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 40_000
PROBE_CODE = (
    "import os, sys, diffusion_lib; "
    "print('probe-ok', os.path.realpath(sys.executable))"
)


def _missing(what):
    """Fail in CI, skip elsewhere: a check tool that is absent must not pass silently in CI."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing; .ci/system-deps.sh installs it")
    pytest.skip(f"{what} is missing (run .ci/system-deps.sh)")


def _chromium():
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        _missing("Debian's chromium (apt-get install chromium)")
    return path


def _kernel_from_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r'ipykernel install .*--name (\S+) --display-name "([^"]+)"', text)
    assert match, "Dockerfile must register the project kernel with ipykernel install"
    return match.group(1), match.group(2)


def _numbered_notebooks():
    return sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url, token=None):
    """GET without following redirects; returns (status, headers, body)."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _server_env(tmp_path, port, token):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
    # The image installs docker/overrides.json as JupyterLab's defaults; here the same
    # settings go into a temporary user-settings dir, plus no autosave: the test must not
    # write into notebooks/ (checked at the end).
    plugins = json.loads((REPO / "docker" / "overrides.json").read_text())
    plugins.setdefault("@jupyterlab/docmanager-extension:plugin", {})["autosave"] = False
    # Render every cell, not only those scrolled into view, so all output images can be counted.
    plugins.setdefault("@jupyterlab/notebook-extension:tracker", {})["windowingMode"] = "none"
    settings = tmp_path / "lab-user-settings"
    for plugin_id, values in plugins.items():
        package, plugin = plugin_id.split(":")
        (settings / package).mkdir(parents=True, exist_ok=True)
        (settings / package / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
        JUPYTER_PATH=str(tmp_path / "kernel-prefix" / "share" / "jupyter"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        JUPYTER_IP="127.0.0.1",
        JUPYTER_PORT=str(port),
        JUPYTER_TOKEN=token,
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
    )
    return env


def _register_kernel(env, tmp_path, name, display_name):
    """The Dockerfile's command, into a temporary prefix on JUPYTER_PATH (searched first)."""
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(tmp_path / "kernel-prefix"),
         "--name", name, "--display-name", display_name],
        env=env, check=True, capture_output=True, timeout=60,
    )


def _wait_until_up(proc, base, log_path, deadline_s=40):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if _get(f"{base}/api")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer within {deadline_s} s:\n{log_path.read_text()}")


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _executed_copy(smoke_run):
    """Notebook 01 executed in the smoke profile, copied under the server root; (relative path, image/png count)."""
    result, _ = smoke_run(REPO / "notebooks" / EXECUTED_NOTEBOOK)
    assert result.status == "ok", f"{EXECUTED_NOTEBOOK} failed: {result.error}"
    executed = nbformat.read(result.output, as_version=4)
    images = sum("image/png" in o.get("data", {}) for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    nbformat.write(executed, EXECUTED / EXECUTED_NOTEBOOK)
    return (EXECUTED / EXECUTED_NOTEBOOK).relative_to(REPO).as_posix(), images


def test_jupyterlab_in_headless_chromium(tmp_path, smoke_run):
    chromium = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("the playwright Python package")
    notebooks = _numbered_notebooks()
    assert notebooks, "no numbered notebooks (NN_name.ipynb) in notebooks/"
    executed_path, executed_images = _executed_copy(smoke_run)
    assert executed_images > 0, f"the executed {EXECUTED_NOTEBOOK} has no image/png output"
    mtimes = {n: (REPO / "notebooks" / n).stat().st_mtime_ns for n in notebooks}
    kernel_name, kernel_display = _kernel_from_dockerfile()

    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = _server_env(tmp_path, port, token)
    _register_kernel(env, tmp_path, kernel_name, kernel_display)
    log_path = tmp_path / "jupyterlab.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "jupyterlab.png"

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(START_SCRIPT)], cwd=REPO, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_until_up(proc, base, log_path)

        # Without the token: the UI redirects to the login page, the API refuses.
        status, headers, _ = _get(f"{base}/lab")
        assert status == 302 and "/login" in headers["Location"], (status, dict(headers))
        assert _get(f"{base}/api/contents/notebooks")[0] == 403
        assert _get(f"{base}/api/kernelspecs", token="wrong-" + token)[0] == 403

        # With the token: only the project kernel, running this interpreter.
        status, _, body = _get(f"{base}/api/kernelspecs", token=token)
        specs = json.loads(body)
        assert status == 200 and specs["default"] == kernel_name
        assert set(specs["kernelspecs"]) == {kernel_name}
        spec = specs["kernelspecs"][kernel_name]["spec"]
        assert spec["display_name"] == kernel_display
        assert Path(spec["argv"][0]).resolve() == Path(sys.executable).resolve()

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            try:
                page.goto(f"{base}/?token={token}", timeout=UI_TIMEOUT_MS)
                expect(page.locator(".jp-LabShell")).to_be_visible(timeout=UI_TIMEOUT_MS)
                assert "/lab/tree/notebooks" in page.url, page.url
                listing = page.locator(".jp-DirListing-content")
                for name in notebooks:
                    item = listing.locator(".jp-DirListing-itemText", has_text=name)
                    expect(item).to_be_visible(timeout=UI_TIMEOUT_MS)
                expect(page.locator(".jp-BreadCrumbs")).to_contain_text("notebooks")

                first = notebooks[0]
                listing.locator(".jp-DirListing-itemText", has_text=first).dblclick()
                panel = page.locator(".jp-NotebookPanel:visible")
                expect(panel).to_be_visible(timeout=UI_TIMEOUT_MS)
                expect(panel.locator(".jp-Notebook .jp-Cell").first).to_be_visible(
                    timeout=UI_TIMEOUT_MS
                )
                expect(panel.locator(".jp-Toolbar-kernelName")).to_have_text(
                    kernel_display, timeout=UI_TIMEOUT_MS
                )
                expect(panel.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute(
                    "data-status", "idle", timeout=UI_TIMEOUT_MS
                )
                # Run code on that kernel in a new cell (in memory only; autosave is off).
                panel.locator(".jp-Cell").first.locator(".jp-InputPrompt").click()
                page.keyboard.press("Escape")
                page.keyboard.press("b")
                page.keyboard.press("Enter")
                page.keyboard.type(PROBE_CODE)
                page.keyboard.press("Shift+Enter")
                output = panel.locator(".jp-OutputArea-output").filter(has_text="probe-ok")
                expect(output).to_contain_text(
                    f"probe-ok {Path(sys.executable).resolve()}", timeout=UI_TIMEOUT_MS
                )
                page.screenshot(path=str(shot))

                # An executed notebook: every figure is a rendered <img>, none is "<Figure size ...>" text.
                page.goto(f"{base}/lab/tree/{executed_path}", timeout=UI_TIMEOUT_MS)
                panel = page.locator(".jp-NotebookPanel:visible")
                expect(panel.locator(".jp-Notebook .jp-Cell").first).to_be_visible(timeout=UI_TIMEOUT_MS)
                images = panel.locator(".jp-OutputArea-output img")
                expect(images.first).to_be_visible(timeout=UI_TIMEOUT_MS)
                expect(images).to_have_count(executed_images, timeout=UI_TIMEOUT_MS)
                assert images.first.evaluate("img => img.naturalWidth") > 0  # decoded, not a broken image
                text_figures = panel.locator(".jp-OutputArea-output", has_text="<Figure size")
                assert text_figures.count() == 0, "a figure is shown as text in JupyterLab"
                page.screenshot(path=str(ARTIFACTS / "jupyterlab-executed.png"))
            finally:
                if not shot.exists():
                    page.screenshot(path=str(shot))
                browser.close()

        status, _, body = _get(f"{base}/api/sessions", token=token)
        sessions = {s["path"]: s["kernel"] for s in json.loads(body)}
        assert status == 200 and f"notebooks/{first}" in sessions, sessions
        assert sessions[f"notebooks/{first}"]["name"] == kernel_name
    finally:
        _stop(proc)

    assert shot.stat().st_size > 10_000
    after = {n: (REPO / "notebooks" / n).stat().st_mtime_ns for n in notebooks}
    assert after == mtimes, "the browser session modified files in notebooks/"
