"""TensorBoard inside JupyterLab, checked in a real browser (headless Debian Chromium).

A tiny real training run (8 Trainer steps, loss logged every 2) writes its TensorBoard events into a
temporary runs folder. JupyterLab is started through docker/start-lab.sh, the image's CMD (helpers shared
with tests/test_jupyterlab_browser.py), with TENSORBOARD_LOGDIR pointing at that folder, so the
jupyter-server-proxy entry of docker/jupyter_server_config.py serves exactly what the image serves.

Checked: without the token (or with a wrong one) ``<lab>/tensorboard/`` and its data API are refused
(redirect to the login page) and TensorBoard is not even started; the proxy lists TensorBoard for the
Launcher; with the token, ``<lab>/tensorboard/#scalars`` shows the Scalars dashboard with a
``train/loss`` card whose line chart is drawn from the run's data (one point per logged loss, as in
log.csv). The screenshot (filtered to the loss) is saved to outputs/test-artifacts/tensorboard.png.
At the end the server and the TensorBoard it started are gone. Needs Chromium and playwright
(.ci/system-deps.sh): when missing, the test fails in CI (CI=true) and is skipped elsewhere.
"""

import json
import re
import secrets
import subprocess
from pathlib import Path

import psutil
import pytest

from diffusion_lib.data import load_dataset
from diffusion_lib.experiments.runs import load_run
from diffusion_lib.training import Trainer
from test_jupyterlab_browser import (ARTIFACTS, CHROMIUM_ARGS, REPO, START_SCRIPT, _chromium, _free_port, _get,
                                     _missing, _server_env, _stop, _wait_until_up)
from test_tracking import tiny_config

TIMEOUT_MS = 60_000  # TensorBoard starts on the first request (the proxy's own timeout is 60 s)


def _tensorboards(server: subprocess.Popen) -> list[psutil.Process]:
    """The `tensorboard` processes the server has started, followed by their own children (the data server)."""
    started = [p for p in psutil.Process(server.pid).children(recursive=True)
               if any(Path(part).name == "tensorboard" for part in p.cmdline()[:2])]
    return started + [child for p in started for child in p.children(recursive=True)]


def _running(process: psutil.Process) -> bool:
    """Still running: not gone and not a zombie (an orphan whose parent does not reap it has ended too)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_tensorboard_in_jupyterlab_shows_the_loss_plot(tmp_path):
    chromium = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("the playwright Python package")

    logdir = tmp_path / "runs"
    Trainer(tiny_config("training.max_steps=8"), logdir / "tiny", dataset=load_dataset("digits", image_size=8),
            progress=False).train()
    logged_losses = len(load_run(logdir / "tiny").log)
    assert logged_losses == 4

    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    env = _server_env(tmp_path, port, token)
    env["TENSORBOARD_LOGDIR"] = str(logdir)
    log_path = tmp_path / "jupyterlab.log"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "tensorboard.png"
    shot.unlink(missing_ok=True)

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", str(START_SCRIPT)], cwd=REPO, env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    tensorboards = []
    try:
        _wait_until_up(proc, base, log_path)

        # Without the token, or with a wrong one: refused (login redirect), and nothing is started.
        for path in ("/tensorboard/", "/tensorboard/data/runs"):
            for wrong in (None, "wrong-" + token):
                status, headers, _ = _get(base + path, token=wrong)
                assert status == 302 and headers["Location"].startswith("/login"), (path, status, dict(headers))
        assert _tensorboards(proc) == []

        # The Launcher's tile: the proxy lists TensorBoard with a launcher entry.
        status, _, body = _get(f"{base}/server-proxy/servers-info", token=token)
        servers = {s["name"]: s for s in json.loads(body)["server_processes"]}
        assert status == 200 and servers["tensorboard"]["launcher_entry"]["title"] == "TensorBoard"

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            try:
                page.goto(f"{base}/tensorboard/?token={token}#scalars", timeout=TIMEOUT_MS)
                expect(page.get_by_text("TensorBoard", exact=True).first).to_be_visible(timeout=TIMEOUT_MS)
                page.locator("tf-tag-filterer input").fill("train/loss")
                card = page.locator("tf-scalar-card").filter(
                    has=page.locator(".heading-label.name", has_text=re.compile(r"^\s*train/loss\s*$"))).first
                expect(card).to_be_visible(timeout=TIMEOUT_MS)
                line = card.locator("vz-line-chart2 path.line[d*='L']").first  # a drawn line: 2 or more points
                expect(line).to_be_visible(timeout=TIMEOUT_MS)
                points = line.get_attribute("d").count("L") + 1
                assert points == logged_losses, line.get_attribute("d")
                page.wait_for_timeout(500)  # let the chart's transition finish before the picture
                page.screenshot(path=str(shot))
            finally:
                if not shot.exists():
                    page.screenshot(path=str(shot))
                browser.close()
        tensorboards = _tensorboards(proc)
        assert tensorboards, "the proxy did not start tensorboard"
        assert str(logdir) in tensorboards[0].cmdline(), tensorboards[0].cmdline()  # TENSORBOARD_LOGDIR is used
    finally:
        _stop(proc)  # SIGTERM to the server's process group, which holds the tensorboard it started
        _, alive = psutil.wait_procs(tensorboards, timeout=10)
        alive = [p for p in alive if _running(p)]
        for p in alive:
            p.kill()
    assert not alive, f"tensorboard outlived the server: {alive}"
    assert shot.stat().st_size > 10_000
