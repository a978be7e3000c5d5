"""Training under torchrun (DistributedDataParallel, gloo on the CPU): 2 processes with per-rank batch B/2 follow
the loss curve of 1 process with batch B, only rank 0 writes files, and 1 process resumes the 2-process checkpoint.

The diffusion objective draws its noise from a per-process generator, so 2 processes cannot draw the same eps and t
as 1 process. To compare the data-parallel machinery itself (sharding of the global batch, gradient averaging, the
logged mean over ranks, the optimizer, EMA and resume), the runs here use an objective whose t and eps are a fixed
function of each image, and no dropout. What remains is float32 summation order (the all-reduce adds two half-batch
gradients; one process sums the whole batch). Measured here: logged losses equal to all 6 digits of log.csv; weights
(model and EMA) after 10 AdamW steps differ by at most 5.3e-7 (absolute; weights are ~1e-1). Allowed: losses rtol 1e-4,
weights rtol 1e-4 + atol 1e-5.
"""

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffusion_lib import distributed, training
from diffusion_lib.checkpoint import load_checkpoint
from diffusion_lib.cli import main
from diffusion_lib.diffusion import q_sample
from diffusion_lib.objectives import DiffusionObjective

from test_training import TINY, tiny_config

ROOT = Path(__file__).resolve().parent.parent
BATCH, STEPS, DDP_STEPS = 16, 10, 6
# lr_schedule constant: the runs below end at 6 and 10 steps, and a cosine decay would depend on where they end
SETTINGS = TINY + [f"training.batch_size={BATCH}", "training.log_every=1", "training.checkpoint_every=1000",
                   "model.dropout=0.0", "training.loggers=[csv]", "training.lr_schedule=constant"]


class FixedNoiseObjective(DiffusionObjective):
    """L_simple with t and eps a fixed function of each image (no generator): the same per image on any rank."""

    def loss(self, model, x0, y, generator):
        t = (x0.flatten(1).sum(1).abs() * 13).long() % self.schedule.num_train_timesteps
        noise = x0.flip(-1).roll(1, -2)
        loss = F.mse_loss(model(q_sample(self.schedule, x0, t, noise), t, y), noise)
        return loss, {"loss": loss.detach()}


def fixed_objective(config, device):
    return FixedNoiseObjective(config, device)


# Each torchrun worker: the fixed objective, and on ranks > 0 a record of every file opened for writing,
# created or replaced (the test expects none).
WORKER = """
import builtins, os, sys
sys.path.insert(0, {tests!r})
from diffusion_lib import training
from diffusion_lib.cli import main
from test_ddp import fixed_objective
training.build_objective = fixed_objective
if os.environ["RANK"] != "0":
    writes = open({record!r} + os.environ["RANK"], "w")
    real_open, real_replace, real_mkdir = builtins.open, os.replace, os.mkdir
    def spy_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            writes.write(f"open {{file}}\\n"); writes.flush()
        return real_open(file, mode, *args, **kwargs)
    def spy_replace(src, dst, *args, **kwargs):
        writes.write(f"replace {{dst}}\\n"); writes.flush()
        return real_replace(src, dst, *args, **kwargs)
    def spy_mkdir(path, *args, **kwargs):
        writes.write(f"mkdir {{path}}\\n"); writes.flush()
        return real_mkdir(path, *args, **kwargs)
    builtins.open, os.replace, os.mkdir = spy_open, spy_replace, spy_mkdir
sys.exit(main(sys.argv[1:]))
"""


def _train_args(output: Path, steps: int, *extra: str) -> list[str]:
    args = ["train", "--config", str(ROOT / "configs" / "digits_cfg.yaml"), "--output", str(output), "--no-progress"]
    for item in SETTINGS + [f"training.max_steps={steps}"]:
        args += ["--set", item]
    return args + list(extra)


def _losses(run: Path) -> dict[int, float]:
    with (run / "log.csv").open(newline="") as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_follow_one_process_and_one_process_resumes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(training, "build_objective", fixed_objective)
    assert main(_train_args(tmp_path / "one", STEPS)) == 0
    one = _losses(tmp_path / "one")

    worker, record = tmp_path / "worker.py", tmp_path / "writes_rank"
    worker.write_text(WORKER.format(tests=str(ROOT / "tests"), record=str(record)))
    run = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(worker), *_train_args(run, DDP_STEPS)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("checkpoint: ") == 1 and "x 2 processes" in done.stdout  # rank 0 alone speaks
    assert (record.parent / "writes_rank1").read_text() == ""  # rank 1 opened nothing for writing
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "log.csv", "run.json", "samples"]

    two = _losses(run)
    assert list(two) == list(range(1, DDP_STEPS + 1))
    torch.testing.assert_close(torch.tensor([two[s] for s in two]), torch.tensor([one[s] for s in two]),
                               rtol=1e-4, atol=0)
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert state["step"] == DDP_STEPS and state["rng"]["world_size"] == 2
    ranks = state["rng"]["per_rank"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["generator"], ranks[1]["generator"])  # own noise streams

    # one process continues the 2-process checkpoint: same step, same data position, same curve
    assert main(_train_args(run, STEPS, "--resume")) == 0
    resumed = _losses(run)
    assert list(resumed) == list(range(1, STEPS + 1))
    torch.testing.assert_close(torch.tensor(list(resumed.values())), torch.tensor(list(one.values())),
                               rtol=1e-4, atol=0)
    final, reference = load_checkpoint(run / "checkpoints" / "last.ckpt"), load_checkpoint(tmp_path / "one" / "checkpoints"
                                                                                             / "last.ckpt")
    assert final["step"] == STEPS and final["rng"]["world_size"] == 1
    for key in ("model", "ema"):  # the weights after 6 steps on 2 processes + 4 on 1 equal 10 steps on 1
        for name, value in final[key].items():
            torch.testing.assert_close(value, reference[key][name], rtol=1e-4, atol=1e-5, msg=f"{key}.{name}")


def test_global_batch_must_divide_among_processes(tmp_path, monkeypatch):
    two_ranks = distributed.Context(rank=0, world_size=2)
    monkeypatch.setattr(distributed, "init_from_env", lambda device: (two_ranks, device))
    with pytest.raises(ValueError, match=r"training.batch_size=15 is the global batch .* divisible by the 2 processes"):
        training.Trainer(tiny_config("training.batch_size=15"), tmp_path, progress=False)
    assert not tmp_path.joinpath("config.yaml").exists()


def test_without_torchrun_the_trainer_is_a_single_process(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    trainer = training.Trainer(tiny_config("training.max_steps=1"), tmp_path, progress=False)
    assert trainer.dist == distributed.SINGLE and trainer.is_main_process and trainer.train_model is trainer.model
