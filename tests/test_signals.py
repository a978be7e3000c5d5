"""SIGTERM (what `docker stop` sends) stops training like Ctrl-C: the step in flight finishes, a checkpoint
is saved, the command exits 143, and --resume continues to the same losses as an uninterrupted run."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffusion_lib.checkpoint import load_checkpoint
from diffusion_lib.cli import main

from test_training import TINY

ROOT = Path(__file__).resolve().parent.parent
STEPS = 30
SETTINGS = TINY + [f"training.max_steps={STEPS}", "training.log_every=1", "training.checkpoint_every=1000"]

# The child trains through the real CLI; each step sleeps first so that the signal lands mid-step and the run
# cannot finish before the test sends it. Sleeping changes no random state: losses stay those of a plain run.
CHILD = """
import sys, time
from diffusion_lib import training
from diffusion_lib.cli import main

real_step = training.Trainer.train_step
def slow_step(self, x0, y):
    time.sleep(0.1)
    return real_step(self, x0, y)
training.Trainer.train_step = slow_step
sys.exit(main(sys.argv[1:]))
"""


def _train_args(output: Path, *extra: str) -> list[str]:
    args = ["train", "--config", str(ROOT / "configs" / "digits_cfg.yaml"), "--output", str(output), "--no-progress"]
    for item in SETTINGS:
        args += ["--set", item]
    return args + list(extra)


def _losses(run: Path) -> dict[int, str]:
    with (run / "log.csv").open(newline="") as handle:
        return {int(row["step"]): row["loss"] for row in csv.DictReader(handle)}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_saves_and_resume_gives_the_same_losses(tmp_path):
    assert main(_train_args(tmp_path / "straight")) == 0
    run = tmp_path / "stopped"
    # the child computes with this process's thread count: other counts change float32 sums in the last digit
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *_train_args(run)], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if (run / "log.csv").exists() and max(_losses(run), default=0) >= 3:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 128 + signal.SIGTERM, err
    assert "interrupted: training interrupted by SIGTERM at step" in err and "Traceback" not in err
    stopped_at = load_checkpoint(run / "checkpoints" / "last.ckpt")["step"]
    assert 3 <= stopped_at < STEPS
    assert f"at step {stopped_at};" in err
    assert main(_train_args(run, "--resume")) == 0
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["step"] == STEPS
    assert _losses(run) == _losses(tmp_path / "straight")  # every step, before and after the stop
